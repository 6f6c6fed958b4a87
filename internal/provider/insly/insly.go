// Package insly logs in to the Insly Ledger "Identifier" service, the login
// front of Insly's API, which runs on AWS Cognito. It speaks two grants:
//
//   - password: POST {base_url}/login/{tenant} with the user's login name
//     and password, then POST {base_url}/token/refresh/{tenant} with the
//     refresh token and the Cognito username, which is the access token's
//     "username" claim and not the login name;
//   - client_credentials: POST {base_url}/token/client/{tenant} with a
//     client id, secret and scope ("auth/{tenant}" by default).
//
// The shape follows Cognito's. A refresh is cheaper than a login and costs
// no password attempt, so a cached password-grant token is refreshed, and a
// login is made only when the refresh token is refused (revoked, expired).
// A refresh that is refused is not a rejection of the configured
// credentials: only a refused login is, so only that reaches the cache's
// hold. Cognito answers a login it cannot finish with a challenge (a new
// password, MFA), which a machine cannot answer: that is reported as a
// rejection naming the challenge. Errors come as IDS codes, mostly with
// HTTP 400 whatever their meaning, so they are classified by code.
//
// Every call made with the token carries "Authorization: Bearer <token>",
// "X-TENANT-ID: <tenant>" and "Content-Type: application/json;
// charset=UTF-8", as Insly's docs say; all three are in the token's
// Headers.
package insly

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Grants a provider can use.
const (
	// GrantPassword logs in as a user and refreshes with the refresh token.
	GrantPassword = "password"
	// GrantClientCredentials logs in as an application; it has no refresh
	// token, so a new token is a new login.
	GrantClientCredentials = "client_credentials"
)

// Reasons specific to this scheme; stable API as google.rpc.ErrorInfo
// reasons.
const (
	// ReasonPasswordResetRequired: the upstream demands that the user's
	// password be reset before it logs in again (IDS10018).
	ReasonPasswordResetRequired = "PASSWORD_RESET_REQUIRED"
	// ReasonLoginRequestRefused: the upstream refused the request itself
	// (an unknown tenant, a malformed request, an undocumented code), so
	// repeating it cannot help.
	ReasonLoginRequestRefused = "LOGIN_REQUEST_REFUSED"
)

// IDS codes of the identifier service that this client tells apart.
const (
	codeNotAuthorized         = "IDS10017"
	codePasswordResetRequired = "IDS10018"
	codeTooManyFailedAttempts = "IDS10022"
	codeTooManyRequests       = "IDS10023"
	codeUserNotConfirmed      = "IDS10028"
	codeUserNotFound          = "IDS10029"
)

// LockoutHold is the least time logins are held after the upstream locks
// the user out for too many failed passwords (IDS10022). Cognito's lockout
// grows with each failed attempt up to about 15 minutes, and an attempt
// during it can extend it: waiting out the longest lockout once is cheaper
// than probing it every minute.
const LockoutHold = 15 * time.Minute

// DefaultTokenTTL is the lifetime assumed when an answer has no expires_in
// and its access token no exp: Cognito's default access token lifetime.
const DefaultTokenTTL = time.Hour

// CallContentType is the Content-Type that Insly's docs say every call
// made with the token carries; it is vended with the other headers.
const CallContentType = "application/json; charset=UTF-8"

// Config holds the kind's keys. A password-grant provider sets username
// and password (and optionally meta_data); a client_credentials one sets
// client_id and client_secret (and optionally scopes).
type Config struct {
	// BaseURL is the identifier API root, up to /api/v1/identifier.
	BaseURL string `yaml:"base_url"`
	// Tenant is the tenant tag: in every identifier path and in the
	// X-TENANT-ID header.
	Tenant string `yaml:"tenant"`
	// Grant is GrantPassword or GrantClientCredentials.
	Grant    string        `yaml:"grant"`
	Username string        `yaml:"username"`
	Password secret.Secret `yaml:"password"`
	// MetaData is sent as meta_data with a password login.
	MetaData     map[string]string `yaml:"meta_data"`
	ClientID     string            `yaml:"client_id"`
	ClientSecret secret.Secret     `yaml:"client_secret"`
	// Scopes are the scopes a caller may ask for besides DefaultScope
	// (client_credentials only).
	Scopes []string `yaml:"scopes"`
}

