// Package inslysim simulates the Insly Ledger "Identifier" service, the
// login front of Insly's API, which runs on AWS Cognito.
//
// It serves, under PathPrefix, the three identifier operations:
//
//	POST /login/{tenant_tag}           {"username","password","meta_data"?}
//	POST /token/client/{tenant_tag}    {"client_id","client_secret","scope"}
//	POST /token/refresh/{tenant_tag}   {"refresh_token","username"}
//
// and one protected endpoint, GET PoliciesPath, which needs
// "Authorization: Bearer <access token>", "X-TENANT-ID: <tenant_tag>" and
// "Content-Type: application/json" (charset UTF-8 allowed), the headers the
// docs say every call carries.
//
// The simulator is strict on purpose, so that a client which passes against it
// also passes against the real service: the request Content-Type must be
// application/json, field names must match exactly (encoding/json would accept
// "Username"; this simulator does not), unknown fields are refused, and every
// refusal is an HTTP error with the service's body
// {"errors":[{"code","message","params"}]}. Access tokens are Cognito-like
// HS256 JWTs whose "username" claim is the Cognito username (a UUID), never the
// e-mail the user logs in with, and a refresh must name that Cognito username:
// a client that sends the e-mail is refused as Cognito refuses it. A refresh
// answers no new refresh token unless Options.RotateRefreshTokens is set, again
// as Cognito does.
//
// The simulator is silent (no logging) and safe for concurrent use.
package inslysim

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Paths served by the simulator, relative to the server root. A client's
// base URL is the server URL followed by PathPrefix.
const (
	// PathPrefix is where the identifier API is mounted.
	PathPrefix = "/api/v1/identifier"
	// PoliciesPath is the protected endpoint that accepts only a valid access
	// token together with the matching X-TENANT-ID header.
	PoliciesPath = "/api/v1/ledger/policies"
)

// Defaults applied by New to zero Options fields.
const (
	// DefaultTenant is the tenant tag served when Options.Tenant is empty.
	DefaultTenant = "demo"
	// DefaultAccessTTL is Cognito's default access token lifetime.
	DefaultAccessTTL = time.Hour
	// DefaultRefreshTTL is Cognito's default refresh token lifetime.
	DefaultRefreshTTL = 30 * 24 * time.Hour
)

// TenantClaim is the access token claim that names the tenant the token was
// issued for. The protected endpoint compares it with X-TENANT-ID.
const TenantClaim = "tenant_tag"

// User is an account in the tenant's user pool.
type User struct {
	// Email is the login name sent as "username" to the login endpoint,
	// matched case-insensitively as a Cognito pool with e-mail sign-in does.
	Email string
	// Username is the Cognito username, which access tokens carry in their
	// "username" claim and which a refresh must send. It must differ from
	// Email; when empty, New generates a random UUID.
	Username string
	// Password is the user's password.
	Password string
	// Challenge, when set (e.g. "NEW_PASSWORD_REQUIRED", "SOFTWARE_TOKEN_MFA"),
	// makes a correct login answer that challenge instead of tokens.
	Challenge string
	// Unconfirmed makes a correct login fail with IDS10028 UserNotConfirmed.
	Unconfirmed bool
	// ResetRequired makes a correct login fail with IDS10018
	// PasswordResetRequired.
	ResetRequired bool
}

// Client is an application client for the client-credentials login.
type Client struct {
	// ID is the client_id.
	ID string
	// Secret is the client_secret.
	Secret string
	// Scopes the client may ask for; empty means only "auth/{tenant}".
	Scopes []string
}

