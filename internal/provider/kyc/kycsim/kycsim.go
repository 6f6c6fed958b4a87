// Package kycsim simulates the kyc upstream: a KYC API whose login is
// fastapi-users with the JWT strategy and the bearer transport, configured to
// require verified users.
//
// The simulator answers exactly as that stack does, status codes and bodies
// included, so that a client tested against it behaves the same against the
// real service:
//
//   - POST /auth/jwt/login reads FastAPI's OAuth2PasswordRequestForm from an
//     application/x-www-form-urlencoded body. Any other content type, JSON
//     included, is read as an empty form (multipart/form-data too, which
//     FastAPI would accept: the kyc contract is a urlencoded form), so it
//     fails FastAPI's validation with 422 and one "missing" error per
//     required field. As in FastAPI an empty form value counts as absent,
//     and grant_type, when present, must be exactly "password".
//   - A login returns {"access_token": <jwt>, "token_type": "bearer"} and no
//     lifetime: the expiry is only in the JWT's exp claim. The JWT is HS256
//     with the payload {"sub": <user id>, "aud": ["fastapi-users:auth"],
//     "exp"}, as fastapi-users' JWTStrategy writes it; sub is the user's
//     UUID, not the e-mail address.
//   - POST /auth/jwt/logout answers 204 but revokes nothing: a JWT stays
//     valid until its exp, as with the real JWT strategy.
//   - GET /api/v1/resource is the protected endpoint. It accepts only
//     "Authorization: Bearer <jwt>" with a token this server signed, for the
//     right audience, not expired by the simulator's clock, naming an active
//     user; anything else is 401 {"detail": "Unauthorized"}. (A token naming
//     an unverified user, which only a forger holding the secret can make,
//     is 403 {"detail": "Forbidden"}, as fastapi-users answers.)
//
// Tests drive the clock through Options.Now, change passwords and token
// lifetimes at run time, inject faults on the login endpoint, and read
// counters. A Server is safe for concurrent use and never logs.
package kycsim

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Paths the simulator serves, relative to the server root.
const (
	LoginPath    = "/auth/jwt/login"
	LogoutPath   = "/auth/jwt/logout"
	ResourcePath = "/api/v1/resource"
)

// DefaultLifetime is the token lifetime used when Options.Lifetime is zero.
// It matches the lifetime_seconds=3600 that fastapi-users' examples use.
const DefaultLifetime = time.Hour

// maxBodyBytes bounds a login body. The real service has no such limit, but
// no legitimate login comes near it.
const maxBodyBytes = 1 << 20

// User is an account the simulator knows.
type User struct {
	// Email is the login name. Logins match it case-insensitively, as the
	// fastapi-users SQLAlchemy adapter does (lower(email) = lower(?)).
	Email string
	// Password is compared exactly.
	Password string
	// Unverified makes a correct login answer 400 LOGIN_USER_NOT_VERIFIED.
	Unverified bool
	// Inactive makes a correct login answer 400 LOGIN_BAD_CREDENTIALS,
	// which fastapi-users deliberately does not tell apart from a wrong
	// password, and makes the protected endpoint refuse the user's tokens.
	Inactive bool
}

// Options configures a Server. The zero value is usable: a server with no
// users, a random secret, one-hour tokens and the real clock.
type Options struct {
	// Users are the accounts that can log in. Each gets a random UUID,
	// stable for the server's lifetime, used as the JWT sub (see
	// Server.UserID). Two users whose e-mail addresses differ only in case
	// are a configuration error.
	Users []User
	// Secret is the HS256 key. Nil means 32 random bytes, so tokens from
	// one Server are never accepted by another.
	Secret []byte
	// Lifetime is how long an issued token lives (its exp is issue time plus
	// Lifetime, truncated to whole seconds as PyJWT does). Zero means
	// DefaultLifetime. Server.SetLifetime changes it at run time.
	Lifetime time.Duration
	// OmitExp issues tokens with no exp claim, as fastapi-users does when
	// lifetime_seconds is None, so a client's configured fallback lifetime
	// can be tested. Such tokens never expire.
	OmitExp bool
	// Now is the clock used to stamp and check exp. Nil means time.Now.
	Now func() time.Time
}