// tenantRE is what a tenant tag may be: it goes into a URL path and a
// header, and Insly tags are host-name labels.
var tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Validate checks c. Keys of the other grant are refused rather than
// ignored, so a provider never silently logs in a way the operator did
// not mean.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) { errs = append(errs, config.Errorf(key, format, args...)) }
	if err := config.CheckURL(c.BaseURL); err != nil {
		bad("base_url", "%v", err)
	}
	switch {
	case c.Tenant == "":
		bad("tenant", "is required")
	case !tenantRE.MatchString(c.Tenant):
		bad("tenant", "must be a tenant tag: letters, digits, '.', '-' or '_', starting with a letter or digit (at most 63)")
	}
	required := func(key string, set bool) {
		if !set {
			bad(key, "is required with grant %s", c.Grant)
		}
	}
	secretKey := func(key string, s secret.Secret) {
		if _, err := s.Value(); err != nil {
			bad(key, "%v", err)
		}
	}
	foreign := func(key string, set bool, other string) {
		if set {
			bad(key, "belongs to grant %s; grant %s does not use it: remove it", other, c.Grant)
		}
	}
	switch c.Grant {
	case GrantPassword:
		required("username", c.Username != "")
		secretKey("password", c.Password)
		foreign("client_id", c.ClientID != "", GrantClientCredentials)
		foreign("client_secret", !c.ClientSecret.IsZero(), GrantClientCredentials)
		foreign("scopes", len(c.Scopes) > 0, GrantClientCredentials)
		for k := range c.MetaData {
			if k == "" {
				bad("meta_data", "keys must not be empty")
				break
			}
		}
	case GrantClientCredentials:
		required("client_id", c.ClientID != "")
		secretKey("client_secret", c.ClientSecret)
		foreign("username", c.Username != "", GrantPassword)
		foreign("password", !c.Password.IsZero(), GrantPassword)
		foreign("meta_data", len(c.MetaData) > 0, GrantPassword)
		seen := map[string]bool{}
		for i, s := range c.Scopes {
			key := fmt.Sprintf("scopes[%d]", i)
			switch {
			case !validScope(s):
				bad(key, "must be 1 to 256 printable characters, no spaces")
			case seen[s]:
				bad(key, "%q is listed twice", s)
			}
			seen[s] = true
		}
	case "":
		bad("grant", "is required: %s or %s", GrantPassword, GrantClientCredentials)
	default:
		bad("grant", "must be %s or %s", GrantPassword, GrantClientCredentials)
	}
	return errors.Join(errs...)
}

// DefaultScope is the scope used when a caller names none: "auth/{tenant}"
// for client_credentials, and none for the password grant, whose tokens
// have no scope a caller could choose.
func (c *Config) DefaultScope() string {
	if c.Grant == GrantClientCredentials {
		return "auth/" + c.Tenant
	}
	return ""
}

// validScope is what the broker lets a caller send as a scope; the
// upstream splits a scope at spaces, so one with a space would be many.
func validScope(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// Client is the insly Source.
type Client struct {
	cfg                             Config
	loginURL, clientURL, refreshURL string
	hc                              *http.Client
	now                             func() time.Time

	mu sync.Mutex
	// refused is the last refresh token the upstream refused, so a retry
	// after a failed fallback login does not send it again.
	refused string
}

// New returns a Client for a validated config. hc carries the upstream
// requests (and their tracing); now is the clock.
func New(cfg Config, hc *http.Client, now func() time.Time) *Client {
	base := strings.TrimRight(cfg.BaseURL, "/")
	tenant := url.PathEscape(cfg.Tenant)
	return &Client{
		cfg:        cfg,
		loginURL:   base + "/login/" + tenant,
		clientURL:  base + "/token/client/" + tenant,
		refreshURL: base + "/token/refresh/" + tenant,
		hc:         hc,
		now:        now,
	}
}

// Token logs in, or for the password grant refreshes r.Previous when it
// has a refresh token, falling back to a login when the refresh token is
// refused. The client_credentials grant logs in for r.Scope (the default
// scope when empty); the password grant takes no scope.
func (c *Client) Token(ctx context.Context, r token.Request) (*token.Token, error) {
	if c.cfg.Grant == GrantClientCredentials {
		return c.clientLogin(ctx, r.Scope)
	}
	if r.Scope != "" {
		return nil, &token.Error{Kind: token.KindInvalid, Reason: "INVALID_SCOPE",
			Message: "insly password-grant tokens have no scope: leave scope empty"}
	}
	if prev := r.Previous; prev != nil && prev.RefreshToken != "" && !c.wasRefused(prev.RefreshToken) {
		tok, err := c.refresh(ctx, prev)
		switch {
		case err == nil:
			return tok, nil
		case token.KindOf(err) == token.KindRejected:
			// The refresh token is dead (revoked, expired): that says
			// nothing about the password, which a login now tries.
			c.refuse(prev.RefreshToken)
		case ctx.Err() != nil || c.now().Before(prev.Expiry):
			// A refresh that failed otherwise (the network, an answer
			// this client cannot read) is retried while the cached token
			// still serves callers.
			return nil, err
		}
		// Past the token's expiry a refresh is no longer worth waiting
		// for: a login tries the password, so a refresh endpoint that
		// keeps failing cannot leave the provider without a token.
	}
	return c.passwordLogin(ctx)
}

func (c *Client) wasRefused(refreshToken string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused == refreshToken
}

func (c *Client) refuse(refreshToken string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refused = refreshToken
}

// op is one identifier operation, for classifying its answers.
type op int

const (
	opLogin op = iota
	opClient
	opRefresh
)

func (c *Client) passwordLogin(ctx context.Context) (*token.Token, error) {
	password, err := c.cfg.Password.Value()
	if err != nil {
		return nil, token.SecretUnreadable("password", err)
	}
	body := struct {
		Username string            `json:"username"`
		Password string            `json:"password"`
		MetaData map[string]string `json:"meta_data,omitempty"`
	}{c.cfg.Username, password, c.cfg.MetaData}
	return c.exchange(ctx, opLogin, c.loginURL, body, "")
}

func (c *Client) clientLogin(ctx context.Context, scope string) (*token.Token, error) {
	if scope == "" {
		scope = c.cfg.DefaultScope()
	}
	clientSecret, err := c.cfg.ClientSecret.Value()
	if err != nil {
		return nil, token.SecretUnreadable("client_secret", err)
	}
	body := struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		Scope        string `json:"scope"`
	}{c.cfg.ClientID, clientSecret, scope}
	return c.exchange(ctx, opClient, c.clientURL, body, scope)
}

