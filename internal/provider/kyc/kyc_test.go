package kyc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/kyc"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

const (
	email = "ops@example.com"
	// password needs form encoding: a client that does not escape it
	// sends a different password.
	password = "hunter2&pa55=word+ %kyc"
)

// simStart is the simulator's clock reading in most tests. Its fraction of a
// second checks that exp is truncated to whole seconds, as PyJWT writes it.
var simStart = time.Date(2031, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// users are the accounts every simulator knows.
func users() []kycsim.User {
	return []kycsim.User{
		{Email: email, Password: password},
		{Email: "inactive@example.com", Password: password, Inactive: true},
		{Email: "unverified@example.com", Password: password, Unverified: true},
		{Email: "Mixed.Case@Example.com", Password: password},
	}
}

// startSim serves a simulator built from o (with users() when o has none)
// on a loopback listener, and releases any hanging login before closing it.
func startSim(t *testing.T, o kycsim.Options) (*kycsim.Server, *httptest.Server) {
	t.Helper()
	if o.Users == nil {
		o.Users = users()
	}
	if o.Now == nil {
		o.Now = fixed(simStart)
	}
	sim := kycsim.New(o)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { sim.SetFault(kycsim.Fault{}) }) // runs before Close
	return sim, srv
}

// newClient validates cfg (filling its defaults) and builds a Client on it.
func newClient(t *testing.T, cfg kyc.Config, hc *http.Client, now func() time.Time) *kyc.Client {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return kyc.New(cfg, hc, now)
}

// clientFor is a client logging in to srv as email with password.
func clientFor(t *testing.T, srv *httptest.Server, now func() time.Time) *kyc.Client {
	t.Helper()
	return newClient(t, kyc.Config{
		BaseURL:  srv.URL,
		Username: email,
		Password: secret.Literal(password),
	}, srv.Client(), now)
}

// yamlSecret builds a Secret the way a config file does ({env: ...},
// {file: ...}).
func yamlSecret(t *testing.T, src string) secret.Secret {
	t.Helper()
	var s secret.Secret
	if err := yaml.Unmarshal([]byte(src), &s); err != nil {
		t.Fatalf("yaml.Unmarshal(%q): %v", src, err)
	}
	return s
}

