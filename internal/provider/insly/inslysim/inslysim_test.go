package inslysim

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

const (
	tenant   = "acme"
	email    = "alice@example.com"
	cogUser  = "7c1b0a5e-2f0e-4c57-9d5a-0b8f8e3c1a11"
	password = "correct horse battery staple"
	clientID = "app-1"
	secret   = "s3cr3t"
)

func newClock() *clocktest.Clock { return clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

// baseOptions returns the options most tests use: one tenant, a handful of
// users in each state, one client.
func baseOptions(c *clocktest.Clock) Options {
	return Options{
		Tenant: tenant,
		Users: []User{
			{Email: email, Username: cogUser, Password: password},
			{Email: "bob@example.com", Password: "bobpw"},
			{Email: "carol@example.com", Password: "carolpw", Challenge: "NEW_PASSWORD_REQUIRED"},
			{Email: "dave@example.com", Password: "davepw", Challenge: "SOFTWARE_TOKEN_MFA"},
			{Email: "erin@example.com", Password: "erinpw", Unconfirmed: true},
			{Email: "frank@example.com", Password: "frankpw", ResetRequired: true},
		},
		Clients: []Client{
			{ID: clientID, Secret: secret},
			{ID: "app-2", Secret: "other", Scopes: []string{"auth/acme", "ledger/read", "ledger/write"}},
		},
		Now: c.Now,
	}
}

type fixture struct {
	sim   *Server
	ts    *httptest.Server
	clock *clocktest.Clock
}

func start(t *testing.T, mutate func(*Options)) fixture {
	t.Helper()
	c := newClock()
	o := baseOptions(c)
	if mutate != nil {
		mutate(&o)
	}
	sim := New(o)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	return fixture{sim: sim, ts: ts, clock: c}
}

// reply is an HTTP answer as the tests look at it.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// wireError is the service's error element, decoded independently of the
// simulator's own types.
type wireError struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Params  []string `json:"params"`
}

func (r reply) errors(t *testing.T) []wireError {
	t.Helper()
	var b struct {
		Errors []wireError `json:"errors"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("error body %s: %v", r.body, err)
	}
	if len(b.Errors) == 0 {
		t.Fatalf("error body %s: got no errors, want at least one", r.body)
	}
	for _, e := range b.Errors {
		if e.Params == nil {
			t.Errorf("error body %s: got params null, want an array", r.body)
		}
	}
	return b.Errors
}

func (r reply) object(t *testing.T) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	return m
}

func do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// post sends body as-is with the given Content-Type to an identifier path.
func (f fixture) post(t *testing.T, path, contentType, body string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.ts.URL+PathPrefix+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

func (f fixture) postJSON(t *testing.T, path string, v any) reply {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return f.post(t, path, "application/json; charset=UTF-8", string(b))
}

// policies calls the protected endpoint with the documented Content-Type.
func (f fixture) policies(t *testing.T, authorization, tenantHeader string) reply {
	t.Helper()
	return f.policiesAs(t, authorization, tenantHeader, "application/json; charset=UTF-8")
}

// policiesAs calls the protected endpoint; an empty header is not sent.
func (f fixture) policiesAs(t *testing.T, authorization, tenantHeader, contentType string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.ts.URL+PoliciesPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if tenantHeader != "" {
		req.Header.Set("X-TENANT-ID", tenantHeader)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

// result is the authentication_result object (or the flat answer).
type result struct {
	AccessToken  string `json:"access_token"`
	ExpiresIn    int64  `json:"expires_in"`
	IDToken      string `json:"id_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
}

// authResult returns the nested authentication_result of a 200 answer and
// its raw members, so tests can tell an absent field from an empty one.
func (r reply) authResult(t *testing.T) (result, map[string]json.RawMessage) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("got status %d (%s), want 200", r.status, r.body)
	}
	raw, ok := r.object(t)["authentication_result"]
	if !ok {
		t.Fatalf("body %s: got no authentication_result, want one", r.body)
	}
	var res result
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &members); err != nil {
		t.Fatal(err)
	}
	return res, members
}

func (f fixture) login(t *testing.T, username, pw string) result {
	t.Helper()
	res, _ := f.postJSON(t, "/login/"+tenant, map[string]string{"username": username, "password": pw}).authResult(t)
	return res
}

// claims decodes a JWT's payload without verifying it, as a client would.
func claims(t *testing.T, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("token payload: %v", err)
	}
	return m
}