// refresh exchanges prev's refresh token for a new access token. The
// upstream wants the Cognito username, which only the access token
// carries; the configured login name is the best guess without it.
func (c *Client) refresh(ctx context.Context, prev *token.Token) (*token.Token, error) {
	username := usernameClaim(prev.AccessToken)
	if username == "" {
		username = c.cfg.Username
	}
	body := struct {
		RefreshToken string `json:"refresh_token"`
		Username     string `json:"username"`
	}{prev.RefreshToken, username}
	tok, err := c.exchange(ctx, opRefresh, c.refreshURL, body, "")
	if err != nil {
		return nil, err
	}
	if tok.RefreshToken == "" {
		// Cognito answers a refresh without a new refresh token: the old
		// one stays valid until it expires.
		tok.RefreshToken = prev.RefreshToken
	}
	return tok, nil
}

// usernameClaim reads the "username" claim of an access token without
// verifying it: tokenvend does not hold the upstream's signing key, and the
// upstream checks the token's user itself.
func usernameClaim(accessToken string) string {
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(accessToken, claims); err != nil {
		return ""
	}
	name, _ := claims["username"].(string)
	return name
}

// exchange posts body as JSON to u and reads the answer into a Token.
func (c *Client) exchange(ctx context.Context, o op, u string, body any, scope string) (*token.Token, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	issued := c.now()
	status, raw, err := upstream.Post(ctx, c.hc, u, "application/json; charset=UTF-8", payload, nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, c.failure(o, status, raw, scope)
	}
	return c.parse(o, raw, issued)
}

// result is Cognito's AuthenticationResult.
type result struct {
	AccessToken  string  `json:"access_token"`
	ExpiresIn    float64 `json:"expires_in"`
	RefreshToken string  `json:"refresh_token"`
	TokenType    string  `json:"token_type"`
}

// answer is a 200 of any identifier operation. Every field is optional;
// the client-credentials answer may be flat (result at the top level).
type answer struct {
	AuthenticationResult *result `json:"authentication_result"`
	ChallengeName        string  `json:"challenge_name"`
	result
}