// useToken calls the simulator's protected endpoint with tok's headers
// copied onto the request, and returns the status and the e-mail it names.
func useToken(t *testing.T, srv *httptest.Server, tok *token.Token) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+kycsim.ResourcePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range tok.Headers {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", kycsim.ResourcePath, err)
	}
	defer resp.Body.Close()
	var who struct {
		Email string `json:"email"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&who); err != nil {
			t.Fatalf("decoding %s answer: %v", kycsim.ResourcePath, err)
		}
	}
	return resp.StatusCode, who.Email
}

// testJWT is an HS256 JWT with the payload fastapi-users writes, signed
// with a key of the test's own: the client reads it without verifying.
func testJWT(t *testing.T, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "6f1d2c1e-8a53-4c2e-9d1b-0b8f5e7a9c31",
		"aud": []string{"fastapi-users:auth"},
		"exp": exp.Unix(),
	}).SignedString([]byte("a key the client never sees"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func kindName(k token.Kind) string {
	switch k {
	case token.KindInternal:
		return "KindInternal"
	case token.KindInvalid:
		return "KindInvalid"
	case token.KindNotFound:
		return "KindNotFound"
	case token.KindDenied:
		return "KindDenied"
	case token.KindRejected:
		return "KindRejected"
	case token.KindUnavailable:
		return "KindUnavailable"
	}
	return "Kind(?)"
}

// wantErr is what a failed login must report.
type wantErr struct {
	kind     token.Kind
	reason   string
	upstream string
}

var unavailable = wantErr{kind: token.KindUnavailable, reason: token.ReasonUpstreamUnavailable}

// checkErr asserts that err is a *token.Error as w says and that neither its
// Error() nor its Message holds any of secrets.
func checkErr(t *testing.T, tok *token.Token, err error, w wantErr, secrets ...string) *token.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("Token: got a token (%+v) and no error, want %s %s", tok.Expiry, kindName(w.kind), w.reason)
	}
	if tok != nil {
		t.Errorf("Token: got a token with the error %v, want nil", err)
	}
	var e *token.Error
	if !errors.As(err, &e) {
		t.Fatalf("Token: got error %T (%v), want *token.Error", err, err)
	}
	if e.Kind != w.kind {
		t.Errorf("Kind: got %s, want %s (error: %v)", kindName(e.Kind), kindName(w.kind), err)
	}
	if e.Reason != w.reason {
		t.Errorf("Reason: got %q, want %q", e.Reason, w.reason)
	}
	if e.Upstream != w.upstream {
		t.Errorf("Upstream: got %q, want %q", e.Upstream, w.upstream)
	}
	if e.Message == "" {
		t.Errorf("Message: got empty, want a message a caller can act on")
	}
	checkNoSecret(t, err, secrets...)
	return e
}

// checkNoSecret asserts that neither err.Error() nor its Message holds any
// of secrets.
func checkNoSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	texts := map[string]string{"Error()": err.Error()}
	var e *token.Error
	if errors.As(err, &e) {
		texts["Message"] = e.Message
	}
	for name, text := range texts {
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("%s = %q: holds the secret %q, want no secret", name, text, s)
			}
		}
	}
}

func TestTokenLogsIn(t *testing.T) {
	t.Parallel()
	const lifetime = 17 * time.Minute
	simClock := clocktest.New(simStart)
	sim, srv := startSim(t, kycsim.Options{Now: simClock.Now, Lifetime: lifetime})
	// The client's clock is ahead of the simulator's: IssuedAt is the
	// client's reading, Expiry the token's own exp.
	clientNow := simStart.Add(42 * time.Second)
	c := clientFor(t, srv, fixed(clientNow))

	tok, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if tok.AccessToken == "" {
		t.Fatal("AccessToken: got empty, want the JWT")
	}
	if tok.Type != "Bearer" {
		t.Errorf("Type: got %q, want %q", tok.Type, "Bearer")
	}
	wantHeaders := map[string]string{"Authorization": "Bearer " + tok.AccessToken}
	if !maps.Equal(tok.Headers, wantHeaders) {
		t.Errorf("Headers: got %q, want %q", tok.Headers, wantHeaders)
	}
	if !tok.IssuedAt.Equal(clientNow) {
		t.Errorf("IssuedAt: got %v, want the client's clock %v", tok.IssuedAt, clientNow)
	}
	wantExpiry := time.Unix(simStart.Add(lifetime).Unix(), 0)
	if !tok.Expiry.Equal(wantExpiry) {
		t.Errorf("Expiry: got %v, want the JWT's exp %v", tok.Expiry, wantExpiry)
	}
	if tok.RefreshToken != "" {
		t.Errorf("RefreshToken: got %q, want empty (kyc has no refresh)", tok.RefreshToken)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("simulator logins: got %d, want 1", got)
	}

	// The headers, copied onto a request, are accepted until Expiry and
	// not at it: Expiry is exactly when the upstream stops taking them.
	if status, who := useToken(t, srv, tok); status != http.StatusOK || who != email {
		t.Errorf("protected endpoint: got %d naming %q, want 200 naming %q", status, who, email)
	}
	simClock.Set(tok.Expiry.Add(-time.Second))
	if status, _ := useToken(t, srv, tok); status != http.StatusOK {
		t.Errorf("protected endpoint a second before Expiry: got %d, want 200", status)
	}
	simClock.Set(tok.Expiry)
	if status, _ := useToken(t, srv, tok); status != http.StatusUnauthorized {
		t.Errorf("protected endpoint at Expiry: got %d, want 401", status)
	}
	if got := sim.ResourceCalls(); got != 2 {
		t.Errorf("simulator resource calls accepted: got %d, want 2", got)
	}
}

func TestTokenEachCallLogsIn(t *testing.T) {
	t.Parallel()
	simClock := clocktest.New(simStart)
	sim, srv := startSim(t, kycsim.Options{Now: simClock.Now})
	c := clientFor(t, srv, fixed(simStart))

	first, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatalf("first Token: %v", err)
	}
	simClock.Set(simStart.Add(time.Minute))
	second, err := c.Token(t.Context(), token.Request{Previous: first})
	if err != nil {
		t.Fatalf("second Token: %v", err)
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("simulator logins: got %d, want 2 (no refresh: a new token is a new login)", got)
	}
	if second.AccessToken == first.AccessToken {
		t.Errorf("second AccessToken: got the first one again, want a new login's token")
	}
	if want := time.Unix(simStart.Add(time.Minute+kycsim.DefaultLifetime).Unix(), 0); !second.Expiry.Equal(want) {
		t.Errorf("second Expiry: got %v, want %v", second.Expiry, want)
	}
}

func TestTokenWithoutExp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{"default token_ttl", 0, time.Hour},
		{"configured token_ttl", 7 * time.Minute, 7 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, srv := startSim(t, kycsim.Options{OmitExp: true, Lifetime: 3 * time.Minute})
			clientNow := simStart.Add(-5 * time.Second)
			c := newClient(t, kyc.Config{
				BaseURL:  srv.URL,
				Username: email,
				Password: secret.Literal(password),
				TokenTTL: tt.ttl,
			}, srv.Client(), fixed(clientNow))

			tok, err := c.Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if want := clientNow.Add(tt.want); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry: got %v, want IssuedAt+%v = %v", tok.Expiry, tt.want, want)
			}
			if !tok.IssuedAt.Equal(clientNow) {
				t.Errorf("IssuedAt: got %v, want %v", tok.IssuedAt, clientNow)
			}
			if status, _ := useToken(t, srv, tok); status != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", status)
			}
		})
	}
}

// loginRecord is what the client sent to the login endpoint.
type loginRecord struct {
	method      string
	path        string
	contentType string
	form        url.Values
}

// recorder passes every request on to the simulator after recording the
// login requests.
func recorder(sim *kycsim.Server, got chan<- loginRecord) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == kycsim.LoginPath {
			body, _ := io.ReadAll(r.Body)
			form, _ := url.ParseQuery(string(body))
			got <- loginRecord{r.Method, r.URL.Path, r.Header.Get("Content-Type"), form}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		sim.ServeHTTP(w, r)
	})
}

func TestTokenSendsForm(t *testing.T) {
	t.Parallel()
	sim := kycsim.New(kycsim.Options{Users: users(), Now: fixed(simStart)})
	got := make(chan loginRecord, 1)
	srv := httptest.NewServer(recorder(sim, got))
	t.Cleanup(srv.Close)

	// The simulator refuses a JSON login with 422, as FastAPI does: the
	// client's login being accepted below shows it sends a form.
	jsonBody, _ := json.Marshal(map[string]string{"username": email, "password": password})
	resp, err := srv.Client().Post(srv.URL+kycsim.LoginPath, "application/json", bytes.NewReader(jsonBody))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-got
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("JSON login: got %d, want 422 (the simulator must refuse it)", resp.StatusCode)
	}

	// The configured username differs in case from the account's e-mail:
	// the client sends it as configured, the upstream matches it.
	const username = "MIXED.case@example.COM"
	c := newClient(t, kyc.Config{
		BaseURL:  srv.URL + "/", // a trailing slash must not double up
		Username: username,
		Password: secret.Literal(password),
	}, srv.Client(), fixed(simStart))
	tok, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	rec := <-got
	if rec.method != http.MethodPost || rec.path != kycsim.LoginPath {
		t.Errorf("login request: got %s %s, want POST %s", rec.method, rec.path, kycsim.LoginPath)
	}
	if rec.contentType != "application/x-www-form-urlencoded" {
		t.Errorf("Content-Type: got %q, want application/x-www-form-urlencoded", rec.contentType)
	}
	wantForm := url.Values{"username": {username}, "password": {password}, "grant_type": {"password"}}
	if !maps.EqualFunc(rec.form, wantForm, slices.Equal) {
		t.Errorf("form: got %q, want %q", rec.form, wantForm)
	}
	if status, who := useToken(t, srv, tok); status != http.StatusOK || who != "Mixed.Case@Example.com" {
		t.Errorf("protected endpoint: got %d naming %q, want 200 naming %q", status, who, "Mixed.Case@Example.com")
	}
}

// TestTokenRejected covers the refusals the simulator produces itself from
// its accounts.
func TestTokenRejected(t *testing.T) {
	t.Parallel()
	badCredentials := wantErr{token.KindRejected, token.ReasonCredentialsRejected, "LOGIN_BAD_CREDENTIALS"}
	tests := []struct {
		name     string
		username string
		password string
		want     wantErr
	}{
		{"wrong password", email, "not-the-password", badCredentials},
		{"unknown user", "nobody@example.com", password, badCredentials},
		{"inactive user", "inactive@example.com", password, badCredentials},
		{"unverified user", "unverified@example.com", password,
			wantErr{token.KindRejected, token.ReasonAccountNotVerified, "LOGIN_USER_NOT_VERIFIED"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, srv := startSim(t, kycsim.Options{})
			c := newClient(t, kyc.Config{
				BaseURL:  srv.URL,
				Username: tt.username,
				Password: secret.Literal(tt.password),
			}, srv.Client(), fixed(simStart))

			tok, err := c.Token(t.Context(), token.Request{})
			checkErr(t, tok, err, tt.want, tt.password, password)
			if got := sim.LoginAttempts(); got != 1 {
				t.Errorf("simulator login attempts: got %d, want 1 (a rejection is never retried)", got)
			}
		})
	}
}

// TestTokenUpstreamAnswers covers answers the simulator gives under a fault.
func TestTokenUpstreamAnswers(t *testing.T) {
	t.Parallel()
	exp := simStart.Add(time.Hour)
	jwtToken := testJWT(t, exp)
	signature := jwtToken[strings.LastIndex(jwtToken, ".")+1:]
	okBody := `{"access_token":"` + jwtToken + `","token_type":"bearer"}`
	rejected := func(reason, up string) wantErr { return wantErr{token.KindRejected, reason, up} }
	tests := []struct {
		name  string
		fault kycsim.Fault
		want  wantErr
	}{
		{"422", kycsim.Fault{Status: 422, Body: `{"detail":[{"type":"missing","loc":["body","username"],"msg":"Field required","input":null}]}`},
			rejected("LOGIN_REQUEST_REFUSED", "422")},
		{"401", kycsim.Fault{Status: 401, Body: `{"detail":"Unauthorized"}`},
			rejected(token.ReasonCredentialsRejected, "401")},
		{"403", kycsim.Fault{Status: 403, Body: `{"detail":"Forbidden"}`},
			rejected(token.ReasonCredentialsRejected, "403")},
		{"400 unknown detail", kycsim.Fault{Status: 400, Body: `{"detail":"LOGIN_SOMETHING_NEW"}`},
			rejected(token.ReasonCredentialsRejected, "LOGIN_SOMETHING_NEW")},
		{"400 without detail", kycsim.Fault{Status: 400, Body: `{}`}, unavailable},
		{"400 not JSON", kycsim.Fault{Status: 400, Body: "Bad Request"}, unavailable},
		{"500", kycsim.Fault{Status: 500, Body: `{"detail":"Internal Server Error"}`}, unavailable},
		{"502", kycsim.Fault{Status: 502, Body: "Bad Gateway"}, unavailable},
		{"503", kycsim.Fault{Status: 503, Body: "Service Unavailable"}, unavailable},
		{"429", kycsim.Fault{Status: 429, Body: `{"detail":"Too Many Requests"}`}, unavailable},
		{"200 not JSON", kycsim.Fault{Garbage: true}, unavailable},
		{"200 without access_token", kycsim.Fault{Status: 200, Body: `{"token_type":"bearer"}`}, unavailable},
		{"200 empty access_token", kycsim.Fault{Status: 200, Body: `{"access_token":"","token_type":"bearer"}`}, unavailable},
		{"200 access_token not a JWT", kycsim.Fault{Status: 200, Body: `{"access_token":"opaque-` + signature + `","token_type":"bearer"}`}, unavailable},
		{"200 token_type not bearer", kycsim.Fault{Status: 200, Body: `{"access_token":"` + jwtToken + `","token_type":"mac"}`}, unavailable},
		{"200 without token_type", kycsim.Fault{Status: 200, Body: `{"access_token":"` + jwtToken + `"}`}, unavailable},
		{"200 over 1 MiB", kycsim.Fault{Status: 200, Body: okBody + strings.Repeat(" ", upstream.MaxBody+1-len(okBody))}, unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, srv := startSim(t, kycsim.Options{})
			sim.SetFault(tt.fault)
			c := clientFor(t, srv, fixed(simStart))

			tok, err := c.Token(t.Context(), token.Request{})
			checkErr(t, tok, err, tt.want, password, jwtToken, signature)
			if got := sim.LoginAttempts(); got != 1 {
				t.Errorf("simulator login attempts: got %d, want 1 (retries are the cache's)", got)
			}
		})
	}
}

// TestTokenBodyAtLimit checks the other side of the 1 MiB bound: an answer
// of exactly upstream.MaxBody bytes is read whole.
func TestTokenBodyAtLimit(t *testing.T) {
	t.Parallel()
	exp := simStart.Add(25 * time.Minute)
	jwtToken := testJWT(t, exp)
	body := `{"access_token":"` + jwtToken + `","token_type":"bearer"}`
	body += strings.Repeat(" ", upstream.MaxBody-len(body))
	sim, srv := startSim(t, kycsim.Options{})
	sim.SetFault(kycsim.Fault{Status: 200, Body: body})
	c := clientFor(t, srv, fixed(simStart))

	tok, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatalf("Token with a %d-byte answer: %v", len(body), err)
	}
	if tok.AccessToken != jwtToken {
		t.Errorf("AccessToken: got %.30q..., want the answer's JWT", tok.AccessToken)
	}
	if want := time.Unix(exp.Unix(), 0); !tok.Expiry.Equal(want) {
		t.Errorf("Expiry: got %v, want %v", tok.Expiry, want)
	}
}

// TestTokenUpstreamCodeIsValidUTF8 checks that an unexpected 400 detail
// that is not code-shaped is not passed on: Upstream goes into the
// ErrorInfo metadata of the caller's status, where free text could leak an
// echo of the request, and protobuf refuses to marshal a string that is
// not UTF-8 (a byte-wise cut once dropped the whole ErrorInfo).
func TestTokenUpstreamCodeIsValidUTF8(t *testing.T) {
	t.Parallel()
	detail := "K" + strings.Repeat("ü", 60) // 2-byte runes after one 1-byte one
	body, _ := json.Marshal(map[string]string{"detail": detail})
	sim, srv := startSim(t, kycsim.Options{})
	sim.SetFault(kycsim.Fault{Status: 400, Body: string(body)})
	c := clientFor(t, srv, fixed(simStart))

	_, err := c.Token(t.Context(), token.Request{})
	var e *token.Error
	if !errors.As(err, &e) {
		t.Fatalf("Token: got error %v, want *token.Error", err)
	}
	if e.Kind != token.KindRejected {
		t.Errorf("Kind: got %s, want KindRejected", kindName(e.Kind))
	}
	if e.Upstream != "UNRECOGNISED" {
		t.Errorf("Upstream: got %q, want UNRECOGNISED for free text", e.Upstream)
	}
	if !utf8.ValidString(e.Upstream) {
		t.Errorf("Upstream: got %q, which is not valid UTF-8; want the detail cut at a rune boundary", e.Upstream)
	}
}

func TestTokenUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens on its address any more
	c := newClient(t, kyc.Config{
		BaseURL:  srv.URL,
		Username: email,
		Password: secret.Literal(password),
	}, &http.Client{}, fixed(simStart))

	tok, err := c.Token(t.Context(), token.Request{})
	e := checkErr(t, tok, err, unavailable, password)
	if e.Err == nil {
		t.Errorf("Err: got nil, want the transport error kept for the log")
	}
}

func TestTokenHonoursContext(t *testing.T) {
	t.Parallel()
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		sim, srv := startSim(t, kycsim.Options{})
		sim.SetFault(kycsim.Fault{Hang: true})
		c := clientFor(t, srv, fixed(simStart))
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()

		start := time.Now()
		tok, err := c.Token(ctx, token.Request{})
		elapsed := time.Since(start)
		checkErr(t, tok, err, unavailable, password)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error: got %v, want one wrapping context.DeadlineExceeded", err)
		}
		if elapsed > 5*time.Second {
			t.Errorf("Token returned after %v, want soon after the 100ms deadline", elapsed)
		}
		if got := sim.LoginAttempts(); got != 1 {
			t.Errorf("simulator login attempts: got %d, want 1", got)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		sim, srv := startSim(t, kycsim.Options{})
		sim.SetFault(kycsim.Fault{Hang: true})
		c := clientFor(t, srv, fixed(simStart))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()

		type result struct {
			tok *token.Token
			err error
		}
		done := make(chan result, 1)
		go func() {
			tok, err := c.Token(ctx, token.Request{})
			done <- result{tok, err}
		}()
		// Cancel only once the login is in flight at the upstream.
		for deadline := time.Now().Add(5 * time.Second); sim.LoginAttempts() == 0; {
			if time.Now().After(deadline) {
				t.Fatal("the login never reached the simulator")
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		select {
		case r := <-done:
			checkErr(t, r.tok, r.err, unavailable, password)
			if !errors.Is(r.err, context.Canceled) {
				t.Errorf("error: got %v, want one wrapping context.Canceled", r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Token did not return within 5s of its context being cancelled")
		}
	})
}

func TestTokenRereadsPasswordFile(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t, kycsim.Options{})
	path := filepath.Join(t.TempDir(), "kyc-password")
	if err := os.WriteFile(path, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, kyc.Config{
		BaseURL:  srv.URL,
		Username: email,
		Password: yamlSecret(t, "{file: "+path+"}"),
	}, srv.Client(), fixed(simStart))

	if _, err := c.Token(t.Context(), token.Request{}); err != nil {
		t.Fatalf("first Token: %v", err)
	}

	// The upstream's password rotates before the file does: the old one is
	// refused, which shows the simulator checks it.
	const rotated = "rotated-Pa55word"
	sim.SetPassword(email, rotated)
	tok, err := c.Token(t.Context(), token.Request{})
	checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonCredentialsRejected, "LOGIN_BAD_CREDENTIALS"}, password, rotated)

	// Then the file: the next login reads it again and succeeds.
	if err := os.WriteFile(path, []byte(rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err = c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatalf("Token after the file changed: %v", err)
	}
	if status, _ := useToken(t, srv, tok); status != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", status)
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("simulator logins: got %d, want 2", got)
	}

	// A file that has gone is reported without a login attempt.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	attempts := sim.LoginAttempts()
	tok, err = c.Token(t.Context(), token.Request{})
	checkErr(t, tok, err, wantErr{token.KindRejected, token.ReasonSecretUnreadable, ""}, password, rotated)
	if got := sim.LoginAttempts(); got != attempts {
		t.Errorf("simulator login attempts: got %d, want %d (no login without a password)", got, attempts)
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
	const unsetEnv = "TOKENVEND_KYC_TEST_SURELY_UNSET_PASSWORD"
	if _, ok := os.LookupEnv(unsetEnv); ok {
		t.Fatalf("%s is set in the environment; the test needs it unset", unsetEnv)
	}
	envPassword := yamlSecret(t, "{env: "+unsetEnv+"}")
	missingFile := yamlSecret(t, "{file: "+filepath.Join(t.TempDir(), "absent")+"}")
	valid := func() kyc.Config {
		return kyc.Config{
			BaseURL:  "https://kyc.example.com/api",
			Username: email,
			Password: secret.Literal(password),
		}
	}
	tests := []struct {
		name      string
		edit      func(*kyc.Config)
		wantPaths []string
		wantInMsg string // a word the message must hold
		wantTTL   time.Duration
	}{
		{name: "valid", edit: func(*kyc.Config) {}, wantTTL: time.Hour},
		{name: "token_ttl kept", edit: func(c *kyc.Config) { c.TokenTTL = 5 * time.Minute }, wantTTL: 5 * time.Minute},
		{name: "base_url missing", edit: func(c *kyc.Config) { c.BaseURL = "" }, wantPaths: []string{"base_url"}},
		{name: "base_url relative", edit: func(c *kyc.Config) { c.BaseURL = "/api" }, wantPaths: []string{"base_url"}},
		{name: "base_url without scheme", edit: func(c *kyc.Config) { c.BaseURL = "kyc.example.com" }, wantPaths: []string{"base_url"}},
		{name: "base_url not http", edit: func(c *kyc.Config) { c.BaseURL = "ftp://kyc.example.com" }, wantPaths: []string{"base_url"}},
		{name: "base_url with user info", edit: func(c *kyc.Config) { c.BaseURL = "https://ops:" + url.PathEscape("url-Pa55") + "@kyc.example.com" },
			wantPaths: []string{"base_url"}, wantInMsg: "credentials"},
		{name: "username missing", edit: func(c *kyc.Config) { c.Username = "" }, wantPaths: []string{"username"}},
		{name: "password not set", edit: func(c *kyc.Config) { c.Password = secret.Secret{} }, wantPaths: []string{"password"}},
		{name: "password empty", edit: func(c *kyc.Config) { c.Password = secret.Literal("") }, wantPaths: []string{"password"}},
		{name: "password env unset", edit: func(c *kyc.Config) { c.Password = envPassword },
			wantPaths: []string{"password"}, wantInMsg: unsetEnv},
		{name: "password file missing", edit: func(c *kyc.Config) { c.Password = missingFile },
			wantPaths: []string{"password"}},
		{name: "token_ttl negative", edit: func(c *kyc.Config) { c.TokenTTL = -time.Minute }, wantPaths: []string{"token_ttl"}},
		{name: "every field bad", edit: func(c *kyc.Config) { *c = kyc.Config{BaseURL: "relative", TokenTTL: -1} },
			wantPaths: []string{"base_url", "password", "token_ttl", "username"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid()
			tt.edit(&cfg)
			err := cfg.Validate()
			if got := fieldPaths(t, err); !slices.Equal(got, tt.wantPaths) {
				t.Errorf("Validate fields: got %q, want %q (error: %v)", got, tt.wantPaths, err)
			}
			if err != nil {
				if tt.wantInMsg != "" && !strings.Contains(err.Error(), tt.wantInMsg) {
					t.Errorf("Validate: got %q, want it to mention %q", err, tt.wantInMsg)
				}
				checkNoSecret(t, err, password, "url-Pa55")
			}
			if tt.wantTTL != 0 && cfg.TokenTTL != tt.wantTTL {
				t.Errorf("TokenTTL after Validate: got %v, want %v", cfg.TokenTTL, tt.wantTTL)
			}
		})
	}
}