func wantError(t *testing.T, r reply, status int, code, message string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got status %d (%s), want %d", r.status, r.body, status)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("got Content-Type %q, want application/json", ct)
	}
	errs := r.errors(t)
	if errs[0].Code != code {
		t.Errorf("got code %q, want %q", errs[0].Code, code)
	}
	if message != "" && errs[0].Message != message {
		t.Errorf("got message %q, want %q", errs[0].Message, message)
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestPasswordLogin(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	r := f.postJSON(t, "/login/"+tenant, map[string]any{
		"username":  email,
		"password":  password,
		"meta_data": map[string]string{"ip": "10.0.0.1"},
	})
	res, members := r.authResult(t)
	for _, k := range []string{"access_token", "expires_in", "id_token", "refresh_token", "token_type"} {
		if _, ok := members[k]; !ok {
			t.Errorf("authentication_result: got no %q, want it", k)
		}
	}
	if _, ok := r.object(t)["challenge_name"]; ok {
		t.Errorf("got challenge_name in a login answer, want none")
	}
	if res.ExpiresIn != 3600 {
		t.Errorf("got expires_in %d, want 3600", res.ExpiresIn)
	}
	if res.TokenType != "Bearer" {
		t.Errorf("got token_type %q, want Bearer", res.TokenType)
	}
	if res.RefreshToken == "" || res.RefreshToken == res.AccessToken {
		t.Errorf("got refresh_token %q, want an opaque token distinct from the access token", res.RefreshToken)
	}

	c := claims(t, res.AccessToken)
	now := f.clock.Now().Unix()
	want := map[string]any{
		"username":  cogUser,
		"token_use": "access",
		"scope":     "aws.cognito.signin.user.admin",
		TenantClaim: tenant,
		"iat":       float64(now),
		"exp":       float64(now + 3600),
		"auth_time": float64(now),
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("access token claim %q: got %v, want %v", k, c[k], v)
		}
	}
	if sub, _ := c["sub"].(string); !uuidRE.MatchString(sub) || sub == cogUser {
		t.Errorf("got sub %q, want a UUID distinct from the username", sub)
	}
	if cid, _ := c["client_id"].(string); cid == "" {
		t.Errorf("got client_id %v, want the identifier's app client id", c["client_id"])
	}
	if idc := claims(t, res.IDToken); idc["token_use"] != "id" || idc["email"] != email {
		t.Errorf("id token: got token_use %v email %v, want id %s", idc["token_use"], idc["email"], email)
	}

	p := f.policies(t, "Bearer "+res.AccessToken, tenant)
	if p.status != http.StatusOK {
		t.Fatalf("policies: got status %d (%s), want 200", p.status, p.body)
	}
	var pa struct {
		User   string `json:"user"`
		Tenant string `json:"tenant"`
	}
	if err := json.Unmarshal(p.body, &pa); err != nil {
		t.Fatal(err)
	}
	if pa.User != cogUser || pa.Tenant != tenant {
		t.Errorf("policies: got user %q tenant %q, want %q %q", pa.User, pa.Tenant, cogUser, tenant)
	}

	if got := f.sim.Logins(); got != 1 {
		t.Errorf("got Logins %d, want 1", got)
	}
	if got := f.sim.LoginAttempts(); got != 1 {
		t.Errorf("got LoginAttempts %d, want 1", got)
	}
}

func TestLoginNameIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	res := f.login(t, "Alice@Example.COM", password)
	if got := claims(t, res.AccessToken)["username"]; got != cogUser {
		t.Errorf("got username claim %v, want %s", got, cogUser)
	}
}

func TestGeneratedUsername(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	got, ok := f.sim.Username("bob@example.com")
	if !ok || !uuidRE.MatchString(got) {
		t.Fatalf("got Username %q %v, want a generated UUID", got, ok)
	}
	res := f.login(t, "bob@example.com", "bobpw")
	if c := claims(t, res.AccessToken)["username"]; c != got {
		t.Errorf("got username claim %v, want %s", c, got)
	}
	if _, ok := f.sim.Username("nobody@example.com"); ok {
		t.Errorf("got a username for an unknown user, want none")
	}
	if f.sim.Tenant() != tenant {
		t.Errorf("got Tenant %q, want %q", f.sim.Tenant(), tenant)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	sim := New(Options{Users: []User{{Email: email, Password: password}}})
	ts := httptest.NewServer(sim)
	defer ts.Close()
	f := fixture{sim: sim, ts: ts}
	if sim.Tenant() != DefaultTenant {
		t.Fatalf("got tenant %q, want %q", sim.Tenant(), DefaultTenant)
	}
	r := f.postJSON(t, "/login/"+DefaultTenant, map[string]string{"username": email, "password": password})
	res, _ := r.authResult(t)
	c := claims(t, res.AccessToken)
	iat, _ := c["iat"].(float64)
	if exp, _ := c["exp"].(float64); exp-iat != 3600 {
		t.Errorf("got lifetime %v s, want 3600", exp-iat)
	}
	if d := time.Unix(int64(iat), 0).Sub(time.Now()); d > time.Minute || d < -time.Minute {
		t.Errorf("got iat %v away from the real clock, want it near", d)
	}
}

func TestLoginRefusals(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	const ct = "application/json"
	body := func(u, p string) string { return fmt.Sprintf(`{"username":%q,"password":%q}`, u, p) }
	cases := []struct {
		name        string
		path        string
		contentType string
		body        string
		code        string
		message     string
		params      []string
	}{
		{"wrong password", "/login/" + tenant, ct, body(email, "nope"), CodeNotAuthorized, "NotAuthorizedException: Incorrect username or password.", nil},
		{"unknown user", "/login/" + tenant, ct, body("zed@example.com", "x"), CodeUserNotFound, "UserNotFoundException: User does not exist.", nil},
		{"login with the cognito username", "/login/" + tenant, ct, body(cogUser, password), CodeUserNotFound, "", nil},
		{"password reset required", "/login/" + tenant, ct, body("frank@example.com", "frankpw"), CodePasswordResetRequired, "", nil},
		{"reset required but wrong password", "/login/" + tenant, ct, body("frank@example.com", "x"), CodeNotAuthorized, "", nil},
		{"unconfirmed", "/login/" + tenant, ct, body("erin@example.com", "erinpw"), CodeUserNotConfirmed, "UserNotConfirmedException: User is not confirmed.", nil},
		{"unknown tenant", "/login/other", ct, body(email, password), CodeUndefined, "Tenant not found.", nil},
		{"tenant case differs", "/login/ACME", ct, body(email, password), CodeUndefined, "Tenant not found.", nil},
		{"no content type", "/login/" + tenant, "", body(email, password), CodeUndefined, "", nil},
		{"form content type", "/login/" + tenant, "application/x-www-form-urlencoded", "username=a&password=b", CodeUndefined, "", nil},
		{"text content type", "/login/" + tenant, "text/plain", body(email, password), CodeUndefined, "", nil},
		{"latin1 charset", "/login/" + tenant, "application/json; charset=ISO-8859-1", body(email, password), CodeUndefined, "", nil},
		{"missing username", "/login/" + tenant, ct, `{"password":"x"}`, CodeUndefined, "", []string{"username"}},
		{"empty password", "/login/" + tenant, ct, body(email, ""), CodeUndefined, "", []string{"password"}},
		{"null password", "/login/" + tenant, ct, `{"username":"a@b.c","password":null}`, CodeUndefined, "", []string{"password"}},
		{"capitalised field name", "/login/" + tenant, ct, `{"Username":"alice@example.com","password":"x"}`, CodeUndefined, "", []string{"Username"}},
		{"email field instead of username", "/login/" + tenant, ct, `{"email":"alice@example.com","password":"x"}`, CodeUndefined, "", []string{"email"}},
		{"unknown field", "/login/" + tenant, ct, `{"username":"alice@example.com","password":"x","scope":"auth/acme"}`, CodeUndefined, "", []string{"scope"}},
		{"password not a string", "/login/" + tenant, ct, `{"username":"alice@example.com","password":123}`, CodeUndefined, "", []string{"password"}},
		{"meta_data value not a string", "/login/" + tenant, ct, `{"username":"alice@example.com","password":"x","meta_data":{"n":1}}`, CodeUndefined, "", []string{"meta_data"}},
		{"not JSON", "/login/" + tenant, ct, `username=alice`, CodeUndefined, "", nil},
		{"JSON array", "/login/" + tenant, ct, `[]`, CodeUndefined, "", nil},
		{"JSON null", "/login/" + tenant, ct, `null`, CodeUndefined, "", nil},
		{"trailing data", "/login/" + tenant, ct, body(email, password) + `{}`, CodeUndefined, "", nil},
		{"empty body", "/login/" + tenant, ct, ``, CodeUndefined, "", nil},
		{"body too large", "/login/" + tenant, ct, `{"username":"` + strings.Repeat("a", 70<<10) + `","password":"x"}`, CodeUndefined, "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.post(t, tc.path, tc.contentType, tc.body)
			wantError(t, r, http.StatusBadRequest, tc.code, tc.message)
			if tc.params != nil {
				if got := r.errors(t)[0].Params; !slices.Equal(got, tc.params) {
					t.Errorf("got params %q, want %q", got, tc.params)
				}
			}
		})
	}
	if got := f.sim.Logins(); got != 0 {
		t.Errorf("got Logins %d, want 0", got)
	}
	if got, want := f.sim.LoginAttempts(), int64(len(cases)); got != want {
		t.Errorf("got LoginAttempts %d, want %d", got, want)
	}
}