// Fault makes the login endpoint fail, to test how a client treats an
// unavailable upstream. The zero Fault means no fault. When several fields
// are set, Hang wins over Garbage, and Garbage over Status.
type Fault struct {
	// Status, when non-zero, makes every login answer this HTTP status with
	// Body. The Content-Type is application/json when Body is valid JSON,
	// text/plain otherwise.
	Status int
	// Body is sent with Status.
	Body string
	// Garbage makes every login answer 200 with Content-Type
	// application/json and a body that is not JSON (an HTML error page, as a
	// misconfigured proxy sends).
	Garbage bool
	// Hang makes every login wait until its request's context is done (the
	// client gave up or disconnected), or until SetFault is called again;
	// then the login is handled under the new fault, or normally if it was
	// cleared. A hanging login has already been counted by LoginAttempts,
	// so a test can wait for it to arrive before releasing it. An
	// httptest.Server's Close waits for hanging logins whose clients are
	// still connected: clear the fault or cancel those clients first.
	Hang bool
}

// garbageBody is what a Garbage fault sends.
const garbageBody = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>\n"

// Server is the simulated kyc service. It implements http.Handler; create it
// with New.
type Server struct {
	secret  []byte
	omitExp bool
	now     func() time.Time
	parser  *jwt.Parser

	lifetime atomic.Int64 // a time.Duration

	mu      sync.RWMutex
	byEmail map[string]*account // key: strings.ToLower(email)
	byID    map[string]*account // key: canonical UUID
	revoked map[string]bool     // tokens Revoke refused; guarded by mu

	faultMu      sync.Mutex
	fault        Fault
	faultChanged chan struct{} // closed and replaced by every SetFault

	logins        atomic.Int64
	loginAttempts atomic.Int64
	resourceCalls atomic.Int64
}

// account is a User as the server holds it. Only password changes after
// New; it is guarded by Server.mu.
type account struct {
	id         string
	email      string
	password   string
	unverified bool
	inactive   bool
}

// New returns a Server configured by o. It panics if two users share an
// e-mail address (ignoring case) or a user has an empty one, since that is a
// mistake in the test or demo that builds it.
func New(o Options) *Server {
	s := &Server{
		secret:       o.Secret,
		omitExp:      o.OmitExp,
		now:          o.Now,
		byEmail:      make(map[string]*account, len(o.Users)),
		byID:         make(map[string]*account, len(o.Users)),
		revoked:      map[string]bool{},
		faultChanged: make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.secret == nil {
		s.secret = make([]byte, 32)
		rand.Read(s.secret) // never returns an error
	} else {
		s.secret = bytes.Clone(s.secret)
	}
	s.SetLifetime(o.Lifetime)
	s.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithAudience(audience),
		jwt.WithTimeFunc(s.now),
	)
	for i, u := range o.Users {
		key := strings.ToLower(u.Email)
		if key == "" {
			panic(fmt.Sprintf("kycsim: Users[%d] has no Email", i))
		}
		if _, dup := s.byEmail[key]; dup {
			panic(fmt.Sprintf("kycsim: Users[%d]: e-mail %q is already taken", i, u.Email))
		}
		a := &account{
			id:         newUUID(),
			email:      u.Email,
			password:   u.Password,
			unverified: u.Unverified,
			inactive:   u.Inactive,
		}
		s.byEmail[key] = a
		s.byID[a.id] = a
	}
	return s
}

// SetLifetime changes the lifetime of tokens issued from now on; tokens
// already issued keep their exp. A d of zero or less restores
// DefaultLifetime.
func (s *Server) SetLifetime(d time.Duration) {
	if d <= 0 {
		d = DefaultLifetime
	}
	s.lifetime.Store(int64(d))
}

// SetPassword changes the password of the user with this e-mail address
// (matched case-insensitively), so that a client's configured password
// becomes wrong. Tokens already issued stay valid, as fastapi-users' JWTs do
// not depend on the password. It panics if there is no such user.
func (s *Server) SetPassword(email, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byEmail[strings.ToLower(email)]
	if !ok {
		panic(fmt.Sprintf("kycsim: SetPassword: no user %q", email))
	}
	a.password = password
}

// Revoke makes the protected endpoint refuse token from now on (401), as a
// deployment with a database token strategy, or one that rotated its JWT
// secret, refuses a token before its exp: a client then has to log in again.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked[token] = true
}

