package insly_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/insly"
	"github.com/tokenvend/tokenvend/internal/provider/insly/inslysim"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

const (
	tenant = "acme"
	email  = "alice@example.com"
	// cogUser is alice's Cognito username: what her tokens carry and what a
	// refresh must send, never her e-mail.
	cogUser = "7c1b0a5e-2f0e-4c57-9d5a-0b8f8e3c1a11"
	// password needs JSON escaping: a client that builds its body by hand
	// sends a different password.
	password     = `pa"ss\word<&>` + "\u00e9"
	clientID     = "app-1"
	clientSecret = "client-Secr3t/+="
)

var simStart = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)

func newClock() *clocktest.Clock { return clocktest.New(simStart) }

func users() []inslysim.User {
	return []inslysim.User{
		{Email: email, Username: cogUser, Password: password},
		{Email: "carol@example.com", Password: password, Challenge: "NEW_PASSWORD_REQUIRED"},
		{Email: "dave@example.com", Password: password, Challenge: "SOFTWARE_TOKEN_MFA"},
		{Email: "erin@example.com", Password: password, Unconfirmed: true},
		{Email: "frank@example.com", Password: password, ResetRequired: true},
	}
}

func clients() []inslysim.Client {
	return []inslysim.Client{
		{ID: clientID, Secret: clientSecret, Scopes: []string{"auth/" + tenant, "ledger/read"}},
		{ID: "app-narrow", Secret: clientSecret, Scopes: []string{"ledger/read"}},
	}
}

// record is one identifier request as the client sent it.
type record struct {
	path        string
	contentType string
	body        map[string]json.RawMessage
}

// fixture is a simulator on a loopback listener, with every identifier
// request recorded.
type fixture struct {
	sim   *inslysim.Server
	srv   *httptest.Server
	clock *clocktest.Clock

	mu   sync.Mutex
	reqs []record
}

func (f *fixture) requests() []record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *fixture) last(t *testing.T) record {
	t.Helper()
	r := f.requests()
	if len(r) == 0 {
		t.Fatal("no identifier request was made")
	}
	return r[len(r)-1]
}

// startSim serves a simulator built from o, filling tenant, users, clients
// and clock when o leaves them empty.
func startSim(t *testing.T, o inslysim.Options) *fixture {
	t.Helper()
	f := &fixture{clock: newClock()}
	if o.Tenant == "" {
		o.Tenant = tenant
	}
	if o.Users == nil {
		o.Users = users()
	}
	if o.Clients == nil {
		o.Clients = clients()
	}
	if o.Now == nil {
		o.Now = f.clock.Now
	}
	f.sim = inslysim.New(o)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, inslysim.PathPrefix) {
			raw, _ := io.ReadAll(r.Body)
			var body map[string]json.RawMessage
			_ = json.Unmarshal(raw, &body)
			f.mu.Lock()
			f.reqs = append(f.reqs, record{r.URL.Path, r.Header.Get("Content-Type"), body})
			f.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(raw))
		}
		f.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { f.sim.SetFault(inslysim.Fault{}) }) // runs before Close
	return f
}

func (f *fixture) baseURL() string { return f.srv.URL + inslysim.PathPrefix }

// newClient validates cfg and builds a Client on it with the fixture's clock.
func (f *fixture) newClient(t *testing.T, cfg insly.Config) *insly.Client {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return insly.New(cfg, f.srv.Client(), f.clock.Now)
}

func (f *fixture) passwordConfig() insly.Config {
	return insly.Config{
		BaseURL:  f.baseURL(),
		Tenant:   tenant,
		Grant:    insly.GrantPassword,
		Username: email,
		Password: secret.Literal(password),
	}
}

func (f *fixture) clientConfig() insly.Config {
	return insly.Config{
		BaseURL:      f.baseURL(),
		Tenant:       tenant,
		Grant:        insly.GrantClientCredentials,
		ClientID:     clientID,
		ClientSecret: secret.Literal(clientSecret),
		Scopes:       []string{"ledger/read"},
	}
}