func TestLoginAcceptsContentTypeVariants(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	for _, ct := range []string{"application/json", "application/json; charset=UTF-8", "application/json;charset=utf-8", "Application/JSON"} {
		t.Run(ct, func(t *testing.T) {
			r := f.post(t, "/login/"+tenant, ct, fmt.Sprintf(`{"username":%q,"password":%q}`, email, password))
			r.authResult(t)
		})
	}
}

func TestMissingFieldsAllReported(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	errs := f.post(t, "/login/"+tenant, "application/json", `{}`).errors(t)
	var got []string
	for _, e := range errs {
		got = append(got, e.Params...)
	}
	if want := []string{"password", "username"}; !slices.Equal(got, want) {
		t.Errorf("got params %q, want %q", got, want)
	}
}

func TestWrongMethodAndPath(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	cases := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, PathPrefix + "/login/" + tenant, http.StatusMethodNotAllowed},
		{http.MethodPost, PathPrefix + "/login/" + tenant + "/", http.StatusNotFound},
		{http.MethodPost, "/login/" + tenant, http.StatusNotFound},
		{http.MethodPost, PathPrefix + "/token/" + tenant, http.StatusNotFound},
		{http.MethodPost, PoliciesPath, http.StatusMethodNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, f.ts.URL+tc.path, strings.NewReader(`{}`))
			req.Header.Set("Content-Type", "application/json")
			if r := do(t, req); r.status != tc.want {
				t.Errorf("got status %d, want %d", r.status, tc.want)
			}
		})
	}
}

func TestChallenge(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	cases := []struct {
		email, pw, challenge string
		wantParams           []string
	}{
		{"carol@example.com", "carolpw", "NEW_PASSWORD_REQUIRED", []string{"USER_ID_FOR_SRP", "requiredAttributes", "userAttributes"}},
		{"dave@example.com", "davepw", "SOFTWARE_TOKEN_MFA", []string{"USER_ID_FOR_SRP"}},
	}
	for _, tc := range cases {
		t.Run(tc.challenge, func(t *testing.T) {
			r := f.postJSON(t, "/login/"+tenant, map[string]string{"username": tc.email, "password": tc.pw})
			if r.status != http.StatusOK {
				t.Fatalf("got status %d (%s), want 200", r.status, r.body)
			}
			m := r.object(t)
			if _, ok := m["authentication_result"]; ok {
				t.Errorf("got authentication_result in a challenge, want none")
			}
			var name string
			_ = json.Unmarshal(m["challenge_name"], &name)
			if name != tc.challenge {
				t.Errorf("got challenge_name %q, want %q", name, tc.challenge)
			}
			var params map[string]string
			_ = json.Unmarshal(m["challenge_parameters"], &params)
			var keys []string
			for k := range params {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, tc.wantParams) {
				t.Errorf("got challenge_parameters %q, want keys %q", keys, tc.wantParams)
			}
			want, _ := f.sim.Username(tc.email)
			if params["USER_ID_FOR_SRP"] != want {
				t.Errorf("got USER_ID_FOR_SRP %q, want %q", params["USER_ID_FOR_SRP"], want)
			}
		})
	}
	// A wrong password is refused before the challenge is revealed.
	wantError(t, f.postJSON(t, "/login/"+tenant, map[string]string{"username": "carol@example.com", "password": "x"}),
		http.StatusBadRequest, CodeNotAuthorized, "")
	if got := f.sim.Logins(); got != 0 {
		t.Errorf("got Logins %d after challenges, want 0", got)
	}
	if got := f.sim.LoginAttempts(); got != 3 {
		t.Errorf("got LoginAttempts %d, want 3", got)
	}
}