func (c *Client) parse(o op, raw []byte, issued time.Time) (*token.Token, error) {
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, upstream.Garbage("an answer that is not the identifier's JSON")
	}
	res := a.AuthenticationResult
	if (res == nil || res.AccessToken == "") && o == opClient && a.AccessToken != "" {
		res = &a.result
	}
	if res == nil || res.AccessToken == "" {
		if a.ChallengeName != "" {
			return nil, challenge(o, a.ChallengeName)
		}
		return nil, upstream.Garbage("an answer without an access_token")
	}
	if res.TokenType != "" && !strings.EqualFold(res.TokenType, "Bearer") {
		return nil, upstream.Garbage(fmt.Sprintf("token_type %.20q where Bearer was expected", res.TokenType))
	}
	if res.ExpiresIn < 0 || res.ExpiresIn > math.MaxInt32 {
		return nil, upstream.Garbage("an expires_in out of range")
	}
	// expires_in is relative, so the clocks of tokenvend and the upstream
	// need not agree; the token's exp stands in for it when it is missing.
	var expiry time.Time
	switch {
	case res.ExpiresIn > 0:
		expiry = issued.Add(time.Duration(res.ExpiresIn * float64(time.Second)))
	default:
		var claims jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(res.AccessToken, &claims); err == nil && claims.ExpiresAt != nil {
			expiry = claims.ExpiresAt.Time
		} else {
			expiry = issued.Add(DefaultTokenTTL)
		}
	}
	tok := &token.Token{
		AccessToken: res.AccessToken,
		Type:        "Bearer",
		Headers: map[string]string{
			"Authorization": "Bearer " + res.AccessToken,
			"X-TENANT-ID":   c.cfg.Tenant,
			"Content-Type":  CallContentType,
		},
		IssuedAt: issued,
		Expiry:   expiry,
	}
	if o != opClient {
		tok.RefreshToken = res.RefreshToken
	}
	return tok, nil
}

// challenge reports a login answered with a Cognito challenge.
func challenge(o op, name string) error {
	code := upstream.Code(name)
	what := "login"
	if o == opRefresh {
		what = "refresh"
	}
	return token.Rejected(token.ReasonChallengeRequired, code, fmt.Sprintf(
		"the upstream answered the %s with the challenge %s, which tokenvend cannot answer: an operator must complete it for the account (for example set a permanent password or turn off MFA for this user)",
		what, code))
}

// failure classifies a non-200 answer. The identifier answers most errors
// with HTTP 400 whatever their cause, so the IDS code decides; the status
// decides only for a code this client does not know.
func (c *Client) failure(o op, status int, raw []byte, scope string) error {
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &body); err != nil || len(body.Errors) == 0 || body.Errors[0].Code == "" {
		return upstream.Unexpected(status)
	}
	e := body.Errors[0]
	code := upstream.Code(e.Code)
	who := "the configured username or password"
	if o == opClient {
		who = "the configured client_id or client_secret"
	}
	switch code {
	case codeNotAuthorized:
		switch {
		case o == opRefresh:
			return token.Rejected(token.ReasonCredentialsRejected, code, "the upstream refused the refresh token (IDS10017 NotAuthorized)")
		case o == opClient && scope != c.cfg.DefaultScope() && strings.Contains(strings.ToLower(e.Message), "scope"):
			// The client may not have this scope: that is this caller's
			// request, not the credentials, so other scopes go on working.
			return &token.Error{Kind: token.KindDenied, Reason: "SCOPE_NOT_ALLOWED", Upstream: code,
				Message: fmt.Sprintf("the upstream does not grant scope %q to the configured client (IDS10017): an operator must allow it for the client or remove it from scopes", scope)}
		}
		return token.Rejected(token.ReasonCredentialsRejected, code,
			fmt.Sprintf("the upstream rejected %s (IDS10017 NotAuthorized): an operator must fix the credentials", who))
	case codeUserNotFound:
		return token.Rejected(token.ReasonCredentialsRejected, code,
			"the upstream has no user with the configured username in the configured tenant (IDS10029 UserNotFound): an operator must fix username or tenant")
	case codePasswordResetRequired:
		return token.Rejected(ReasonPasswordResetRequired, code,
			"the upstream requires the user's password to be reset (IDS10018 PasswordResetRequired): an operator must reset it and configure the new one")
	case codeUserNotConfirmed:
		return token.Rejected(token.ReasonAccountNotVerified, code,
			"the upstream user is not confirmed (IDS10028 UserNotConfirmed): an operator must confirm the account")
	case codeTooManyFailedAttempts:
		err := token.Rejected(token.ReasonAccountLocked, code, fmt.Sprintf(
			"the upstream locked the user out after too many failed passwords (IDS10022 TooManyFailedAttempts): logins are held for at least %s so that retries do not extend the lockout; an operator should check the configured password",
			LockoutHold))
		err.Hold = LockoutHold
		return err
	case codeTooManyRequests:
		err := token.Unavailable("the upstream is throttling requests (IDS10023 TooManyRequests); retry later", nil)
		err.Upstream = code
		return err
	}
	if status >= 500 || status == http.StatusTooManyRequests {
		err := upstream.Unexpected(status)
		err.Upstream = code
		return err
	}
	return token.Rejected(ReasonLoginRequestRefused, code, fmt.Sprintf(
		"the upstream refused the request (%s, HTTP %d) without saying the credentials are wrong: an operator must check base_url and tenant",
		code, status))
}