// UserID returns the UUID that tokens for the user with this e-mail address
// carry as sub, or "" if there is no such user.
func (s *Server) UserID(email string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if a, ok := s.byEmail[strings.ToLower(email)]; ok {
		return a.id
	}
	return ""
}

// SetFault makes the login endpoint fail as f describes, from the next
// request on; SetFault(Fault{}) clears it. It also releases logins that a
// previous Hang fault holds.
func (s *Server) SetFault(f Fault) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.fault = f
	close(s.faultChanged)
	s.faultChanged = make(chan struct{})
}

// Logins returns how many logins succeeded (answered 200 with a token).
func (s *Server) Logins() int64 { return s.logins.Load() }

// LoginAttempts returns how many POST requests reached the login endpoint,
// whatever their outcome, faulted ones included. It counts a request as
// soon as it arrives, before any fault applies.
func (s *Server) LoginAttempts() int64 { return s.loginAttempts.Load() }

// ResourceCalls returns how many calls to the protected endpoint were
// accepted (answered 200).
func (s *Server) ResourceCalls() int64 { return s.resourceCalls.Load() }

// ServeHTTP routes a request as the real FastAPI application does: 404
// {"detail":"Not Found"} for an unknown path, 405 {"detail":"Method Not
// Allowed"} for a known path with the wrong method.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case LoginPath:
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		s.login(w, r)
	case LogoutPath:
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		s.logout(w, r)
	case ResourcePath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		s.resource(w, r)
	default:
		writeJSON(w, http.StatusNotFound, detail{"Not Found"})
	}
}

// login implements fastapi-users' POST /login for the bearer transport with
// requires_verification=True.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	s.loginAttempts.Add(1)
	// Read the whole body before any fault applies: net/http notices that a
	// client went away (and cancels the request's context, which ends a
	// Hang) only once the handler has consumed the body.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if !s.applyFault(w, r) {
		return
	}
	if err != nil {
		// FastAPI's answer when the form cannot be parsed.
		writeJSON(w, http.StatusBadRequest, detail{"There was an error parsing the body"})
		return
	}
	form := readForm(r.Header.Get("Content-Type"), body)
	// FastAPI validates OAuth2PasswordRequestForm's fields in declaration
	// order (grant_type, username, password, ...) and reports every
	// failure, not only the first. scope, client_id and client_secret are
	// optional strings: nothing about them can fail.
	var errs []validationError
	grantType := form.get("grant_type")
	if grantType != "" && grantType != "password" {
		errs = append(errs, validationError{
			Type:  "string_pattern_mismatch",
			Loc:   []string{"body", "grant_type"},
			Msg:   "String should match pattern '^password$'",
			Input: grantType,
			Ctx:   map[string]string{"pattern": "^password$"},
		})
	}
	username, password := form.get("username"), form.get("password")
	if username == "" {
		errs = append(errs, missing("username"))
	}
	if password == "" {
		errs = append(errs, missing("password"))
	}
	if len(errs) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, struct {
			Detail []validationError `json:"detail"`
		}{errs})
		return
	}

	s.mu.RLock()
	a, ok := s.byEmail[strings.ToLower(username)]
	passwordOK := ok && subtle.ConstantTimeCompare([]byte(a.password), []byte(password)) == 1
	var id string
	var inactive, unverified bool
	if ok {
		id, inactive, unverified = a.id, a.inactive, a.unverified
	}
	s.mu.RUnlock()

	// The order of these checks is fastapi-users': an inactive user, even
	// with the right password, is indistinguishable from a wrong password,
	// and only a user who got past both learns about verification.
	if !passwordOK || inactive {
		writeJSON(w, http.StatusBadRequest, detail{"LOGIN_BAD_CREDENTIALS"})
		return
	}
	if unverified {
		writeJSON(w, http.StatusBadRequest, detail{"LOGIN_USER_NOT_VERIFIED"})
		return
	}
	token, err := s.issue(id)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, detail{"Internal Server Error"})
		return
	}
	s.logins.Add(1)
	writeJSON(w, http.StatusOK, struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}{token, "bearer"})
}