func TestClientCredentials(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		flat      bool
		id, sec   string
		scope     string
		wantScope string
	}{
		{"nested default scope", false, clientID, secret, "auth/" + tenant, "auth/" + tenant},
		{"flat default scope", true, clientID, secret, "auth/" + tenant, "auth/" + tenant},
		{"listed scope", false, "app-2", "other", "ledger/read", "ledger/read"},
		{"several listed scopes", false, "app-2", "other", "ledger/read  ledger/write", "ledger/read ledger/write"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, func(o *Options) { o.FlatClientAnswer = tc.flat })
			r := f.postJSON(t, "/token/client/"+tenant, map[string]string{"client_id": tc.id, "client_secret": tc.sec, "scope": tc.scope})
			if r.status != http.StatusOK {
				t.Fatalf("got status %d (%s), want 200", r.status, r.body)
			}
			var res result
			m := r.object(t)
			if tc.flat {
				if _, ok := m["authentication_result"]; ok {
					t.Errorf("got a nested answer %s, want a flat one", r.body)
				}
				if err := json.Unmarshal(r.body, &res); err != nil {
					t.Fatal(err)
				}
			} else {
				var members map[string]json.RawMessage
				res, members = r.authResult(t)
				if _, ok := members["refresh_token"]; ok {
					t.Errorf("got a refresh_token for client credentials, want none")
				}
			}
			if res.ExpiresIn != 3600 || res.TokenType != "Bearer" || res.AccessToken == "" {
				t.Errorf("got %+v, want a Bearer token for 3600 s", res)
			}
			c := claims(t, res.AccessToken)
			if c["client_id"] != tc.id || c["scope"] != tc.wantScope || c[TenantClaim] != tenant || c["token_use"] != "access" {
				t.Errorf("got claims %v, want client_id %s scope %q tenant %s", c, tc.id, tc.wantScope, tenant)
			}
			if _, ok := c["username"]; ok {
				t.Errorf("got a username claim in a client token, want none")
			}
			p := f.policies(t, "Bearer "+res.AccessToken, tenant)
			if p.status != http.StatusOK || !strings.Contains(string(p.body), `"user":"`+tc.id+`"`) {
				t.Errorf("policies: got %d %s, want 200 naming %s", p.status, p.body, tc.id)
			}
			if got := f.sim.ClientLogins(); got != 1 {
				t.Errorf("got ClientLogins %d, want 1", got)
			}
			if got := f.sim.Logins(); got != 0 {
				t.Errorf("got Logins %d, want 0", got)
			}
		})
	}
}

func TestClientCredentialsRefusals(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	cases := []struct {
		name   string
		body   string
		code   string
		params []string
	}{
		{"wrong secret", `{"client_id":"app-1","client_secret":"x","scope":"auth/acme"}`, CodeNotAuthorized, nil},
		{"unknown client", `{"client_id":"nope","client_secret":"s3cr3t","scope":"auth/acme"}`, CodeNotAuthorized, nil},
		{"scope not allowed", `{"client_id":"app-1","client_secret":"s3cr3t","scope":"ledger/read"}`, CodeNotAuthorized, []string{"ledger/read"}},
		{"one of several scopes not allowed", `{"client_id":"app-2","client_secret":"other","scope":"ledger/read admin"}`, CodeNotAuthorized, []string{"admin"}},
		{"another tenant's scope", `{"client_id":"app-1","client_secret":"s3cr3t","scope":"auth/other"}`, CodeNotAuthorized, nil},
		{"missing scope", `{"client_id":"app-1","client_secret":"s3cr3t"}`, CodeUndefined, []string{"scope"}},
		{"blank scope", `{"client_id":"app-1","client_secret":"s3cr3t","scope":""}`, CodeUndefined, []string{"scope"}},
		{"missing secret", `{"client_id":"app-1","scope":"auth/acme"}`, CodeUndefined, []string{"client_secret"}},
		{"camel-case field", `{"clientId":"app-1","client_secret":"s3cr3t","scope":"auth/acme"}`, CodeUndefined, []string{"clientId", "client_id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.post(t, "/token/client/"+tenant, "application/json", tc.body)
			wantError(t, r, http.StatusBadRequest, tc.code, "")
			if tc.params != nil {
				var got []string
				for _, e := range r.errors(t) {
					got = append(got, e.Params...)
				}
				if !slices.Equal(got, tc.params) {
					t.Errorf("got params %q, want %q", got, tc.params)
				}
			}
		})
	}
	wantError(t, f.post(t, "/token/client/other", "application/json", `{"client_id":"app-1","client_secret":"s3cr3t","scope":"auth/acme"}`),
		http.StatusBadRequest, CodeUndefined, "Tenant not found.")
	wantError(t, f.post(t, "/token/client/"+tenant, "application/x-www-form-urlencoded", `client_id=app-1&client_secret=s3cr3t&scope=auth/acme`),
		http.StatusBadRequest, CodeUndefined, "")
	if got := f.sim.ClientLogins(); got != 0 {
		t.Errorf("got ClientLogins %d, want 0", got)
	}
	if got, want := f.sim.ClientLoginAttempts(), int64(len(cases)+2); got != want {
		t.Errorf("got ClientLoginAttempts %d, want %d", got, want)
	}
}