// Options configures a Server. Zero values give the documented defaults.
type Options struct {
	// Tenant is the one tenant tag served; any other gets HTTP 400.
	// Default DefaultTenant.
	Tenant string
	// Users of the tenant's user pool.
	Users []User
	// Clients allowed to use the client-credentials login.
	Clients []Client
	// AccessTTL is the access token lifetime, answered as expires_in.
	// Default DefaultAccessTTL.
	AccessTTL time.Duration
	// RefreshTTL is the refresh token lifetime. Default DefaultRefreshTTL.
	RefreshTTL time.Duration
	// FlatClientAnswer makes the client-credentials login answer
	// {"access_token","expires_in","token_type"} instead of nesting them in
	// "authentication_result".
	FlatClientAnswer bool
	// RotateRefreshTokens makes a refresh answer a new refresh token and
	// invalidate the one used. By default, as in Cognito, a refresh answers
	// no refresh token and the old one stays valid until it expires.
	RotateRefreshTokens bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the simulated identifier service. It implements http.Handler.
type Server struct {
	tenant     string
	accessTTL  time.Duration
	refreshTTL time.Duration
	flat       bool
	rotate     bool
	now        func() time.Time
	key        []byte // HS256 signing key, random per Server
	appClient  string // the identifier's own Cognito app client id (client_id claim of user tokens)
	issuer     string
	mux        *http.ServeMux

	mu        sync.Mutex
	users     map[string]*user // by lower-cased e-mail
	clients   map[string]Client
	refresh   map[string]*refreshRecord
	revoked   map[string]bool // access tokens revoked by Revoke
	fault     Fault
	faultLeft int           // requests the fault still affects, when fault.Times > 0
	release   chan struct{} // closed by SetFault to release requests held by a Hang fault

	logins, clientLogins, refreshes          atomic.Int64
	loginAttempts, clientAttempts, refreshAt atomic.Int64
	policyCalls                              atomic.Int64
}

type user struct {
	User
	sub string
}

type refreshRecord struct {
	user     *user
	authTime time.Time
	expires  time.Time
	revoked  bool
}

// New returns a Server for o. It panics when o is inconsistent (an empty or
// duplicate e-mail, a Username equal to its e-mail, a duplicate username or
// client ID), since that is a mistake in the test that builds it.
func New(o Options) *Server {
	s := &Server{
		tenant:     o.Tenant,
		accessTTL:  o.AccessTTL,
		refreshTTL: o.RefreshTTL,
		flat:       o.FlatClientAnswer,
		rotate:     o.RotateRefreshTokens,
		now:        o.Now,
		key:        randomBytes(32),
		appClient:  strings.ToLower(rand.Text()),
		issuer:     "https://cognito-idp.eu-central-1.amazonaws.com/eu-central-1_" + rand.Text()[:9],
		users:      make(map[string]*user),
		clients:    make(map[string]Client),
		refresh:    make(map[string]*refreshRecord),
		revoked:    make(map[string]bool),
		release:    make(chan struct{}),
	}
	if s.tenant == "" {
		s.tenant = DefaultTenant
	}
	if s.accessTTL <= 0 {
		s.accessTTL = DefaultAccessTTL
	}
	if s.refreshTTL <= 0 {
		s.refreshTTL = DefaultRefreshTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	usernames := make(map[string]bool)
	for i, u := range o.Users {
		if u.Email == "" {
			panic(fmt.Sprintf("inslysim: Users[%d].Email is empty", i))
		}
		key := strings.ToLower(u.Email)
		if s.users[key] != nil {
			panic(fmt.Sprintf("inslysim: Users[%d].Email %q is a duplicate", i, u.Email))
		}
		if u.Username == "" {
			u.Username = newUUID()
		}
		if strings.EqualFold(u.Username, u.Email) {
			panic(fmt.Sprintf("inslysim: Users[%d].Username must differ from its Email", i))
		}
		if usernames[u.Username] {
			panic(fmt.Sprintf("inslysim: Users[%d].Username %q is a duplicate", i, u.Username))
		}
		usernames[u.Username] = true
		s.users[key] = &user{User: u, sub: newUUID()}
	}
	for i, c := range o.Clients {
		if c.ID == "" {
			panic(fmt.Sprintf("inslysim: Clients[%d].ID is empty", i))
		}
		if _, dup := s.clients[c.ID]; dup {
			panic(fmt.Sprintf("inslysim: Clients[%d].ID %q is a duplicate", i, c.ID))
		}
		if len(c.Scopes) == 0 {
			c.Scopes = []string{"auth/" + s.tenant}
		} else {
			c.Scopes = append([]string(nil), c.Scopes...)
		}
		s.clients[c.ID] = c
	}

	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST "+PathPrefix+"/login/{tenant}", s.identifier(EndpointLogin, &s.loginAttempts, s.handleLogin))
	s.mux.HandleFunc("POST "+PathPrefix+"/token/client/{tenant}", s.identifier(EndpointClient, &s.clientAttempts, s.handleClient))
	s.mux.HandleFunc("POST "+PathPrefix+"/token/refresh/{tenant}", s.identifier(EndpointRefresh, &s.refreshAt, s.handleRefresh))
	s.mux.HandleFunc("GET "+PoliciesPath, s.handlePolicies)
	return s
}

// ServeHTTP serves the identifier API and the protected endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// Tenant returns the tenant tag the server serves.
func (s *Server) Tenant() string { return s.tenant }

// Username returns the Cognito username of the user who logs in with email,
// which is useful when New generated it.
func (s *Server) Username(email string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[strings.ToLower(email)]
	if u == nil {
		return "", false
	}
	return u.Username, true
}

// SetPassword changes the password of the user who logs in with email, as an
// administrator would. Refresh tokens already issued stay valid, as in
// Cognito. It fails when there is no such user.
func (s *Server) SetPassword(email, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[strings.ToLower(email)]
	if u == nil {
		return fmt.Errorf("inslysim: no user %q", email)
	}
	u.Password = password
	return nil
}

// RevokeRefreshTokens invalidates every refresh token issued so far, as a
// global sign-out does: a refresh with one of them answers IDS10017
// "Refresh Token has been revoked". Tokens issued afterwards are valid.
// Access tokens already issued stay valid until they expire.
func (s *Server) RevokeRefreshTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.refresh {
		rec.revoked = true
	}
}

// Revoke revokes one access token, as Cognito's GlobalSignOut or an
// administrator does before the token expires: the protected endpoint
// refuses it with 401 IDS10017 "Access Token has been revoked". Refresh
// tokens stay valid (RevokeRefreshTokens revokes those).
func (s *Server) Revoke(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked[accessToken] = true
}

// PolicyCalls returns the number of requests to the protected endpoint,
// refused ones included.
func (s *Server) PolicyCalls() int64 { return s.policyCalls.Load() }

// Logins returns the number of successful password logins (a login answered
// with a challenge is not one).
func (s *Server) Logins() int64 { return s.logins.Load() }

// LoginAttempts returns the number of requests to the login endpoint,
// whatever their outcome, faulted ones included.
func (s *Server) LoginAttempts() int64 { return s.loginAttempts.Load() }

// ClientLogins returns the number of successful client-credentials logins.
func (s *Server) ClientLogins() int64 { return s.clientLogins.Load() }

// ClientLoginAttempts returns the number of requests to the client-credentials
// endpoint, whatever their outcome, faulted ones included.
func (s *Server) ClientLoginAttempts() int64 { return s.clientAttempts.Load() }

// Refreshes returns the number of successful refreshes.
func (s *Server) Refreshes() int64 { return s.refreshes.Load() }

// RefreshAttempts returns the number of requests to the refresh endpoint,
// whatever their outcome, faulted ones included.
func (s *Server) RefreshAttempts() int64 { return s.refreshAt.Load() }

// equalSecret compares secrets in constant time.
func equalSecret(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return b
}

// newUUID returns a random (version 4) UUID, the shape of Cognito usernames
// and subs.
func newUUID() string {
	b := randomBytes(16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