// applyFault answers r as the current fault says, and reports whether the
// request should go on to be handled normally.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request) bool {
	for {
		s.faultMu.Lock()
		f, changed := s.fault, s.faultChanged
		s.faultMu.Unlock()
		switch {
		case f.Hang:
			select {
			case <-r.Context().Done():
				return false // nobody is listening any more
			case <-changed:
				continue // handle it under the new fault
			}
		case f.Garbage:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, garbageBody)
			return false
		case f.Status != 0:
			ct := "text/plain; charset=utf-8"
			if json.Valid([]byte(f.Body)) {
				ct = "application/json"
			}
			w.Header().Set("Content-Type", ct)
			w.WriteHeader(f.Status)
			io.WriteString(w, f.Body)
			return false
		default:
			return true
		}
	}
}

// logout implements fastapi-users' POST /logout for the JWT strategy: the
// strategy cannot destroy a JWT and the bearer transport has no logout
// response, so an authenticated caller just gets 204.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.authenticate(w, r); !ok {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resource is the protected endpoint: it names the authenticated user.
func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	a, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	s.resourceCalls.Add(1)
	writeJSON(w, http.StatusOK, struct {
		ID    string `json:"id"`
		Email string `json:"email"`
	}{a.id, a.email})
}

// authenticate resolves r's bearer token to a user as fastapi-users'
// current_user(active=True, verified=True) does, or answers the refusal
// itself and reports false. A missing, malformed, foreign or expired token,
// or one naming an unknown or inactive user, is 401; an unverified user
// (whose token can only have been forged with the secret, since such a user
// cannot log in) is 403.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (account, bool) {
	// FastAPI's OAuth2PasswordBearer splits the header at the first space
	// and compares the scheme case-insensitively; everything after that
	// space, extra spaces included, is the token.
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if strings.ToLower(scheme) != "bearer" {
		writeJSON(w, http.StatusUnauthorized, detail{"Unauthorized"})
		return account{}, false
	}
	a, ok := s.verify(token)
	if !ok || a.inactive {
		writeJSON(w, http.StatusUnauthorized, detail{"Unauthorized"})
		return account{}, false
	}
	if a.unverified {
		writeJSON(w, http.StatusForbidden, detail{"Forbidden"})
		return account{}, false
	}
	return a, true
}

// methodNotAllowed answers as Starlette does for a route that exists but not
// for this method.
func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, detail{"Method Not Allowed"})
}

// detail is FastAPI's error body for an HTTPException.
type detail struct {
	Detail string `json:"detail"`
}

// validationError is one entry of FastAPI's 422 body (pydantic v2's error
// shape without the url field, which FastAPI drops).
type validationError struct {
	Type  string            `json:"type"`
	Loc   []string          `json:"loc"`
	Msg   string            `json:"msg"`
	Input any               `json:"input"`
	Ctx   map[string]string `json:"ctx,omitempty"`
}

func missing(field string) validationError {
	return validationError{Type: "missing", Loc: []string{"body", field}, Msg: "Field required", Input: nil}
}

// writeJSON writes v compactly and without HTML escaping, as Starlette's
// JSONResponse does.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"detail":"Internal Server Error"}`)
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

// formValues is a parsed form body in which, as in Starlette's FormData, the
// last occurrence of a repeated field wins.
type formValues map[string]string

func (f formValues) get(name string) string { return f[name] }

// readForm parses a body the way Starlette's Request.form does: as a form
// only when the media type is application/x-www-form-urlencoded (parameters
// such as charset ignored, case ignored); any other body, JSON included,
// reads as an empty form. Unlike Starlette, multipart/form-data is refused
// too (read as empty): the kyc contract is a urlencoded form.
func readForm(contentType string, body []byte) formValues {
	form := formValues{}
	mediaType, _, _ := strings.Cut(contentType, ";")
	if strings.ToLower(strings.TrimSpace(mediaType)) != "application/x-www-form-urlencoded" {
		return form
	}
	for pair := range strings.SplitSeq(string(body), "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		form[unquotePlus(k)] = unquotePlus(v)
	}
	return form
}

// unquotePlus decodes like Python's urllib.parse.unquote_plus, which leaves
// a malformed percent escape as it is instead of failing.
func unquotePlus(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	s = strings.ReplaceAll(s, "+", " ")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