func (f fixture) refresh(t *testing.T, token, username string) reply {
	t.Helper()
	return f.postJSON(t, "/token/refresh/"+tenant, map[string]string{"refresh_token": token, "username": username})
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	first := f.login(t, email, password)
	loginTime := f.clock.Now().Unix()
	f.clock.Advance(50 * time.Minute)

	for i := range 2 { // the refresh token is not consumed
		res, members := f.refresh(t, first.RefreshToken, cogUser).authResult(t)
		if _, ok := members["refresh_token"]; ok {
			t.Errorf("refresh %d: got a refresh_token, want none (rotation is off)", i)
		}
		if res.AccessToken == "" || res.AccessToken == first.AccessToken || res.ExpiresIn != 3600 || res.IDToken == "" {
			t.Errorf("refresh %d: got %+v, want a new access token for 3600 s", i, res)
		}
		c := claims(t, res.AccessToken)
		if c["username"] != cogUser || c["iat"] != float64(f.clock.Now().Unix()) || c["auth_time"] != float64(loginTime) {
			t.Errorf("refresh %d: got claims %v, want username %s, iat now, auth_time of the login", i, c, cogUser)
		}
		if p := f.policies(t, "Bearer "+res.AccessToken, tenant); p.status != http.StatusOK {
			t.Errorf("refresh %d: policies got %d %s, want 200", i, p.status, p.body)
		}
	}
	if got := f.sim.Refreshes(); got != 2 {
		t.Errorf("got Refreshes %d, want 2", got)
	}
	if got := f.sim.RefreshAttempts(); got != 2 {
		t.Errorf("got RefreshAttempts %d, want 2", got)
	}
	if got := f.sim.Logins(); got != 1 {
		t.Errorf("got Logins %d, want 1", got)
	}
}

func TestRefreshRefusals(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	good := f.login(t, email, password)
	cases := []struct {
		name    string
		body    string
		code    string
		message string
	}{
		{"e-mail instead of cognito username", fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, good.RefreshToken, email), CodeNotAuthorized, ""},
		{"another user's username", fmt.Sprintf(`{"refresh_token":%q,"username":"someone-else"}`, good.RefreshToken), CodeNotAuthorized, ""},
		{"unknown refresh token", fmt.Sprintf(`{"refresh_token":"nope","username":%q}`, cogUser), CodeNotAuthorized, "NotAuthorizedException: Invalid Refresh Token"},
		{"access token as refresh token", fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, good.AccessToken, cogUser), CodeNotAuthorized, "NotAuthorizedException: Invalid Refresh Token"},
		{"missing username", fmt.Sprintf(`{"refresh_token":%q}`, good.RefreshToken), CodeUndefined, ""},
		{"missing refresh token", fmt.Sprintf(`{"username":%q}`, cogUser), CodeUndefined, ""},
		{"refreshToken field", fmt.Sprintf(`{"refreshToken":%q,"username":%q}`, good.RefreshToken, cogUser), CodeUndefined, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, f.post(t, "/token/refresh/"+tenant, "application/json", tc.body), http.StatusBadRequest, tc.code, tc.message)
		})
	}
	wantError(t, f.post(t, "/token/refresh/other", "application/json", fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, good.RefreshToken, cogUser)),
		http.StatusBadRequest, CodeUndefined, "Tenant not found.")
	wantError(t, f.post(t, "/token/refresh/"+tenant, "text/plain", fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, good.RefreshToken, cogUser)),
		http.StatusBadRequest, CodeUndefined, "")
	if got := f.sim.Refreshes(); got != 0 {
		t.Errorf("got Refreshes %d, want 0", got)
	}
	if got, want := f.sim.RefreshAttempts(), int64(len(cases)+2); got != want {
		t.Errorf("got RefreshAttempts %d, want %d", got, want)
	}
	// None of the refusals spent the token.
	f.refresh(t, good.RefreshToken, cogUser).authResult(t)
}

func TestRefreshTokenExpiry(t *testing.T) {
	t.Parallel()
	f := start(t, func(o *Options) { o.RefreshTTL = 24 * time.Hour; o.AccessTTL = 10 * time.Minute })
	res := f.login(t, email, password)
	if res.ExpiresIn != 600 {
		t.Errorf("got expires_in %d, want 600", res.ExpiresIn)
	}
	f.clock.Advance(24*time.Hour - time.Second)
	f.refresh(t, res.RefreshToken, cogUser).authResult(t)
	f.clock.Advance(time.Second)
	wantError(t, f.refresh(t, res.RefreshToken, cogUser), http.StatusBadRequest, CodeNotAuthorized, "NotAuthorizedException: Refresh Token has expired")
}

func TestRevokeRefreshTokens(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	old := f.login(t, email, password)
	f.sim.RevokeRefreshTokens()
	wantError(t, f.refresh(t, old.RefreshToken, cogUser), http.StatusBadRequest, CodeNotAuthorized, "NotAuthorizedException: Refresh Token has been revoked")
	// Access tokens outlive the revocation; new logins get working tokens.
	if p := f.policies(t, "Bearer "+old.AccessToken, tenant); p.status != http.StatusOK {
		t.Errorf("policies with the old access token: got %d, want 200", p.status)
	}
	fresh := f.login(t, email, password)
	f.refresh(t, fresh.RefreshToken, cogUser).authResult(t)
	if got := f.sim.Refreshes(); got != 1 {
		t.Errorf("got Refreshes %d, want 1", got)
	}
}

func TestRotateRefreshTokens(t *testing.T) {
	t.Parallel()
	f := start(t, func(o *Options) { o.RotateRefreshTokens = true; o.RefreshTTL = time.Hour * 2 })
	tok := f.login(t, email, password).RefreshToken
	for i := range 3 {
		f.clock.Advance(time.Hour) // past the first token's lifetime by the end
		res, _ := f.refresh(t, tok, cogUser).authResult(t)
		if res.RefreshToken == "" || res.RefreshToken == tok {
			t.Fatalf("refresh %d: got refresh_token %q, want a new one", i, res.RefreshToken)
		}
		wantError(t, f.refresh(t, tok, cogUser), http.StatusBadRequest, CodeNotAuthorized, "NotAuthorizedException: Invalid Refresh Token")
		tok = res.RefreshToken
	}
	if got := f.sim.Refreshes(); got != 3 {
		t.Errorf("got Refreshes %d, want 3", got)
	}
}