// use calls the protected endpoint with tok's headers and returns the
// status and the user it names.
func (f *fixture) use(t *testing.T, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+inslysim.PoliciesPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var who struct {
		User   string `json:"user"`
		Tenant string `json:"tenant"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&who); err != nil {
			t.Fatal(err)
		}
		if who.Tenant != tenant {
			t.Errorf("protected endpoint tenant: got %q, want %q", who.Tenant, tenant)
		}
	}
	return resp.StatusCode, who.User
}

func yamlSecret(t *testing.T, src string) secret.Secret {
	t.Helper()
	var s secret.Secret
	if err := yaml.Unmarshal([]byte(src), &s); err != nil {
		t.Fatalf("yaml.Unmarshal(%q): %v", src, err)
	}
	return s
}

func kindName(k token.Kind) string {
	return map[token.Kind]string{
		token.KindInternal: "KindInternal", token.KindInvalid: "KindInvalid", token.KindNotFound: "KindNotFound",
		token.KindDenied: "KindDenied", token.KindRejected: "KindRejected", token.KindUnavailable: "KindUnavailable",
	}[k]
}

type wantErr struct {
	kind     token.Kind
	reason   string
	upstream string
}

var unavailable = wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, ""}

// checkErr asserts err is a *token.Error as w says, and that neither its
// Error() nor its Message holds any of secrets.
func checkErr(t *testing.T, tok *token.Token, err error, w wantErr, secrets ...string) *token.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("Token: got a token and no error, want %s %s", kindName(w.kind), w.reason)
	}
	if tok != nil {
		t.Errorf("Token: got a token with the error %v, want nil", err)
	}
	var e *token.Error
	if !errors.As(err, &e) {
		t.Fatalf("Token: got error %T (%v), want *token.Error", err, err)
	}
	if e.Kind != w.kind || e.Reason != w.reason || e.Upstream != w.upstream {
		t.Errorf("error: got %s %q upstream %q, want %s %q upstream %q (%v)",
			kindName(e.Kind), e.Reason, e.Upstream, kindName(w.kind), w.reason, w.upstream, err)
	}
	if e.Message == "" {
		t.Error("Message: got empty, want one a caller can act on")
	}
	checkNoSecret(t, err, secrets...)
	return e
}

func checkNoSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	texts := []string{err.Error()}
	var e *token.Error
	if errors.As(err, &e) {
		texts = append(texts, e.Message, e.Upstream)
	}
	for _, text := range texts {
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("error %q holds the secret %q, want no secret", text, s)
			}
		}
	}
}

// jsonString marshals v.
func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// str decodes a JSON string member of a recorded body.
func str(t *testing.T, body map[string]json.RawMessage, key string) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(body[key], &s); err != nil {
		t.Errorf("body member %q: got %s, want a string", key, body[key])
	}
	return s
}

func TestPasswordLogin(t *testing.T) {
	t.Parallel()
	for _, meta := range []map[string]string{nil, {"source": "tokenvend", "env": "test"}} {
		t.Run(map[bool]string{false: "without meta_data", true: "with meta_data"}[meta != nil], func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{AccessTTL: 17 * time.Minute})
			cfg := f.passwordConfig()
			cfg.BaseURL += "/" // a trailing slash must not double up
			cfg.MetaData = meta
			c := f.newClient(t, cfg)

			tok, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			wantHeaders := map[string]string{"Authorization": "Bearer " + tok.AccessToken, "X-TENANT-ID": tenant, "Content-Type": "application/json; charset=UTF-8"}
			if !maps.Equal(tok.Headers, wantHeaders) {
				t.Errorf("Headers: got %q, want %q", tok.Headers, wantHeaders)
			}
			if tok.Type != "Bearer" {
				t.Errorf("Type: got %q, want Bearer", tok.Type)
			}
			if !tok.IssuedAt.Equal(simStart) || !tok.Expiry.Equal(simStart.Add(17*time.Minute)) {
				t.Errorf("IssuedAt, Expiry: got %v, %v, want %v, %v (expires_in)", tok.IssuedAt, tok.Expiry, simStart, simStart.Add(17*time.Minute))
			}
			if tok.RefreshToken == "" {
				t.Error("RefreshToken: got empty, want the login's refresh token kept for a refresh")
			}
			if status, who := f.use(t, tok.Headers); status != http.StatusOK || who != cogUser {
				t.Errorf("protected endpoint: got %d naming %q, want 200 naming %q", status, who, cogUser)
			}
			// The tenant header is part of the credential: without it the
			// upstream refuses the token.
			if status, _ := f.use(t, map[string]string{"Authorization": tok.Headers["Authorization"]}); status != http.StatusForbidden {
				t.Errorf("protected endpoint without X-TENANT-ID: got %d, want 403", status)
			}
			// So is the Content-Type the docs say every call carries.
			if status, _ := f.use(t, map[string]string{"Authorization": tok.Headers["Authorization"], "X-TENANT-ID": tenant}); status != http.StatusBadRequest {
				t.Errorf("protected endpoint without Content-Type: got %d, want 400", status)
			}

			rec := f.last(t)
			if rec.path != inslysim.PathPrefix+"/login/"+tenant {
				t.Errorf("path: got %q, want %q", rec.path, inslysim.PathPrefix+"/login/"+tenant)
			}
			if rec.contentType != "application/json; charset=UTF-8" {
				t.Errorf("Content-Type: got %q, want application/json; charset=UTF-8", rec.contentType)
			}
			wantKeys := []string{"password", "username"}
			if meta != nil {
				wantKeys = []string{"meta_data", "password", "username"}
				var got map[string]string
				if err := json.Unmarshal(rec.body["meta_data"], &got); err != nil || !maps.Equal(got, meta) {
					t.Errorf("meta_data: got %s, want %q", rec.body["meta_data"], meta)
				}
			}
			if got := slices.Sorted(maps.Keys(rec.body)); !slices.Equal(got, wantKeys) {
				t.Errorf("login body members: got %q, want %q", got, wantKeys)
			}
			if got := str(t, rec.body, "username"); got != email {
				t.Errorf("username: got %q, want %q", got, email)
			}
			if f.sim.Logins() != 1 || f.sim.RefreshAttempts() != 0 {
				t.Errorf("simulator logins, refresh attempts: got %d, %d, want 1, 0", f.sim.Logins(), f.sim.RefreshAttempts())
			}
		})
	}
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	for _, rotate := range []bool{false, true} {
		t.Run(map[bool]string{false: "refresh token kept", true: "refresh token rotated"}[rotate], func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{RotateRefreshTokens: rotate})
			c := f.newClient(t, f.passwordConfig())
			first, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			f.clock.Advance(55 * time.Minute)

			second, err := c.Token(t.Context(), token.Request{Previous: first})
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if f.sim.Logins() != 1 || f.sim.Refreshes() != 1 {
				t.Errorf("simulator logins, refreshes: got %d, %d, want 1, 1 (a refresh, not a login)", f.sim.Logins(), f.sim.Refreshes())
			}
			rec := f.last(t)
			if rec.path != inslysim.PathPrefix+"/token/refresh/"+tenant {
				t.Errorf("path: got %q, want the refresh endpoint", rec.path)
			}
			if got := slices.Sorted(maps.Keys(rec.body)); !slices.Equal(got, []string{"refresh_token", "username"}) {
				t.Errorf("refresh body members: got %q, want refresh_token and username", got)
			}
			if got := str(t, rec.body, "username"); got != cogUser {
				t.Errorf("refresh username: got %q, want the token's username claim %q, not the login e-mail", got, cogUser)
			}
			if got := str(t, rec.body, "refresh_token"); got != first.RefreshToken {
				t.Errorf("refresh_token: got another token, want the login's")
			}
			if second.AccessToken == first.AccessToken {
				t.Error("AccessToken: got the old one, want the refreshed one")
			}
			if want := f.clock.Now().Add(inslysim.DefaultAccessTTL); !second.Expiry.Equal(want) {
				t.Errorf("Expiry: got %v, want %v", second.Expiry, want)
			}
			if rotate == (second.RefreshToken == first.RefreshToken) || second.RefreshToken == "" {
				t.Errorf("RefreshToken: got same as before %v, want same %v", second.RefreshToken == first.RefreshToken, !rotate)
			}
			if status, who := f.use(t, second.Headers); status != http.StatusOK || who != cogUser {
				t.Errorf("protected endpoint: got %d naming %q, want 200 naming %q", status, who, cogUser)
			}

			// The kept (or rotated) refresh token refreshes again.
			third, err := c.Token(t.Context(), token.Request{Previous: second})
			if err != nil || f.sim.Refreshes() != 2 || f.sim.Logins() != 1 {
				t.Errorf("second refresh: got %v, refreshes %d, logins %d, want a token, 2, 1", err, f.sim.Refreshes(), f.sim.Logins())
			}
			if err == nil && third.RefreshToken == "" {
				t.Error("second refresh: got no refresh token, want one kept")
			}
		})
	}
}

// TestRefreshUsernameFallback: with no username claim to read, the refresh
// names the configured login; the simulator refuses that name (Cognito
// does), so the client falls back to a login.
func TestRefreshUsernameFallback(t *testing.T) {
	t.Parallel()
	unsigned := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte("a key nobody checks"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for name, access := range map[string]string{
		"not a JWT":     "opaque-access-token",
		"no claim":      unsigned(jwt.MapClaims{"sub": "x"}),
		"claim not str": unsigned(jwt.MapClaims{"username": 42}),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			c := f.newClient(t, f.passwordConfig())
			first, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatal(err)
			}
			prev := *first
			prev.AccessToken = access

			tok, err := c.Token(t.Context(), token.Request{Previous: &prev})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			reqs := f.requests()
			if len(reqs) != 3 || !strings.HasSuffix(reqs[1].path, "/token/refresh/"+tenant) {
				t.Fatalf("requests: got %d, want login, refresh, login", len(reqs))
			}
			if got := str(t, reqs[1].body, "username"); got != email {
				t.Errorf("refresh username: got %q, want the configured %q", got, email)
			}
			if f.sim.Logins() != 2 || f.sim.Refreshes() != 0 {
				t.Errorf("simulator logins, refreshes: got %d, %d, want 2, 0", f.sim.Logins(), f.sim.Refreshes())
			}
			if status, _ := f.use(t, tok.Headers); status != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", status)
			}
		})
	}
}

func TestRefusedRefreshFallsBackToLogin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		spoil func(f *fixture)
	}{
		{"revoked", func(f *fixture) { f.sim.RevokeRefreshTokens() }},
		{"expired", func(f *fixture) { f.clock.Advance(inslysim.DefaultRefreshTTL) }},
		{"challenge on refresh", func(f *fixture) {
			f.sim.SetFault(inslysim.Fault{Endpoint: inslysim.EndpointRefresh, Status: 200, Body: `{"challenge_name":"SOFTWARE_TOKEN_MFA"}`})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			c := f.newClient(t, f.passwordConfig())
			first, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatal(err)
			}
			tt.spoil(f)

			tok, err := c.Token(t.Context(), token.Request{Previous: first})
			if err != nil {
				t.Fatalf("Token: %v, want a login after the refused refresh", err)
			}
			if f.sim.RefreshAttempts() != 1 || f.sim.Refreshes() != 0 || f.sim.Logins() != 2 {
				t.Errorf("simulator refresh attempts, refreshes, logins: got %d, %d, %d, want 1, 0, 2",
					f.sim.RefreshAttempts(), f.sim.Refreshes(), f.sim.Logins())
			}
			if tok.RefreshToken == "" || tok.RefreshToken == first.RefreshToken {
				t.Error("RefreshToken: want the new login's, not the refused one")
			}
			if status, _ := f.use(t, tok.Headers); status != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", status)
			}
		})
	}

	t.Run("and the login refused too", func(t *testing.T) {
		t.Parallel()
		f := startSim(t, inslysim.Options{})
		c := f.newClient(t, f.passwordConfig())
		first, err := c.Token(t.Context(), token.Request{})
		if err != nil {
			t.Fatal(err)
		}
		f.sim.RevokeRefreshTokens()
		if err := f.sim.SetPassword(email, "changed-elsewhere"); err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(t.Context(), token.Request{Previous: first})
		// The error is the login's: that is what says the password is wrong.
		e := checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized},
			password, first.RefreshToken, first.AccessToken)
		if !strings.Contains(e.Message, "password") {
			t.Errorf("Message: got %q, want the login's (naming the password)", e.Message)
		}
		if f.sim.LoginAttempts() != 2 {
			t.Errorf("simulator login attempts: got %d, want 2", f.sim.LoginAttempts())
		}
	})
}

// TestTransientRefreshIsNoLogin: a throttled or failing refresh endpoint
// says nothing about the refresh token; a login would only add load.
func TestTransientRefreshIsNoLogin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault inslysim.Fault
		want  wantErr
	}{
		{"throttled", inslysim.Fault{Code: inslysim.CodeTooManyRequests},
			wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, inslysim.CodeTooManyRequests}},
		{"503", inslysim.Fault{Status: 503}, unavailable},
		{"garbage", inslysim.Fault{Garbage: true}, unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			c := f.newClient(t, f.passwordConfig())
			first, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatal(err)
			}
			tt.fault.Endpoint = inslysim.EndpointRefresh
			f.sim.SetFault(tt.fault)
			tok, err := c.Token(t.Context(), token.Request{Previous: first})
			checkErr(t, tok, err, tt.want, password, first.RefreshToken)
			if f.sim.LoginAttempts() != 1 || f.sim.RefreshAttempts() != 1 {
				t.Errorf("simulator login, refresh attempts: got %d, %d, want 1, 1", f.sim.LoginAttempts(), f.sim.RefreshAttempts())
			}
			// Once the endpoint recovers, the same refresh token works.
			f.sim.SetFault(inslysim.Fault{})
			if _, err := c.Token(t.Context(), token.Request{Previous: first}); err != nil || f.sim.Refreshes() != 1 || f.sim.LoginAttempts() != 1 {
				t.Errorf("retry: got %v, refreshes %d, login attempts %d, want a refresh and no login", err, f.sim.Refreshes(), f.sim.LoginAttempts())
			}
		})
	}
}

// TestFailingRefreshPastExpiryLogsIn: once the cached token has expired, a
// refresh that fails for any reason is followed by a login, so a refresh
// endpoint that keeps failing cannot leave the provider without a token.
func TestFailingRefreshPastExpiryLogsIn(t *testing.T) {
	t.Parallel()
	for name, fault := range map[string]inslysim.Fault{
		"503":              {Status: 503},
		"garbage":          {Garbage: true},
		"400 with no code": {Status: 400, Body: `{"message":"no such route"}`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			c := f.newClient(t, f.passwordConfig())
			first, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatal(err)
			}
			f.clock.Advance(first.Expiry.Sub(f.clock.Now()) + time.Second)
			fault.Endpoint = inslysim.EndpointRefresh
			f.sim.SetFault(fault)
			tok, err := c.Token(t.Context(), token.Request{Previous: first})
			if err != nil {
				t.Fatalf("past expiry, with the refresh failing: %v", err)
			}
			if !tok.Expiry.After(f.clock.Now()) || f.sim.RefreshAttempts() != 1 || f.sim.Logins() != 2 {
				t.Errorf("got expiry %v, refresh attempts %d, logins %d; want a fresh token from a second login after one refresh attempt",
					tok.Expiry, f.sim.RefreshAttempts(), f.sim.Logins())
			}
		})
	}
}

// TestRefusedRefreshTokenNotResent: when the fallback login fails
// transiently, the cache retries with the same Previous; the refused
// refresh token is not sent again.
func TestRefusedRefreshTokenNotResent(t *testing.T) {
	t.Parallel()
	f := startSim(t, inslysim.Options{})
	c := f.newClient(t, f.passwordConfig())
	first, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatal(err)
	}
	f.sim.RevokeRefreshTokens()
	f.sim.SetFault(inslysim.Fault{Endpoint: inslysim.EndpointLogin, Code: inslysim.CodeTooManyRequests, Times: 1})

	tok, err := c.Token(t.Context(), token.Request{Previous: first})
	checkErr(t, tok, err, wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, inslysim.CodeTooManyRequests}, password)
	if _, err := c.Token(t.Context(), token.Request{Previous: first}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if f.sim.RefreshAttempts() != 1 || f.sim.LoginAttempts() != 3 || f.sim.Logins() != 2 {
		t.Errorf("simulator refresh attempts, login attempts, logins: got %d, %d, %d, want 1, 3, 2",
			f.sim.RefreshAttempts(), f.sim.LoginAttempts(), f.sim.Logins())
	}
}

func TestClientCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		flat      bool
		scope     string
		wantScope string
	}{
		{"nested, default scope", false, "", "auth/" + tenant},
		{"flat, default scope", true, "", "auth/" + tenant},
		{"nested, listed scope", false, "ledger/read", "ledger/read"},
		{"flat, listed scope", true, "ledger/read", "ledger/read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{FlatClientAnswer: tt.flat, AccessTTL: 5 * time.Minute})
			c := f.newClient(t, f.clientConfig())

			tok, err := c.Token(t.Context(), token.Request{Scope: tt.scope})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			wantHeaders := map[string]string{"Authorization": "Bearer " + tok.AccessToken, "X-TENANT-ID": tenant, "Content-Type": "application/json; charset=UTF-8"}
			if !maps.Equal(tok.Headers, wantHeaders) {
				t.Errorf("Headers: got %q, want %q", tok.Headers, wantHeaders)
			}
			if !tok.Expiry.Equal(simStart.Add(5 * time.Minute)) {
				t.Errorf("Expiry: got %v, want %v", tok.Expiry, simStart.Add(5*time.Minute))
			}
			if tok.RefreshToken != "" {
				t.Error("RefreshToken: got one, want none (client credentials have no refresh)")
			}
			rec := f.last(t)
			if rec.path != inslysim.PathPrefix+"/token/client/"+tenant {
				t.Errorf("path: got %q, want the client endpoint", rec.path)
			}
			if got := slices.Sorted(maps.Keys(rec.body)); !slices.Equal(got, []string{"client_id", "client_secret", "scope"}) {
				t.Errorf("body members: got %q, want client_id, client_secret, scope", got)
			}
			if got := str(t, rec.body, "scope"); got != tt.wantScope {
				t.Errorf("scope: got %q, want %q", got, tt.wantScope)
			}
			if status, who := f.use(t, tok.Headers); status != http.StatusOK || who != clientID {
				t.Errorf("protected endpoint: got %d naming %q, want 200 naming %q", status, who, clientID)
			}
			if f.sim.ClientLogins() != 1 {
				t.Errorf("simulator client logins: got %d, want 1", f.sim.ClientLogins())
			}
			// A new token is a new login, even with a previous one.
			if _, err := c.Token(t.Context(), token.Request{Scope: tt.scope, Previous: tok}); err != nil || f.sim.ClientLogins() != 2 || f.sim.RefreshAttempts() != 0 {
				t.Errorf("second Token: got %v, client logins %d, refresh attempts %d, want a login", err, f.sim.ClientLogins(), f.sim.RefreshAttempts())
			}
		})
	}

	t.Run("scope the upstream does not grant", func(t *testing.T) {
		t.Parallel()
		f := startSim(t, inslysim.Options{})
		cfg := f.clientConfig()
		cfg.Scopes = []string{"ledger/write"}
		c := f.newClient(t, cfg)
		tok, err := c.Token(t.Context(), token.Request{Scope: "ledger/write"})
		// The caller's scope, not the credentials: no hold for the others.
		checkErr(t, tok, err, wantErr{token.KindDenied, "SCOPE_NOT_ALLOWED", inslysim.CodeNotAuthorized}, clientSecret)
		if _, err := c.Token(t.Context(), token.Request{}); err != nil {
			t.Errorf("default scope after: %v", err)
		}
	})
	t.Run("default scope the upstream does not grant", func(t *testing.T) {
		t.Parallel()
		f := startSim(t, inslysim.Options{})
		cfg := f.clientConfig()
		cfg.ClientID = "app-narrow"
		c := f.newClient(t, cfg)
		tok, err := c.Token(t.Context(), token.Request{})
		checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized}, clientSecret)
	})
}

func TestChallenge(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ user, challenge string }{
		{"carol@example.com", "NEW_PASSWORD_REQUIRED"},
		{"dave@example.com", "SOFTWARE_TOKEN_MFA"},
	} {
		t.Run(tt.challenge, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			cfg := f.passwordConfig()
			cfg.Username = tt.user
			tok, err := f.newClient(t, cfg).Token(t.Context(), token.Request{})
			e := checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonChallengeRequired, tt.challenge}, password)
			if !strings.Contains(e.Message, tt.challenge) {
				t.Errorf("Message: got %q, want it to name %s", e.Message, tt.challenge)
			}
			if f.sim.LoginAttempts() != 1 {
				t.Errorf("simulator login attempts: got %d, want 1", f.sim.LoginAttempts())
			}
		})
	}
}

// TestRejected covers the refusals the simulator makes from its accounts.
func TestRejected(t *testing.T) {
	t.Parallel()
	rejected := func(reason, code string) wantErr { return wantErr{token.KindRejected, reason, code} }
	tests := []struct {
		name string
		edit func(*insly.Config)
		want wantErr
	}{
		{"wrong password", func(c *insly.Config) { c.Password = secret.Literal("not-the-password") },
			rejected(token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized)},
		{"unknown user", func(c *insly.Config) { c.Username = "nobody@example.com" },
			rejected(token.ReasonCredentialsRejected, inslysim.CodeUserNotFound)},
		{"password reset required", func(c *insly.Config) { c.Username = "frank@example.com" },
			rejected(insly.ReasonPasswordResetRequired, inslysim.CodePasswordResetRequired)},
		{"user not confirmed", func(c *insly.Config) { c.Username = "erin@example.com" },
			rejected(token.ReasonAccountNotVerified, inslysim.CodeUserNotConfirmed)},
		{"unknown tenant", func(c *insly.Config) { c.Tenant = "other" },
			rejected(insly.ReasonLoginRequestRefused, inslysim.CodeUndefined)},
		{"wrong client secret", func(c *insly.Config) {
			*c = insly.Config{BaseURL: c.BaseURL, Tenant: tenant, Grant: insly.GrantClientCredentials, ClientID: clientID, ClientSecret: secret.Literal("nope")}
		}, rejected(token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized)},
		{"unknown client", func(c *insly.Config) {
			*c = insly.Config{BaseURL: c.BaseURL, Tenant: tenant, Grant: insly.GrantClientCredentials, ClientID: "nope", ClientSecret: secret.Literal(clientSecret)}
		}, rejected(token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			cfg := f.passwordConfig()
			tt.edit(&cfg)
			tok, err := f.newClient(t, cfg).Token(t.Context(), token.Request{})
			e := checkErr(t, tok, err, tt.want, password, clientSecret, "not-the-password")
			if e.Hold != 0 {
				t.Errorf("Hold: got %v, want 0 (the cache's backoff)", e.Hold)
			}
			if got := f.sim.LoginAttempts() + f.sim.ClientLoginAttempts(); got != 1 {
				t.Errorf("simulator attempts: got %d, want 1 (a rejection is never retried)", got)
			}
		})
	}
}

// TestUpstreamAnswers covers answers the simulator gives under a fault.
func TestUpstreamAnswers(t *testing.T) {
	t.Parallel()
	rejected := func(reason, code string) wantErr { return wantErr{token.KindRejected, reason, code} }
	transient := func(code string) wantErr {
		return wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, code}
	}
	access := "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6ImEifQ.c2lnbmF0dXJlLXNlY3JldA"
	okBody := `{"authentication_result":{"access_token":"` + access + `","expires_in":3600,"token_type":"Bearer"}}`
	tests := []struct {
		name  string
		fault inslysim.Fault
		want  wantErr
	}{
		{"throttled", inslysim.Fault{Code: inslysim.CodeTooManyRequests}, transient(inslysim.CodeTooManyRequests)},
		{"throttled with 429", inslysim.Fault{Code: inslysim.CodeTooManyRequests, Status: 429}, transient(inslysim.CodeTooManyRequests)},
		{"locked out", inslysim.Fault{Code: inslysim.CodeTooManyFailedAttempts}, rejected(token.ReasonAccountLocked, inslysim.CodeTooManyFailedAttempts)},
		{"undefined 500", inslysim.Fault{Code: inslysim.CodeUndefined}, transient(inslysim.CodeUndefined)},
		{"undefined 400", inslysim.Fault{Code: inslysim.CodeUndefined, Status: 400}, rejected(insly.ReasonLoginRequestRefused, inslysim.CodeUndefined)},
		{"undocumented code 400", inslysim.Fault{Code: "IDS10099", Status: 400}, rejected(insly.ReasonLoginRequestRefused, "IDS10099")},
		{"undocumented code 503", inslysim.Fault{Code: "IDS10099", Status: 503}, transient("IDS10099")},
		// The code decides, not the status.
		{"not authorized with 500", inslysim.Fault{Code: inslysim.CodeNotAuthorized, Status: 500}, rejected(token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized)},
		{"not authorized echoing the password", inslysim.Fault{Code: inslysim.CodeNotAuthorized, Message: "NotAuthorizedException: " + password},
			rejected(token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized)},
		{"code that is free text", inslysim.Fault{Code: "user " + password, Status: 400}, rejected(insly.ReasonLoginRequestRefused, "UNRECOGNISED")},
		{"400 not JSON", inslysim.Fault{Status: 400, Body: "Bad Request"}, unavailable},
		{"400 no errors", inslysim.Fault{Status: 400, Body: `{"errors":[]}`}, unavailable},
		{"401 no body", inslysim.Fault{Status: 401}, unavailable},
		{"502", inslysim.Fault{Status: 502, Body: "Bad Gateway"}, unavailable},
		{"503", inslysim.Fault{Status: 503}, unavailable},
		{"200 not JSON", inslysim.Fault{Garbage: true}, unavailable},
		{"200 empty object", inslysim.Fault{Status: 200, Body: `{}`}, unavailable},
		{"200 empty result", inslysim.Fault{Status: 200, Body: `{"authentication_result":{}}`}, unavailable},
		{"200 flat login answer", inslysim.Fault{Status: 200, Body: `{"access_token":"` + access + `","expires_in":3600}`}, unavailable},
		{"200 token_type mac", inslysim.Fault{Status: 200, Body: strings.Replace(okBody, "Bearer", "mac", 1)}, unavailable},
		{"200 expires_in negative", inslysim.Fault{Status: 200, Body: strings.Replace(okBody, "3600", "-1", 1)}, unavailable},
		{"200 expires_in a string", inslysim.Fault{Status: 200, Body: strings.Replace(okBody, "3600", `"3600"`, 1)}, unavailable},
		{"200 over 1 MiB", inslysim.Fault{Status: 200, Body: okBody + strings.Repeat(" ", upstream.MaxBody+1-len(okBody))}, unavailable},
		{"200 challenge with a bad name", inslysim.Fault{Status: 200, Body: jsonString(t, map[string]string{"challenge_name": "MFA " + password})},
			rejected(token.ReasonChallengeRequired, "UNRECOGNISED")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			f.sim.SetFault(tt.fault)
			tok, err := f.newClient(t, f.passwordConfig()).Token(t.Context(), token.Request{})
			e := checkErr(t, tok, err, tt.want, password, access, "c2lnbmF0dXJlLXNlY3JldA")
			wantHold := time.Duration(0)
			if tt.want.reason == token.ReasonAccountLocked {
				wantHold = insly.LockoutHold
			}
			if e.Hold != wantHold {
				t.Errorf("Hold: got %v, want %v", e.Hold, wantHold)
			}
			if got := f.sim.LoginAttempts(); got != 1 {
				t.Errorf("simulator login attempts: got %d, want 1 (retries are the cache's)", got)
			}
		})
	}
}

// TestExpiry: expires_in decides; without it the token's exp; without
// that, DefaultTokenTTL.
func TestExpiry(t *testing.T) {
	t.Parallel()
	exp := simStart.Add(42 * time.Minute)
	withExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"exp": exp.Unix(), "username": cogUser}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		result string
		want   time.Time
	}{
		{"expires_in", `{"access_token":"` + withExp + `","expires_in":600}`, simStart.Add(10 * time.Minute)},
		{"exp", `{"access_token":"` + withExp + `","token_type":"Bearer"}`, exp},
		{"neither", `{"access_token":"opaque","refresh_token":"r"}`, simStart.Add(insly.DefaultTokenTTL)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			f.sim.SetFault(inslysim.Fault{Status: 200, Body: `{"authentication_result":` + tt.result + `}`})
			tok, err := f.newClient(t, f.passwordConfig()).Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if !tok.Expiry.Equal(tt.want) {
				t.Errorf("Expiry: got %v, want %v", tok.Expiry, tt.want)
			}
		})
	}
}

func TestPasswordGrantTakesNoScope(t *testing.T) {
	t.Parallel()
	f := startSim(t, inslysim.Options{})
	tok, err := f.newClient(t, f.passwordConfig()).Token(t.Context(), token.Request{Scope: "auth/" + tenant})
	checkErr(t, tok, err, wantErr{token.KindInvalid, "INVALID_SCOPE", ""})
	if f.sim.LoginAttempts() != 0 {
		t.Errorf("simulator login attempts: got %d, want 0", f.sim.LoginAttempts())
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	cfg := insly.Config{BaseURL: srv.URL, Tenant: tenant, Grant: insly.GrantPassword, Username: email, Password: secret.Literal(password)}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tok, err := insly.New(cfg, &http.Client{}, time.Now).Token(t.Context(), token.Request{})
	if e := checkErr(t, tok, err, unavailable, password); e.Err == nil {
		t.Error("Err: got nil, want the transport error kept for the log")
	}
}

func TestHonoursDeadline(t *testing.T) {
	t.Parallel()
	f := startSim(t, inslysim.Options{})
	f.sim.SetFault(inslysim.Fault{Hang: true})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	tok, err := f.newClient(t, f.passwordConfig()).Token(ctx, token.Request{})
	checkErr(t, tok, err, unavailable, password)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error: got %v, want one wrapping context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Token returned after %v, want soon after the 100ms deadline", d)
	}
}

// TestRereadsSecretFiles: secrets are read at every login, so a rotated
// file takes effect, and a missing one stops the login before it is made.
func TestRereadsSecretFiles(t *testing.T) {
	t.Parallel()
	for _, grant := range []string{insly.GrantPassword, insly.GrantClientCredentials} {
		t.Run(grant, func(t *testing.T) {
			t.Parallel()
			f := startSim(t, inslysim.Options{})
			path := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(path, []byte("stale\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := f.passwordConfig()
			cfg.Password = yamlSecret(t, "{file: "+path+"}")
			right := password
			if grant == insly.GrantClientCredentials {
				cfg = f.clientConfig()
				cfg.ClientSecret = yamlSecret(t, "{file: "+path+"}")
				right = clientSecret
			}
			c := f.newClient(t, cfg)
			tok, err := c.Token(t.Context(), token.Request{})
			checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonCredentialsRejected, inslysim.CodeNotAuthorized}, "stale")

			if err := os.WriteFile(path, []byte(right+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			tok, err = c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("Token after the file changed: %v", err)
			}
			if status, _ := f.use(t, tok.Headers); status != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", status)
			}

			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			before := len(f.requests())
			tok, err = c.Token(t.Context(), token.Request{})
			checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonSecretUnreadable, ""}, right)
			if got := len(f.requests()); got != before {
				t.Errorf("requests: got %d, want %d (no login without the secret)", got, before)
			}
		})
	}
}

// fieldPaths returns the sorted paths of the FieldErrors joined in err.
func fieldPaths(t *testing.T, err error) []string {
	t.Helper()
	var paths []string
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *config.FieldError
		if !errors.As(err, &fe) {
			t.Errorf("Validate: got %T %q, want only *config.FieldError", err, err)
			return
		}
		paths = append(paths, fe.Path)
	}
	if err != nil {
		walk(err)
	}
	slices.Sort(paths)
	return paths
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	const unsetEnv = "TOKENVEND_INSLY_TEST_SURELY_UNSET_SECRET"
	if _, ok := os.LookupEnv(unsetEnv); ok {
		t.Fatalf("%s is set; the test needs it unset", unsetEnv)
	}
	pw := func() insly.Config {
		return insly.Config{BaseURL: "https://acme.app.insly.com/api/v1/identifier", Tenant: tenant,
			Grant: insly.GrantPassword, Username: email, Password: secret.Literal(password)}
	}
	cc := func() insly.Config {
		return insly.Config{BaseURL: "https://acme.app.insly.com/api/v1/identifier", Tenant: tenant,
			Grant: insly.GrantClientCredentials, ClientID: clientID, ClientSecret: secret.Literal(clientSecret)}
	}
	tests := []struct {
		name      string
		cfg       func() insly.Config
		edit      func(*insly.Config)
		wantPaths []string
		wantInMsg string
	}{
		{"password valid", pw, func(c *insly.Config) { c.MetaData = map[string]string{"a": "b"} }, nil, ""},
		{"client valid", cc, func(c *insly.Config) { c.Scopes = []string{"ledger/read", "auth/" + tenant} }, nil, ""},
		{"base_url missing", pw, func(c *insly.Config) { c.BaseURL = "" }, []string{"base_url"}, ""},
		{"base_url with credentials", pw, func(c *insly.Config) { c.BaseURL = "https://u:url-Pa55@acme.example.com" }, []string{"base_url"}, ""},
		{"tenant missing", pw, func(c *insly.Config) { c.Tenant = "" }, []string{"tenant"}, ""},
		{"tenant with a slash", pw, func(c *insly.Config) { c.Tenant = "acme/../x" }, []string{"tenant"}, ""},
		{"grant missing", pw, func(c *insly.Config) { c.Grant = "" }, []string{"grant"}, "client_credentials"},
		{"grant unknown", pw, func(c *insly.Config) { c.Grant = "implicit" }, []string{"grant"}, "password"},
		{"username missing", pw, func(c *insly.Config) { c.Username = "" }, []string{"username"}, ""},
		{"password missing", pw, func(c *insly.Config) { c.Password = secret.Secret{} }, []string{"password"}, ""},
		{"password env unset", pw, func(c *insly.Config) { c.Password = yamlSecret(t, "{env: "+unsetEnv+"}") }, []string{"password"}, unsetEnv},
		{"password grant with client keys", pw, func(c *insly.Config) {
			c.ClientID, c.ClientSecret, c.Scopes = clientID, secret.Literal(clientSecret), []string{"x"}
		}, []string{"client_id", "client_secret", "scopes"}, "belongs to grant client_credentials"},
		{"meta_data empty key", pw, func(c *insly.Config) { c.MetaData = map[string]string{"": "x"} }, []string{"meta_data"}, ""},
		{"client_id missing", cc, func(c *insly.Config) { c.ClientID = "" }, []string{"client_id"}, ""},
		{"client_secret missing", cc, func(c *insly.Config) { c.ClientSecret = secret.Secret{} }, []string{"client_secret"}, ""},
		{"client grant with password keys", cc, func(c *insly.Config) {
			c.Username, c.Password, c.MetaData = email, secret.Literal(password), map[string]string{"a": "b"}
		}, []string{"meta_data", "password", "username"}, "belongs to grant password"},
		{"scope with a space", cc, func(c *insly.Config) { c.Scopes = []string{"a b"} }, []string{"scopes[0]"}, ""},
		{"scope empty", cc, func(c *insly.Config) { c.Scopes = []string{"ok", ""} }, []string{"scopes[1]"}, ""},
		{"scope twice", cc, func(c *insly.Config) { c.Scopes = []string{"x", "x"} }, []string{"scopes[1]"}, "twice"},
		{"everything bad", func() insly.Config { return insly.Config{BaseURL: "relative"} }, func(*insly.Config) {},
			[]string{"base_url", "grant", "tenant"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg()
			tt.edit(&cfg)
			err := cfg.Validate()
			if got := fieldPaths(t, err); !slices.Equal(got, tt.wantPaths) {
				t.Errorf("Validate fields: got %q, want %q (error: %v)", got, tt.wantPaths, err)
			}
			if err != nil {
				if tt.wantInMsg != "" && !strings.Contains(err.Error(), tt.wantInMsg) {
					t.Errorf("Validate: got %q, want it to mention %q", err, tt.wantInMsg)
				}
				checkNoSecret(t, err, password, clientSecret, "url-Pa55")
			}
		})
	}
}

func TestDefaultScope(t *testing.T) {
	t.Parallel()
	for grant, want := range map[string]string{insly.GrantPassword: "", insly.GrantClientCredentials: "auth/" + tenant} {
		c := insly.Config{Tenant: tenant, Grant: grant}
		if got := c.DefaultScope(); got != want {
			t.Errorf("DefaultScope for %s: got %q, want %q", grant, got, want)
		}
	}
}
