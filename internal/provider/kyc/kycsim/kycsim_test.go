package kycsim

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

const (
	testEmail    = "ops@example.com"
	testPassword = "s3cret p@ss+word&=" // needs form encoding
)

var testSecret = []byte("test-secret-0123456789abcdef0123")

func newFakeClock() *clocktest.Clock {
	return clocktest.New(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
}

// defaultUsers are the accounts most tests use.
func defaultUsers() []User {
	return []User{
		{Email: testEmail, Password: testPassword},
		{Email: "Mixed.Case@Example.com", Password: "pw2"},
		{Email: "unverified@example.com", Password: "pw3", Unverified: true},
		{Email: "inactive@example.com", Password: "pw4", Inactive: true},
		{Email: "both@example.com", Password: "pw5", Inactive: true, Unverified: true},
	}
}

// start serves a simulator built from o (with defaultUsers and testSecret
// when o leaves them empty) on a loopback listener.
func start(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	if o.Users == nil {
		o.Users = defaultUsers()
	}
	if o.Secret == nil {
		o.Secret = testSecret
	}
	sim := New(o)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	return sim, ts.URL
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	r, err := send(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	return r
}

// send is do for goroutines other than the test's, which must not call
// t.Fatal.
func send(req *http.Request) (response, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{resp.StatusCode, resp.Header, string(b)}, nil
}

// post sends body to base+path with the given Content-Type ("" for none).
func post(t *testing.T, base, path, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

func loginForm(username, password string) string {
	return url.Values{"username": {username}, "password": {password}}.Encode()
}

// login logs in and returns the access token, failing the test otherwise.
func login(t *testing.T, base, username, password string) string {
	t.Helper()
	r := post(t, base, LoginPath, "application/x-www-form-urlencoded", loginForm(username, password))
	if r.status != http.StatusOK {
		t.Fatalf("login status: got %d, want 200 (body %s)", r.status, r.body)
	}
	var body struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil {
		t.Fatalf("login body %q: %v", r.body, err)
	}
	return body.AccessToken
}

// call sends a request with this Authorization header ("" for none).
func call(t *testing.T, method, base, path, authorization string) response {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return do(t, req)
}

// payload decodes a JWT's payload without checking anything, independently
// of the simulator's own code.
func payload(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("payload encoding: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("payload %s: %v", b, err)
	}
	return m
}

// forge builds an HS256-style JWT by hand from raw header and payload JSON.
func forge(secret []byte, header, payload string) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

const hs256Header = `{"alg":"HS256","typ":"JWT"}`

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestLoginIssuesFastAPIUsersToken(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	clock.Set(clock.Now().Add(750 * time.Millisecond)) // exp must drop the fraction
	sim, base := start(t, Options{Now: clock.Now})

	r := post(t, base, LoginPath, "application/x-www-form-urlencoded", loginForm(testEmail, testPassword))
	if r.status != http.StatusOK {
		t.Fatalf("status: got %d, want 200 (body %s)", r.status, r.body)
	}
	if got := r.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", got)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(r.body), &body); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	if len(body) != 2 || body["token_type"] != "bearer" {
		t.Errorf("body: got %s, want exactly access_token and token_type \"bearer\"", r.body)
	}
	token, _ := body["access_token"].(string)

	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token: got %d parts, want 3", len(parts))
	}
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || string(header) != hs256Header {
		t.Errorf("JWT header: got %s (%v), want %s", header, err, hs256Header)
	}
	mac := hmac.New(sha256.New, testSecret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if got, want := parts[2], base64.RawURLEncoding.EncodeToString(mac.Sum(nil)); got != want {
		t.Errorf("signature: got %s, want HMAC-SHA256 with the configured secret %s", got, want)
	}

	p := payload(t, token)
	id := sim.UserID(testEmail)
	if !uuidV4.MatchString(id) {
		t.Errorf("UserID: got %q, want a canonical version-4 UUID", id)
	}
	want := map[string]any{
		"sub": id,
		"aud": []any{"fastapi-users:auth"},
		"exp": float64(time.Date(2025, 3, 1, 13, 0, 0, 0, time.UTC).Unix()),
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("payload: got %v, want %v", p, want)
	}
	if got := sim.UserID("OPS@EXAMPLE.COM"); got != id {
		t.Errorf("UserID ignoring case: got %q, want %q", got, id)
	}
	if got := sim.UserID("nobody@example.com"); got != "" {
		t.Errorf("UserID of unknown user: got %q, want empty", got)
	}
	if other := sim.UserID("Mixed.Case@Example.com"); other == id || other == "" {
		t.Errorf("second user's id: got %q, want a different non-empty id", other)
	}
}

func TestLoginAcceptedForms(t *testing.T) {
	t.Parallel()
	_, base := start(t, Options{})
	enc := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	tests := []struct {
		name, contentType, body string
	}{
		{"plain", "application/x-www-form-urlencoded", loginForm(testEmail, testPassword)},
		{"charset parameter", "application/x-www-form-urlencoded; charset=UTF-8", loginForm(testEmail, testPassword)},
		{"media type in capitals", "Application/X-WWW-Form-URLEncoded", loginForm(testEmail, testPassword)},
		{"email in other case", "application/x-www-form-urlencoded", loginForm("OPS@Example.COM", testPassword)},
		{"stored mixed-case email in lower case", "application/x-www-form-urlencoded", loginForm("mixed.case@example.com", "pw2")},
		{"grant_type password", "application/x-www-form-urlencoded", enc("grant_type", "password", "username", testEmail, "password", testPassword)},
		{"empty grant_type counts as absent", "application/x-www-form-urlencoded", enc("grant_type", "", "username", testEmail, "password", testPassword)},
		{"optional OAuth2 fields", "application/x-www-form-urlencoded", enc("username", testEmail, "password", testPassword, "scope", "a b", "client_id", "x", "client_secret", "y")},
		{"last of repeated fields wins", "application/x-www-form-urlencoded", enc("username", "wrong@example.com", "username", testEmail, "password", testPassword)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := post(t, base, LoginPath, tt.contentType, tt.body)
			if r.status != http.StatusOK {
				t.Fatalf("status: got %d, want 200 (body %s)", r.status, r.body)
			}
		})
	}
}

func TestLoginRejections(t *testing.T) {
	t.Parallel()
	sim, base := start(t, Options{})
	// Runs once every parallel subtest below has finished.
	t.Cleanup(func() {
		if got := sim.Logins(); got != 0 {
			t.Errorf("Logins after rejected logins: got %d, want 0", got)
		}
	})
	const (
		form            = "application/x-www-form-urlencoded"
		badCredentials  = `{"detail":"LOGIN_BAD_CREDENTIALS"}`
		notVerified     = `{"detail":"LOGIN_USER_NOT_VERIFIED"}`
		missingUsername = `{"type":"missing","loc":["body","username"],"msg":"Field required","input":null}`
		missingPassword = `{"type":"missing","loc":["body","password"],"msg":"Field required","input":null}`
		missingBoth     = `{"detail":[` + missingUsername + `,` + missingPassword + `]}`
	)
	grantMismatch := func(input string) string {
		return `{"type":"string_pattern_mismatch","loc":["body","grant_type"],"msg":"String should match pattern '^password$'","input":"` + input + `","ctx":{"pattern":"^password$"}}`
	}
	jsonBody := fmt.Sprintf(`{"username":%q,"password":%q}`, testEmail, testPassword)
	tests := []struct {
		name, contentType, body string
		wantStatus              int
		wantBody                string
	}{
		{"wrong password", form, loginForm(testEmail, "nope"), 400, badCredentials},
		{"unknown user", form, loginForm("nobody@example.com", testPassword), 400, badCredentials},
		{"inactive user, right password", form, loginForm("inactive@example.com", "pw4"), 400, badCredentials},
		{"inactive and unverified user", form, loginForm("both@example.com", "pw5"), 400, badCredentials},
		{"unverified user, right password", form, loginForm("unverified@example.com", "pw3"), 400, notVerified},
		{"unverified user, wrong password", form, loginForm("unverified@example.com", "nope"), 400, badCredentials},
		{"password not form-encoded", form, "username=" + testEmail + "&password=" + testPassword, 400, badCredentials},
		{"password differs in case", form, loginForm(testEmail, strings.ToUpper(testPassword)), 400, badCredentials},
		{"JSON body", "application/json", jsonBody, 422, missingBoth},
		{"JSON body with form field names, no content type", "", jsonBody, 422, missingBoth},
		{"form body without content type", "", loginForm(testEmail, testPassword), 422, missingBoth},
		{"form body as text/plain", "text/plain", loginForm(testEmail, testPassword), 422, missingBoth},
		{"multipart", "multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n" + testEmail + "\r\n--x--\r\n", 422, missingBoth},
		{"empty form", form, "", 422, missingBoth},
		{"missing username", form, url.Values{"password": {testPassword}}.Encode(), 422, `{"detail":[` + missingUsername + `]}`},
		{"missing password", form, url.Values{"username": {testEmail}}.Encode(), 422, `{"detail":[` + missingPassword + `]}`},
		{"empty username", form, loginForm("", testPassword), 422, `{"detail":[` + missingUsername + `]}`},
		{"empty password", form, loginForm(testEmail, ""), 422, `{"detail":[` + missingPassword + `]}`},
		{"wrong field name", form, url.Values{"email": {testEmail}, "password": {testPassword}}.Encode(), 422, `{"detail":[` + missingUsername + `]}`},
		{"grant_type client_credentials", form, "grant_type=client_credentials&" + loginForm(testEmail, testPassword), 422, `{"detail":[` + grantMismatch("client_credentials") + `]}`},
		{"grant_type in capitals", form, "grant_type=Password&" + loginForm(testEmail, testPassword), 422, `{"detail":[` + grantMismatch("Password") + `]}`},
		{"grant_type with trailing newline", form, "grant_type=password%0A&" + loginForm(testEmail, testPassword), 422, `{"detail":[` + grantMismatch(`password\n`) + `]}`},
		{"every field wrong, reported in declaration order", form, "grant_type=x", 422, `{"detail":[` + grantMismatch("x") + `,` + missingUsername + `,` + missingPassword + `]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := post(t, base, LoginPath, tt.contentType, tt.body)
			if r.status != tt.wantStatus || r.body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if got := r.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
		})
	}
	t.Run("credentials in the query string are ignored", func(t *testing.T) {
		t.Parallel()
		r := post(t, base, LoginPath+"?"+loginForm(testEmail, testPassword), form, "")
		if r.status != 422 || r.body != missingBoth {
			t.Errorf("got %d %s, want 422 %s", r.status, r.body, missingBoth)
		}
	})
}

func TestRouting(t *testing.T) {
	t.Parallel()
	_, base := start(t, Options{})
	tests := []struct {
		method, path string
		wantStatus   int
		wantBody     string
		wantAllow    string
	}{
		{http.MethodGet, LoginPath, 405, `{"detail":"Method Not Allowed"}`, "POST"},
		{http.MethodPut, LoginPath, 405, `{"detail":"Method Not Allowed"}`, "POST"},
		{http.MethodGet, LogoutPath, 405, `{"detail":"Method Not Allowed"}`, "POST"},
		{http.MethodPost, ResourcePath, 405, `{"detail":"Method Not Allowed"}`, "GET, HEAD"},
		{http.MethodPost, "/auth/jwt/refresh", 404, `{"detail":"Not Found"}`, ""},
		{http.MethodPost, "/auth/login", 404, `{"detail":"Not Found"}`, ""},
		{http.MethodGet, "/", 404, `{"detail":"Not Found"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			r := call(t, tt.method, base, tt.path, "")
			if r.status != tt.wantStatus || r.body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if got := r.header.Get("Allow"); got != tt.wantAllow {
				t.Errorf("Allow: got %q, want %q", got, tt.wantAllow)
			}
		})
	}
}

func TestResource(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sim, base := start(t, Options{Now: clock.Now})
	token := login(t, base, testEmail, testPassword)
	id := sim.UserID(testEmail)
	exp := clock.Now().Add(time.Hour).Unix()
	claims := func(sub string) string {
		return fmt.Sprintf(`{"sub":%q,"aud":["fastapi-users:auth"],"exp":%d}`, sub, exp)
	}
	_, otherBase := start(t, Options{Secret: []byte("another secret")})
	foreign := login(t, otherBase, testEmail, testPassword)
	parts := strings.Split(token, ".")
	tampered := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))

	const (
		unauthorized = `{"detail":"Unauthorized"}`
		forbidden    = `{"detail":"Forbidden"}`
	)
	wantOK := fmt.Sprintf(`{"id":%q,"email":%q}`, id, testEmail)
	tests := []struct {
		name, authorization string
		wantStatus          int
		wantBody            string
	}{
		{"issued token", "Bearer " + token, 200, wantOK},
		{"scheme in lower case", "bearer " + token, 200, wantOK},
		{"scheme in capitals", "BEARER " + token, 200, wantOK},
		{"forged with the secret", "Bearer " + forge(testSecret, hs256Header, claims(id)), 200, wantOK},
		{"audience as a string", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"aud":"fastapi-users:auth","exp":%d}`, id, exp)), 200, wantOK},
		{"audience among others", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"aud":["x","fastapi-users:auth"],"exp":%d}`, id, exp)), 200, wantOK},
		{"sub as an upper-case UUID in braces", "Bearer " + forge(testSecret, hs256Header, claims("{"+strings.ToUpper(id)+"}")), 200, wantOK},
		{"no header", "", 401, unauthorized},
		{"token without scheme", token, 401, unauthorized},
		{"scheme without token", "Bearer", 401, unauthorized},
		{"other scheme", "Token " + token, 401, unauthorized},
		{"JWT scheme", "JWT " + token, 401, unauthorized},
		{"no space", "Bearer" + token, 401, unauthorized},
		{"two spaces", "Bearer  " + token, 401, unauthorized},
		{"garbage token", "Bearer not.a.jwt", 401, unauthorized},
		{"tampered signature", "Bearer " + tampered, 401, unauthorized},
		{"token from another server", "Bearer " + foreign, 401, unauthorized},
		{"wrong audience", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"aud":["fastapi-users:verify"],"exp":%d}`, id, exp)), 401, unauthorized},
		{"no audience", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"exp":%d}`, id, exp)), 401, unauthorized},
		{"alg none", "Bearer " + unsigned(`{"alg":"none","typ":"JWT"}`, claims(id)), 401, unauthorized},
		{"HS512 with the secret", "Bearer " + forgeHS512(testSecret, claims(id)), 401, unauthorized},
		{"sub is the email", "Bearer " + forge(testSecret, hs256Header, claims(testEmail)), 401, unauthorized},
		{"sub is an unknown user", "Bearer " + forge(testSecret, hs256Header, claims("00000000-0000-4000-8000-000000000000")), 401, unauthorized},
		{"no sub", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"aud":["fastapi-users:auth"],"exp":%d}`, exp)), 401, unauthorized},
		{"sub not a string", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":12,"aud":["fastapi-users:auth"],"exp":%d}`, exp)), 401, unauthorized},
		{"expired", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"aud":["fastapi-users:auth"],"exp":%d}`, id, clock.Now().Unix())), 401, unauthorized},
		{"not yet valid", "Bearer " + forge(testSecret, hs256Header, fmt.Sprintf(`{"sub":%q,"aud":["fastapi-users:auth"],"exp":%d,"nbf":%d}`, id, exp, exp-1)), 401, unauthorized},
		{"inactive user", "Bearer " + forge(testSecret, hs256Header, claims(sim.UserID("inactive@example.com"))), 401, unauthorized},
		{"unverified user", "Bearer " + forge(testSecret, hs256Header, claims(sim.UserID("unverified@example.com"))), 403, forbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := call(t, http.MethodGet, base, ResourcePath, tt.authorization)
			if r.status != tt.wantStatus || r.body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if got := r.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", got)
			}
			if got := r.header.Get("WWW-Authenticate"); got != "" {
				t.Errorf("WWW-Authenticate: got %q, want none (fastapi-users sends none)", got)
			}
		})
	}
	t.Run("token in the query string", func(t *testing.T) {
		t.Parallel()
		r := call(t, http.MethodGet, base, ResourcePath+"?access_token="+token, "")
		if r.status != 401 || r.body != unauthorized {
			t.Errorf("got %d %s, want 401 %s", r.status, r.body, unauthorized)
		}
	})
	t.Run("token in a cookie", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequest(http.MethodGet, base+ResourcePath, nil)
		req.AddCookie(&http.Cookie{Name: "fastapiusersauth", Value: token})
		r := do(t, req)
		if r.status != 401 || r.body != unauthorized {
			t.Errorf("got %d %s, want 401 %s", r.status, r.body, unauthorized)
		}
	})
}

// unsigned builds a JWT with an empty signature, as alg "none" has.
func unsigned(header, payload string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload)) + "."
}

func forgeHS512(secret []byte, payload string) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS512","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(payload))
	mac := hmac.New(sha512.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

func TestExpiryFollowsTheClock(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	_, base := start(t, Options{Now: clock.Now, Lifetime: 10 * time.Minute})
	token := login(t, base, testEmail, testPassword)
	if got, want := payload(t, token)["exp"], float64(clock.Now().Add(10*time.Minute).Unix()); got != want {
		t.Fatalf("exp: got %v, want %v", got, want)
	}
	steps := []struct {
		name       string
		advance    time.Duration
		wantStatus int
	}{
		{"fresh", 0, 200},
		{"one second before exp", 10*time.Minute - time.Second, 200},
		{"just before exp", time.Second - time.Nanosecond, 200},
		{"at exp", time.Nanosecond, 401},
		{"long after exp", 24 * time.Hour, 401},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != s.wantStatus {
			t.Errorf("%s: got %d %s, want %d", s.name, r.status, r.body, s.wantStatus)
		}
	}
	// Logging in again is the only remedy, and it works.
	fresh := login(t, base, testEmail, testPassword)
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+fresh); r.status != 200 {
		t.Errorf("new token after expiry: got %d %s, want 200", r.status, r.body)
	}
}

func TestSetLifetime(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sim, base := start(t, Options{Now: clock.Now})
	expIn := func() time.Duration {
		t.Helper()
		exp := payload(t, login(t, base, testEmail, testPassword))["exp"].(float64)
		return time.Unix(int64(exp), 0).Sub(clock.Now())
	}
	if got := expIn(); got != DefaultLifetime {
		t.Errorf("default lifetime: got %v, want %v", got, DefaultLifetime)
	}
	before := login(t, base, testEmail, testPassword)
	sim.SetLifetime(30 * time.Second)
	if got := expIn(); got != 30*time.Second {
		t.Errorf("after SetLifetime(30s): got %v, want 30s", got)
	}
	short := login(t, base, testEmail, testPassword)
	sim.SetLifetime(0)
	if got := expIn(); got != DefaultLifetime {
		t.Errorf("after SetLifetime(0): got %v, want %v", got, DefaultLifetime)
	}
	sim.SetLifetime(-time.Minute)
	if got := expIn(); got != DefaultLifetime {
		t.Errorf("after SetLifetime(-1m): got %v, want %v", got, DefaultLifetime)
	}
	clock.Advance(30 * time.Second)
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+short); r.status != 401 {
		t.Errorf("30s token after 30s: got %d, want 401", r.status)
	}
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+before); r.status != 200 {
		t.Errorf("token issued before SetLifetime keeps its exp: got %d, want 200", r.status)
	}
}

func TestOmitExp(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	_, base := start(t, Options{Now: clock.Now, OmitExp: true, Lifetime: time.Minute})
	token := login(t, base, testEmail, testPassword)
	p := payload(t, token)
	if _, ok := p["exp"]; ok || len(p) != 2 {
		t.Errorf("payload: got %v, want only sub and aud", p)
	}
	clock.Advance(10 * 365 * 24 * time.Hour)
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != 200 {
		t.Errorf("token without exp ten years on: got %d %s, want 200", r.status, r.body)
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	_, base := start(t, Options{Now: clock.Now})
	token := login(t, base, testEmail, testPassword)

	r := call(t, http.MethodPost, base, LogoutPath, "Bearer "+token)
	if r.status != http.StatusNoContent || r.body != "" {
		t.Errorf("logout: got %d %q, want 204 with no body", r.status, r.body)
	}
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != 200 {
		t.Errorf("token after logout: got %d, want 200 (a JWT is not revoked)", r.status)
	}
	if r := call(t, http.MethodPost, base, LogoutPath, "Bearer "+token); r.status != http.StatusNoContent {
		t.Errorf("second logout: got %d, want 204", r.status)
	}
	for _, auth := range []string{"", "Bearer nonsense", token} {
		if r := call(t, http.MethodPost, base, LogoutPath, auth); r.status != 401 || r.body != `{"detail":"Unauthorized"}` {
			t.Errorf("logout with Authorization %q: got %d %s, want 401 {\"detail\":\"Unauthorized\"}", auth, r.status, r.body)
		}
	}
	clock.Advance(time.Hour)
	if r := call(t, http.MethodPost, base, LogoutPath, "Bearer "+token); r.status != 401 {
		t.Errorf("logout with an expired token: got %d, want 401", r.status)
	}
}

func TestSetPassword(t *testing.T) {
	t.Parallel()
	sim, base := start(t, Options{})
	token := login(t, base, testEmail, testPassword)

	sim.SetPassword("OPS@example.com", "rotated")
	r := post(t, base, LoginPath, "application/x-www-form-urlencoded", loginForm(testEmail, testPassword))
	if r.status != 400 || r.body != `{"detail":"LOGIN_BAD_CREDENTIALS"}` {
		t.Errorf("old password: got %d %s, want 400 LOGIN_BAD_CREDENTIALS", r.status, r.body)
	}
	login(t, base, testEmail, "rotated")
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != 200 {
		t.Errorf("token issued before the change: got %d, want 200", r.status)
	}

	defer func() {
		if recover() == nil {
			t.Error("SetPassword of an unknown user: got no panic, want one")
		}
	}()
	sim.SetPassword("nobody@example.com", "x")
}

func TestNewPanicsOnBadUsers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		users []User
	}{
		{"duplicate ignoring case", []User{{Email: "a@example.com"}, {Email: "A@Example.com"}}},
		{"empty email", []User{{Password: "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Error("got no panic, want one")
				}
			}()
			New(Options{Users: tt.users})
		})
	}
}

func TestSecret(t *testing.T) {
	t.Parallel()
	t.Run("random by default", func(t *testing.T) {
		t.Parallel()
		users := []User{{Email: testEmail, Password: testPassword}}
		a, b := httptest.NewServer(New(Options{Users: users})), httptest.NewServer(New(Options{Users: users}))
		defer a.Close()
		defer b.Close()
		token := login(t, a.URL, testEmail, testPassword)
		if r := call(t, http.MethodGet, a.URL, ResourcePath, "Bearer "+token); r.status != 200 {
			t.Errorf("own token: got %d, want 200", r.status)
		}
		if r := call(t, http.MethodGet, b.URL, ResourcePath, "Bearer "+token); r.status != 401 {
			t.Errorf("other server's token: got %d, want 401", r.status)
		}
	})
	t.Run("copied from Options", func(t *testing.T) {
		t.Parallel()
		secret := []byte("caller-owned secret")
		_, base := start(t, Options{Secret: secret})
		token := login(t, base, testEmail, testPassword)
		secret[0] ^= 0xff
		if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != 200 {
			t.Errorf("after the caller changed its slice: got %d, want 200", r.status)
		}
	})
}

func TestCounters(t *testing.T) {
	t.Parallel()
	sim, base := start(t, Options{})
	form := "application/x-www-form-urlencoded"
	token := login(t, base, testEmail, testPassword)
	login(t, base, "mixed.case@example.com", "pw2")
	post(t, base, LoginPath, form, loginForm(testEmail, "wrong"))
	post(t, base, LoginPath, form, loginForm("unverified@example.com", "pw3"))
	post(t, base, LoginPath, "application/json", `{}`)
	call(t, http.MethodGet, base, LoginPath, "") // not a POST: not an attempt
	sim.SetFault(Fault{Status: 503})
	post(t, base, LoginPath, form, loginForm(testEmail, testPassword))
	sim.SetFault(Fault{})

	call(t, http.MethodGet, base, ResourcePath, "Bearer "+token)
	call(t, http.MethodGet, base, ResourcePath, "Bearer "+token)
	call(t, http.MethodGet, base, ResourcePath, "Bearer x")
	call(t, http.MethodGet, base, ResourcePath, "")
	call(t, http.MethodPost, base, LogoutPath, "Bearer "+token)

	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"Logins", sim.Logins(), 2},
		{"LoginAttempts", sim.LoginAttempts(), 6},
		{"ResourceCalls", sim.ResourceCalls(), 2},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	form := "application/x-www-form-urlencoded"
	tests := []struct {
		name            string
		fault           Fault
		wantStatus      int
		wantContentType string
		wantBody        string
	}{
		{"status with JSON body", Fault{Status: 503, Body: `{"detail":"down"}`}, 503, "application/json", `{"detail":"down"}`},
		{"status with text body", Fault{Status: 502, Body: "Bad Gateway"}, 502, "text/plain; charset=utf-8", "Bad Gateway"},
		{"status with no body", Fault{Status: 500}, 500, "text/plain; charset=utf-8", ""},
		{"status that looks fine", Fault{Status: 200, Body: `{"unexpected":true}`}, 200, "application/json", `{"unexpected":true}`},
		{"garbage", Fault{Garbage: true}, 200, "application/json", garbageBody},
		{"garbage wins over status", Fault{Garbage: true, Status: 503}, 200, "application/json", garbageBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, base := start(t, Options{})
			token := login(t, base, testEmail, testPassword)
			sim.SetFault(tt.fault)
			r := post(t, base, LoginPath, form, loginForm(testEmail, testPassword))
			if r.status != tt.wantStatus || r.body != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if got := r.header.Get("Content-Type"); got != tt.wantContentType {
				t.Errorf("Content-Type: got %q, want %q", got, tt.wantContentType)
			}
			if tt.fault.Garbage && json.Valid([]byte(r.body)) {
				t.Errorf("garbage body %q is valid JSON", r.body)
			}
			if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+token); r.status != 200 {
				t.Errorf("protected endpoint during a login fault: got %d, want 200", r.status)
			}
			sim.SetFault(Fault{})
			login(t, base, testEmail, testPassword)
			if got := sim.Logins(); got != 2 {
				t.Errorf("Logins: got %d, want 2 (the faulted login does not count)", got)
			}
		})
	}
}

func TestHangUntilTheClientGivesUp(t *testing.T) {
	t.Parallel()
	sim, base := start(t, Options{})
	sim.SetFault(Fault{Hang: true, Status: 503})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+LoginPath, strings.NewReader(loginForm(testEmail, testPassword)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		done <- result{resp, err}
	}()
	// Give up only once the login has arrived: a fixed client timeout could
	// fire before it does on a loaded machine.
	deadline := time.Now().Add(10 * time.Second)
	for sim.LoginAttempts() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	select {
	case r := <-done:
		if r.err == nil {
			r.resp.Body.Close()
		}
		t.Fatalf("got %v, want the request to hang until the client gives up", r.err)
	case <-time.After(20 * time.Millisecond):
	}
	cancel()
	r := <-done
	if r.err == nil {
		r.resp.Body.Close()
		t.Fatalf("got %d, want the request to hang until the client gives up", r.resp.StatusCode)
	}
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("got error %v, want %v", r.err, context.Canceled)
	}
	if got := sim.LoginAttempts(); got != 1 {
		t.Errorf("LoginAttempts: got %d, want 1", got)
	}
	// The server's Close in the cleanup would block if the handler were
	// still hanging after its client left.
}

func TestHangReleasedBySetFault(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		next       Fault
		wantStatus int
	}{
		{"cleared", Fault{}, 200},
		{"replaced", Fault{Status: 503, Body: `{"detail":"down"}`}, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim, base := start(t, Options{})
			sim.SetFault(Fault{Hang: true})
			const n = 20
			statuses := make(chan int, n)
			for range n {
				go func() {
					req, _ := http.NewRequest(http.MethodPost, base+LoginPath, strings.NewReader(loginForm(testEmail, testPassword)))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						statuses <- -1
						return
					}
					resp.Body.Close()
					statuses <- resp.StatusCode
				}()
			}
			// LoginAttempts counts a request before it hangs: wait until
			// every one has arrived, then check none has been answered.
			deadline := time.Now().Add(10 * time.Second)
			for sim.LoginAttempts() < n {
				if time.Now().After(deadline) {
					t.Fatalf("LoginAttempts: got %d, want %d", sim.LoginAttempts(), n)
				}
				time.Sleep(time.Millisecond)
			}
			select {
			case s := <-statuses:
				t.Fatalf("a hanging login was answered %d before the fault changed", s)
			default:
			}
			sim.SetFault(tt.next)
			for range n {
				if got := <-statuses; got != tt.wantStatus {
					t.Errorf("released login: got %d, want %d", got, tt.wantStatus)
				}
			}
			wantLogins := int64(0)
			if tt.wantStatus == 200 {
				wantLogins = n
			}
			if got := sim.Logins(); got != wantLogins {
				t.Errorf("Logins: got %d, want %d", got, wantLogins)
			}
		})
	}
}

// TestConcurrentUse is for the race detector: logins, protected calls and
// every setter at once.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sim, base := start(t, Options{Now: clock.Now})
	const workers, rounds = 16, 10
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				req, _ := http.NewRequest(http.MethodPost, base+LoginPath, strings.NewReader(loginForm("mixed.case@example.com", "pw2")))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r, err := send(req)
				if err != nil || r.status != 200 {
					t.Errorf("login: got %d %s (%v), want 200", r.status, r.body, err)
					return
				}
				var body struct {
					AccessToken string `json:"access_token"`
				}
				if err := json.Unmarshal([]byte(r.body), &body); err != nil {
					t.Errorf("login body %q: %v", r.body, err)
					return
				}
				req, _ = http.NewRequest(http.MethodGet, base+ResourcePath, nil)
				req.Header.Set("Authorization", "Bearer "+body.AccessToken)
				if r, err := send(req); err != nil || r.status != 200 {
					t.Errorf("resource: got %d %s (%v), want 200", r.status, r.body, err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range rounds {
			sim.SetLifetime(time.Duration(i+1) * time.Hour)
			sim.SetPassword(testEmail, fmt.Sprint("pw", i))
			sim.SetFault(Fault{})
			clock.Advance(time.Second)
			_ = sim.UserID(testEmail)
			_ = sim.Logins() + sim.LoginAttempts() + sim.ResourceCalls()
		}
	})
	wg.Wait()
	if got, want := sim.Logins(), int64(workers*rounds); got != want {
		t.Errorf("Logins: got %d, want %d", got, want)
	}
	if got, want := sim.ResourceCalls(), int64(workers*rounds); got != want {
		t.Errorf("ResourceCalls: got %d, want %d", got, want)
	}
}

func TestUnquotePlus(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"a+b", "a b"},
		{"%41%2b", "A+"},
		{"ops%40example.com", "ops@example.com"},
		{"100%", "100%"},
		{"a%zz+b%41", "a%zz bA"},
		{"%e2%82%ac", "€"},
	}
	for _, tt := range tests {
		if got := unquotePlus(tt.in); got != tt.want {
			t.Errorf("unquotePlus(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseUUID(t *testing.T) {
	t.Parallel()
	const canonical = "0f8fad5b-d9cb-469f-a165-70867728950e"
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{canonical, canonical, true},
		{strings.ToUpper(canonical), canonical, true},
		{"0f8fad5bd9cb469fa16570867728950e", canonical, true},
		{"{" + canonical + "}", canonical, true},
		{"urn:uuid:" + canonical, canonical, true},
		{canonical[:35], "", false},
		{"ops@example.com", "", false},
		{"", "", false},
		{strings.Replace(canonical, "0", "g", 1), "", false},
	}
	for _, tt := range tests {
		got, ok := parseUUID(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseUUID(%q): got %q, %v, want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestLoginBodyTooLarge(t *testing.T) {
	t.Parallel()
	sim, base := start(t, Options{})
	body := loginForm(testEmail, testPassword) + "&pad=" + strings.Repeat("x", maxBodyBytes)
	r := post(t, base, LoginPath, "application/x-www-form-urlencoded", body)
	if want := `{"detail":"There was an error parsing the body"}`; r.status != 400 || r.body != want {
		t.Errorf("got %d %s, want 400 %s", r.status, r.body, want)
	}
	if got := sim.LoginAttempts(); got != 1 {
		t.Errorf("LoginAttempts: got %d, want 1", got)
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sim, base := start(t, Options{Now: clock.Now})
	revoked := login(t, base, testEmail, testPassword)
	clock.Advance(time.Second) // a new exp, so a new token
	kept := login(t, base, testEmail, testPassword)
	if revoked == kept {
		t.Fatal("two logins a second apart gave the same token")
	}
	sim.Revoke(revoked)
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+revoked); r.status != 401 || r.body != `{"detail":"Unauthorized"}` {
		t.Errorf("revoked token: got %d %s, want 401 {\"detail\":\"Unauthorized\"}", r.status, r.body)
	}
	if r := call(t, http.MethodGet, base, ResourcePath, "Bearer "+kept); r.status != 200 {
		t.Errorf("another token of the same user: got %d, want 200", r.status)
	}
}