func TestSetPassword(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	old := f.login(t, email, password)
	if err := f.sim.SetPassword(email, "new password"); err != nil {
		t.Fatal(err)
	}
	wantError(t, f.postJSON(t, "/login/"+tenant, map[string]string{"username": email, "password": password}),
		http.StatusBadRequest, CodeNotAuthorized, "")
	f.login(t, email, "new password")
	f.refresh(t, old.RefreshToken, cogUser).authResult(t)
	if err := f.sim.SetPassword("nobody@example.com", "x"); err == nil {
		t.Errorf("SetPassword of an unknown user: got nil error, want one")
	}
}

func TestProtectedEndpoint(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	user := f.login(t, email, password)

	other := New(Options{Tenant: tenant, Users: []User{{Email: email, Username: cogUser, Password: password}}})
	ots := httptest.NewServer(other)
	defer ots.Close()
	foreign := fixture{sim: other, ts: ots}.login(t, email, password)

	// A token signed with the right key but another algorithm's header.
	parts := strings.Split(user.AccessToken, ".")
	noneTok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."

	cases := []struct {
		name          string
		authorization string
		tenantHeader  string
		status        int
		message       string
	}{
		{"valid", "Bearer " + user.AccessToken, tenant, http.StatusOK, ""},
		{"lower-case scheme", "bearer " + user.AccessToken, tenant, http.StatusOK, ""},
		{"no authorization", "", tenant, http.StatusUnauthorized, "NotAuthorizedException: Missing Authentication Token"},
		{"token without scheme", user.AccessToken, tenant, http.StatusUnauthorized, "NotAuthorizedException: Invalid Access Token"},
		{"basic scheme", "Basic " + user.AccessToken, tenant, http.StatusUnauthorized, "NotAuthorizedException: Invalid Access Token"},
		{"empty bearer", "Bearer ", tenant, http.StatusUnauthorized, ""},
		{"garbage", "Bearer not-a-jwt", tenant, http.StatusUnauthorized, "NotAuthorizedException: Invalid Access Token"},
		{"id token", "Bearer " + user.IDToken, tenant, http.StatusUnauthorized, "NotAuthorizedException: Invalid Access Token"},
		{"refresh token", "Bearer " + user.RefreshToken, tenant, http.StatusUnauthorized, ""},
		{"alg none", "Bearer " + noneTok, tenant, http.StatusUnauthorized, ""},
		{"another server's token", "Bearer " + foreign.AccessToken, tenant, http.StatusUnauthorized, "NotAuthorizedException: Invalid Access Token"},
		{"no tenant header", "Bearer " + user.AccessToken, "", http.StatusForbidden, ""},
		{"wrong tenant header", "Bearer " + user.AccessToken, "other", http.StatusForbidden, ""},
		{"tenant header in other case", "Bearer " + user.AccessToken, "ACME", http.StatusForbidden, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.policies(t, tc.authorization, tc.tenantHeader)
			if tc.status == http.StatusOK {
				if r.status != http.StatusOK {
					t.Fatalf("got status %d (%s), want 200", r.status, r.body)
				}
				return
			}
			wantError(t, r, tc.status, CodeNotAuthorized, tc.message)
			if tc.status == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("got no WWW-Authenticate on a 401, want one")
			}
		})
	}

	// Every call made with the token carries the JSON Content-Type, as the
	// docs say: a right token and tenant without it are refused.
	for _, tc := range []struct {
		contentType string
		ok          bool
	}{
		{"application/json; charset=UTF-8", true},
		{"application/json; charset=utf-8", true},
		{"application/json", true},
		{"", false},
		{"text/plain", false},
		{"application/json; charset=latin1", false},
		{"application/x-www-form-urlencoded", false},
	} {
		t.Run("content type "+tc.contentType, func(t *testing.T) {
			r := f.policiesAs(t, "Bearer "+user.AccessToken, tenant, tc.contentType)
			if tc.ok {
				if r.status != http.StatusOK {
					t.Errorf("got status %d (%s), want 200", r.status, r.body)
				}
				return
			}
			wantError(t, r, http.StatusBadRequest, CodeUndefined, "Content-Type must be application/json.")
		})
	}
}

func TestAccessTokenExpiry(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	res := f.login(t, email, password)
	f.clock.Advance(time.Hour - time.Second)
	if r := f.policies(t, "Bearer "+res.AccessToken, tenant); r.status != http.StatusOK {
		t.Fatalf("one second before expiry: got %d, want 200", r.status)
	}
	f.clock.Advance(time.Second)
	wantError(t, f.policies(t, "Bearer "+res.AccessToken, tenant), http.StatusUnauthorized, CodeNotAuthorized, "NotAuthorizedException: Access Token has expired")
	// The refresh gives a working token again, without a new login.
	again, _ := f.refresh(t, res.RefreshToken, cogUser).authResult(t)
	if r := f.policies(t, "Bearer "+again.AccessToken, tenant); r.status != http.StatusOK {
		t.Errorf("after refresh: got %d, want 200", r.status)
	}
	if f.sim.Logins() != 1 || f.sim.Refreshes() != 1 {
		t.Errorf("got Logins %d Refreshes %d, want 1 1", f.sim.Logins(), f.sim.Refreshes())
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	loginBody := fmt.Sprintf(`{"username":%q,"password":%q}`, email, password)
	cases := []struct {
		name       string
		fault      Fault
		wantStatus int
		wantCode   string
		wantBody   string
	}{
		{"throttled, default status", Fault{Code: CodeTooManyRequests}, http.StatusBadRequest, CodeTooManyRequests, ""},
		{"throttled as 429", Fault{Code: CodeTooManyRequests, Status: http.StatusTooManyRequests}, http.StatusTooManyRequests, CodeTooManyRequests, ""},
		{"locked out", Fault{Endpoint: EndpointLogin, Code: CodeTooManyFailedAttempts, Message: "custom"}, http.StatusBadRequest, CodeTooManyFailedAttempts, ""},
		{"undefined", Fault{Code: CodeUndefined}, http.StatusInternalServerError, CodeUndefined, ""},
		{"raw 503", Fault{Status: http.StatusServiceUnavailable, Body: `{"message":"Service Unavailable"}`}, http.StatusServiceUnavailable, "", `{"message":"Service Unavailable"}`},
		{"raw 502 no body", Fault{Status: http.StatusBadGateway}, http.StatusBadGateway, "", ""},
		{"garbage", Fault{Garbage: true}, http.StatusOK, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, nil)
			f.sim.SetFault(tc.fault)
			r := f.post(t, "/login/"+tenant, "application/json", loginBody)
			if r.status != tc.wantStatus {
				t.Fatalf("got status %d (%s), want %d", r.status, r.body, tc.wantStatus)
			}
			switch {
			case tc.wantCode != "":
				e := r.errors(t)[0]
				if e.Code != tc.wantCode {
					t.Errorf("got code %q, want %q", e.Code, tc.wantCode)
				}
				if tc.fault.Message != "" && e.Message != tc.fault.Message {
					t.Errorf("got message %q, want %q", e.Message, tc.fault.Message)
				}
				if tc.fault.Message == "" && e.Message == "" {
					t.Errorf("got an empty message, want the code's default")
				}
			case tc.fault.Garbage:
				if json.Valid(r.body) {
					t.Errorf("got JSON body %s, want garbage", r.body)
				}
			default:
				if string(r.body) != tc.wantBody {
					t.Errorf("got body %q, want %q", r.body, tc.wantBody)
				}
			}
			if f.sim.Logins() != 0 || f.sim.LoginAttempts() != 1 {
				t.Errorf("got Logins %d LoginAttempts %d, want 0 1", f.sim.Logins(), f.sim.LoginAttempts())
			}
			f.sim.SetFault(Fault{})
			f.login(t, email, password)
		})
	}
}

func TestFaultTargetsEndpoint(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	good := f.login(t, email, password)
	clientBody := map[string]string{"client_id": clientID, "client_secret": secret, "scope": "auth/" + tenant}
	loginBody := map[string]string{"username": email, "password": password}
	refreshBody := map[string]string{"refresh_token": good.RefreshToken, "username": cogUser}
	for _, ep := range []Endpoint{EndpointLogin, EndpointClient, EndpointRefresh} {
		t.Run(string(ep), func(t *testing.T) {
			f.sim.SetFault(Fault{Endpoint: ep, Code: CodeTooManyRequests, Status: http.StatusTooManyRequests})
			defer f.sim.SetFault(Fault{})
			for _, call := range []struct {
				ep   Endpoint
				path string
				body any
			}{
				{EndpointLogin, "/login/" + tenant, loginBody},
				{EndpointClient, "/token/client/" + tenant, clientBody},
				{EndpointRefresh, "/token/refresh/" + tenant, refreshBody},
			} {
				r := f.postJSON(t, call.path, call.body)
				want := http.StatusOK
				if call.ep == ep {
					want = http.StatusTooManyRequests
				}
				if r.status != want {
					t.Errorf("%s: got status %d (%s), want %d", call.ep, r.status, r.body, want)
				}
			}
		})
	}
	// A fault on every endpoint faults all three; the protected endpoint is never faulted.
	f.sim.SetFault(Fault{Status: http.StatusInternalServerError})
	for _, path := range []string{"/login/" + tenant, "/token/client/" + tenant, "/token/refresh/" + tenant} {
		if r := f.post(t, path, "application/json", `{}`); r.status != http.StatusInternalServerError {
			t.Errorf("%s: got status %d, want 500", path, r.status)
		}
	}
	if r := f.policies(t, "Bearer "+good.AccessToken, tenant); r.status != http.StatusOK {
		t.Errorf("policies under a fault: got %d, want 200", r.status)
	}
}

func TestFaultTimes(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	f.sim.SetFault(Fault{Endpoint: EndpointLogin, Status: http.StatusServiceUnavailable, Times: 2})
	body := map[string]string{"username": email, "password": password}
	var got []int
	for range 4 {
		got = append(got, f.postJSON(t, "/login/"+tenant, body).status)
	}
	if want := []int{503, 503, 200, 200}; !slices.Equal(got, want) {
		t.Errorf("got statuses %v, want %v", got, want)
	}
	if f.sim.Logins() != 2 || f.sim.LoginAttempts() != 4 {
		t.Errorf("got Logins %d LoginAttempts %d, want 2 4", f.sim.Logins(), f.sim.LoginAttempts())
	}
}

func TestFaultHang(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	// Cleanups run last-in first-out: release anything still held before
	// the server's Close waits for it.
	t.Cleanup(func() { f.sim.SetFault(Fault{}) })
	f.sim.SetFault(Fault{Endpoint: EndpointRefresh, Hang: true})
	// Other endpoints answer while the refresh hangs.
	res := f.login(t, email, password)
	body := fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, res.RefreshToken, cogUser)

	type outcome struct {
		status int
		err    error
	}
	hang := func(ctx context.Context) <-chan outcome {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.ts.URL+PathPrefix+"/token/refresh/"+tenant, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		done := make(chan outcome, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- outcome{err: err}
				return
			}
			resp.Body.Close()
			done <- outcome{status: resp.StatusCode}
		}()
		return done
	}
	// waitHeld waits until n refresh requests reached the handler, then a
	// little longer to see that none of them was answered. Hanging is a matter
	// of real time, so this waits on the wall clock, briefly.
	waitHeld := func(t *testing.T, n int64, done <-chan outcome) {
		t.Helper()
		for f.sim.RefreshAttempts() < n {
			time.Sleep(time.Millisecond)
		}
		select {
		case o := <-done:
			t.Fatalf("refresh answered %d %v while the fault holds it, want it to hang", o.status, o.err)
		case <-time.After(50 * time.Millisecond):
		}
	}

	t.Run("client gives up", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := hang(ctx)
		waitHeld(t, 1, done)
		cancel()
		if o := <-done; !errors.Is(o.err, context.Canceled) {
			t.Errorf("got %d %v, want context.Canceled", o.status, o.err)
		}
	})
	t.Run("SetFault releases", func(t *testing.T) {
		done := hang(context.Background())
		waitHeld(t, 2, done)
		f.sim.SetFault(Fault{})
		if o := <-done; o.err != nil || o.status != http.StatusGatewayTimeout {
			t.Errorf("got %d %v, want 504", o.status, o.err)
		}
	})
	if f.sim.Refreshes() != 0 {
		t.Errorf("got Refreshes %d, want 0", f.sim.Refreshes())
	}
	// With the fault cleared, the refresh token still works.
	f.refresh(t, res.RefreshToken, cogUser).authResult(t)
}

// send is a request helper for goroutines other than the test's, which must
// not call t.Fatal: it reports failures as errors.
func send(method, url, authorization, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != "" || authorization != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
		req.Header.Set("X-TENANT-ID", tenant)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	base := f.ts.URL + PathPrefix
	const workers, rounds = 8, 10
	errs := make(chan error, workers*rounds*4)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				status, b, err := send(http.MethodPost, base+"/login/"+tenant, "", fmt.Sprintf(`{"username":%q,"password":%q}`, email, password))
				if err != nil || status != http.StatusOK {
					errs <- fmt.Errorf("login: got %d %s %v, want 200", status, b, err)
					continue
				}
				var ans struct {
					AuthenticationResult result `json:"authentication_result"`
				}
				if err := json.Unmarshal(b, &ans); err != nil {
					errs <- err
					continue
				}
				res := ans.AuthenticationResult
				// A concurrent revocation may refuse the refresh: both answers are fine.
				if status, b, err := send(http.MethodPost, base+"/token/refresh/"+tenant, "", fmt.Sprintf(`{"refresh_token":%q,"username":%q}`, res.RefreshToken, cogUser)); err != nil || (status != http.StatusOK && status != http.StatusBadRequest) {
					errs <- fmt.Errorf("refresh: got %d %s %v, want 200 or 400", status, b, err)
				}
				// A concurrent one-shot fault may answer 502.
				if status, b, err := send(http.MethodPost, base+"/token/client/"+tenant, "", fmt.Sprintf(`{"client_id":%q,"client_secret":%q,"scope":"auth/acme"}`, clientID, secret)); err != nil || (status != http.StatusOK && status != http.StatusBadGateway) {
					errs <- fmt.Errorf("client: got %d %s %v, want 200 or 502", status, b, err)
				}
				if status, b, err := send(http.MethodGet, f.ts.URL+PoliciesPath, "Bearer "+res.AccessToken, ""); err != nil || status != http.StatusOK {
					errs <- fmt.Errorf("policies: got %d %s %v, want 200", status, b, err)
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			f.sim.RevokeRefreshTokens()
			f.sim.SetFault(Fault{Endpoint: EndpointClient, Status: http.StatusBadGateway, Times: 1})
			if err := f.sim.SetPassword("bob@example.com", "bobpw2"); err != nil {
				errs <- err
			}
			f.sim.Username(email)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := f.sim.Logins(), int64(workers*rounds); got != want {
		t.Errorf("got Logins %d, want %d", got, want)
	}
	if got, want := f.sim.RefreshAttempts(), int64(workers*rounds); got != want {
		t.Errorf("got RefreshAttempts %d, want %d", got, want)
	}
	if got, want := f.sim.ClientLoginAttempts(), int64(workers*rounds); got != want {
		t.Errorf("got ClientLoginAttempts %d, want %d", got, want)
	}
	if got := f.sim.ClientLogins(); got < int64(workers*rounds-rounds) || got > int64(workers*rounds) {
		t.Errorf("got ClientLogins %d, want between %d and %d", got, workers*rounds-rounds, workers*rounds)
	}
}

func TestNewRefusesInconsistentOptions(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		o    Options
	}{
		{"username equals email", Options{Users: []User{{Email: email, Username: email}}}},
		{"username equals email in other case", Options{Users: []User{{Email: email, Username: strings.ToUpper(email)}}}},
		{"duplicate email", Options{Users: []User{{Email: email}, {Email: strings.ToUpper(email)}}}},
		{"duplicate username", Options{Users: []User{{Email: email, Username: "u"}, {Email: "b@example.com", Username: "u"}}}},
		{"empty email", Options{Users: []User{{Username: "u"}}}},
		{"duplicate client", Options{Clients: []Client{{ID: "a"}, {ID: "a"}}}},
		{"empty client id", Options{Clients: []Client{{Secret: "x"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Errorf("got no panic, want one")
				}
			}()
			New(tc.o)
		})
	}
}

func TestRevokeAccessToken(t *testing.T) {
	t.Parallel()
	f := start(t, nil)
	revoked := f.login(t, email, password)
	other := f.login(t, email, password)
	f.sim.Revoke(revoked.AccessToken)
	wantError(t, f.policies(t, "Bearer "+revoked.AccessToken, tenant), http.StatusUnauthorized, CodeNotAuthorized, "NotAuthorizedException: Access Token has been revoked")
	if p := f.policies(t, "Bearer "+other.AccessToken, tenant); p.status != http.StatusOK {
		t.Errorf("another access token of the same user: got %d, want 200", p.status)
	}
	// The refresh token outlives the revocation: it gives a working token.
	again, _ := f.refresh(t, revoked.RefreshToken, cogUser).authResult(t)
	if p := f.policies(t, "Bearer "+again.AccessToken, tenant); p.status != http.StatusOK {
		t.Errorf("the refreshed access token: got %d, want 200", p.status)
	}
	if got := f.sim.PolicyCalls(); got != 3 {
		t.Errorf("got PolicyCalls %d, want 3 (the refused one included)", got)
	}
}
