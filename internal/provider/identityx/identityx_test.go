package identityx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/identityx"
	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

var now = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)

func fixed() time.Time { return now }

// otherAppID is a second application, so that an AppUser token can be
// presented with the wrong x-app-id.
const otherAppID = "5f00000000000000000000a2"

// startSim serves a simulator with the default organisation user and the
// default app (plus otherAppID) on a loopback listener, and releases any
// hanging request before closing it.
func startSim(t *testing.T) (*identityxsim.Server, *httptest.Server) {
	t.Helper()
	sim := identityxsim.New(identityxsim.Options{
		Now: fixed,
		Apps: []identityxsim.App{
			{ID: identityxsim.DefaultAppID, Users: []identityxsim.User{{ID: identityxsim.DefaultAppUserID, Email: identityxsim.DefaultAppUserEmail}}},
			{ID: otherAppID, Users: []identityxsim.User{{Email: "other@example.com"}}},
		},
	})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { sim.SetFault(identityxsim.Fault{}) }) // runs before Close
	return sim, srv
}

// credential is one credential kind with a live token of the simulator.
type credential struct {
	kind  identityx.Credential
	word  string
	appID string
	jwt   string
	query string // the protected query that must accept the vended headers
}

func credentials(sim *identityxsim.Server) []credential {
	return []credential{
		{identityx.OrgUserAPIToken, "OrgUserApiToken", "", sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail), "{ activeUser { id email } }"},
		{identityx.OrgUser, "OrgUser", "", sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail), "{ activeUser { id email } }"},
		{identityx.AppUser, "AppUser", identityxsim.DefaultAppID,
			sim.IssueAppUserToken(identityxsim.DefaultAppID, identityxsim.DefaultAppUserEmail), "{ activeAppUser { id email } }"},
	}
}

// newClient validates cfg (filling its defaults) and builds a Client.
func newClient(t *testing.T, cfg identityx.Config, hc *http.Client) *identityx.Client {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return identityx.New(cfg, hc, fixed)
}

func clientFor(t *testing.T, srv *httptest.Server, c credential) *identityx.Client {
	t.Helper()
	return newClient(t, identityx.Config{
		Endpoint:   srv.URL + "/graphql",
		Credential: c.kind,
		Token:      secret.Literal(c.jwt),
		AppID:      c.appID,
	}, srv.Client())
}

// answer is a GraphQL answer as the test reads it.
type answer struct {
	Data   map[string]map[string]string `json:"data"`
	Errors []struct {
		Message    string            `json:"message"`
		Extensions map[string]string `json:"extensions"`
	} `json:"errors"`
}

func (a answer) code() string {
	if len(a.Errors) == 0 {
		return ""
	}
	return a.Errors[0].Extensions["code"]
}

// gql makes a GraphQL call of its own (not the client's) to the simulator
// with headers copied onto it, as a service using a vended credential
// would.
func gql(t *testing.T, endpoint string, headers map[string]string, query string) (int, answer) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"query": query})
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	var a answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("POST %s: answer is not JSON: %v", endpoint, err)
	}
	return resp.StatusCode, a
}

var kindNames = map[token.Kind]string{
	token.KindInternal: "KindInternal", token.KindInvalid: "KindInvalid", token.KindNotFound: "KindNotFound",
	token.KindDenied: "KindDenied", token.KindRejected: "KindRejected", token.KindUnavailable: "KindUnavailable",
}

// wantErr is what a failed call must report.
type wantErr struct {
	kind     token.Kind
	reason   string
	upstream string
}

var unavailable = wantErr{kind: token.KindUnavailable, reason: token.ReasonUpstreamUnavailable}

func rejected(reason, code string) wantErr { return wantErr{token.KindRejected, reason, code} }

// checkErr asserts that err is a *token.Error as w says and that neither
// its Error() nor its Message holds any of secrets.
func checkErr(t *testing.T, err error, w wantErr, secrets ...string) *token.Error {
	t.Helper()
	var e *token.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %T (%v), want *token.Error %s %s", err, err, kindNames[w.kind], w.reason)
	}
	if e.Kind != w.kind || e.Reason != w.reason || e.Upstream != w.upstream {
		t.Errorf("got %s %q upstream %q, want %s %q upstream %q (error: %v)",
			kindNames[e.Kind], e.Reason, e.Upstream, kindNames[w.kind], w.reason, w.upstream, err)
	}
	if e.Message == "" {
		t.Error("Message: got empty, want a message a caller can act on")
	}
	for _, text := range []string{err.Error(), e.Message} {
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("error %q holds a secret (%.12s...), want none", text, s)
			}
		}
	}
	return e
}

func TestTokenEachCredential(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	for _, c := range credentials(sim) {
		t.Run(string(c.kind), func(t *testing.T) {
			t.Parallel()
			tok, err := clientFor(t, srv, c).Token(t.Context(), token.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			wantHeaders := map[string]string{"Authorization": c.word + " " + c.jwt}
			if c.appID != "" {
				wantHeaders["x-app-id"] = c.appID
			}
			if tok.AccessToken != c.jwt || tok.Type != c.word || !maps.Equal(tok.Headers, wantHeaders) {
				t.Errorf("got %q %q %v, want the configured token, type %q, headers %v", tok.AccessToken, tok.Type, tok.Headers, c.word, wantHeaders)
			}
			if !tok.Expiry.IsZero() || !tok.IssuedAt.Equal(now) || tok.CheckEvery != identityx.DefaultCheckInterval {
				t.Errorf("got Expiry %v IssuedAt %v CheckEvery %v, want no expiry, issued now, checked every %v",
					tok.Expiry, tok.IssuedAt, tok.CheckEvery, identityx.DefaultCheckInterval)
			}
			// The vended headers, used as they are, pass the protected query.
			status, a := gql(t, srv.URL+"/graphql", tok.Headers, c.query)
			if status != http.StatusOK || len(a.Errors) > 0 {
				t.Fatalf("protected query with the vended headers: got %d %s, want 200 and no errors", status, a.code())
			}
			for _, u := range a.Data {
				if u["id"] == "" {
					t.Errorf("protected query: got %v, want the user", a.Data)
				}
			}
		})
	}
}

// TestSimulatorRefusesBearer proves the simulator is strict about the
// Authorization word, so TestTokenEachCredential would fail for a client
// that added Bearer or used the wrong word.
func TestSimulatorRefusesBearer(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	for _, c := range credentials(sim) {
		headers := func(auth string) map[string]string {
			h := map[string]string{"Authorization": auth}
			if c.appID != "" {
				h["x-app-id"] = c.appID
			}
			return h
		}
		wrongWord := "OrgUser"
		if c.word == "OrgUser" {
			wrongWord = "AppUser"
		}
		for _, auth := range []string{"Bearer " + c.jwt, "Bearer " + c.word + " " + c.jwt, wrongWord + " " + c.jwt, c.jwt} {
			status, a := gql(t, srv.URL+"/graphql", headers(auth), c.query)
			if status != http.StatusOK || a.code() != "UNAUTHENTICATED" {
				t.Errorf("%s with %q: got %d %q, want 200 UNAUTHENTICATED", c.kind, strings.Replace(auth, c.jwt, "<jwt>", 1), status, a.code())
			}
		}
		if c.appID != "" {
			status, a := gql(t, srv.URL+"/graphql", map[string]string{"Authorization": c.word + " " + c.jwt}, c.query)
			if a.code() != "BAD_USER_INPUT" {
				t.Errorf("AppUser without x-app-id: got %d %q, want BAD_USER_INPUT", status, a.code())
			}
		}
	}
}

func TestTokenSendsOrgID(t *testing.T) {
	t.Parallel()
	sim := identityxsim.New(identityxsim.Options{})
	got := make(chan http.Header, 1)
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Clone():
		default:
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(rec.Close)
	jwt := sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail)
	c := newClient(t, identityx.Config{Endpoint: rec.URL + "/graphql", Credential: identityx.OrgUserAPIToken,
		Token: secret.Literal(jwt), OrgID: "org-42", CheckInterval: 10 * time.Minute}, rec.Client())
	tok, err := c.Token(t.Context(), token.Request{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Authorization": "OrgUserApiToken " + jwt, "x-org-id": "org-42"}
	if !maps.Equal(tok.Headers, want) || tok.CheckEvery != 10*time.Minute {
		t.Errorf("got headers %v CheckEvery %v, want %v and 10m", tok.Headers, tok.CheckEvery, want)
	}
	h := <-got
	if h.Get("x-org-id") != "org-42" || h.Get("Authorization") != want["Authorization"] || h.Get("Content-Type") != "application/json" {
		t.Errorf("check request headers: got %v, want the vended headers and Content-Type application/json", h)
	}
}

func TestTokenRejected(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	const apiTok, orgTok, appTok = 0, 1, 2 // in credentials()
	tests := []struct {
		name    string
		c       int
		prepare func(c *credential)
		want    wantErr
		inMsg   []string
	}{
		{"revoked API token", apiTok, func(c *credential) { sim.Revoke(c.jwt) },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), []string{"revoked", "tokenvend identityx"}},
		{"revoked OrgUser token", orgTok, func(c *credential) { sim.Revoke(c.jwt) },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), []string{"revoked", "OrgUser"}},
		{"revoked AppUser token", appTok, func(c *credential) { sim.Revoke(c.jwt) },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), []string{"revoked", "AppUser"}},
		{"AppUser token configured as org_user", appTok, func(c *credential) { c.kind, c.appID = identityx.OrgUser, "" },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), []string{"not an OrgUser token"}},
		{"API token configured as org_user", apiTok, func(c *credential) { c.kind = identityx.OrgUser },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), nil},
		{"not a token at all", apiTok, func(c *credential) { c.jwt = "eyJhbGciOiJIUzI1NiJ9.e30.forged" },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), nil},
		{"AppUser token of another app", appTok, func(c *credential) { c.appID = otherAppID },
			rejected(token.ReasonCredentialsRejected, "FORBIDDEN"), []string{"app_id"}},
		{"unknown app_id", appTok, func(c *credential) { c.appID = "5f00000000000000000000ff" },
			rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT"), []string{"app_id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			issued := credentials(sim)[tt.c] // fresh tokens: other cases revoke theirs
			c := issued
			tt.prepare(&c)
			tok, err := clientFor(t, srv, c).Token(t.Context(), token.Request{})
			if tok != nil {
				t.Fatalf("got a token, want %s", tt.want.reason)
			}
			e := checkErr(t, err, tt.want, c.jwt, issued.jwt)
			for _, s := range tt.inMsg {
				if !strings.Contains(e.Message, s) {
					t.Errorf("Message %q: want it to mention %q", e.Message, s)
				}
			}
		})
	}
}

func TestTokenUpstreamAnswers(t *testing.T) {
	t.Parallel()
	sim, _ := startSim(t)
	jwt := sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail)
	answer := func(status int, body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		})
	}
	faulty := func(f identityxsim.Fault) http.Handler {
		s := identityxsim.New(identityxsim.Options{})
		s.SetFault(f)
		return s
	}
	tests := []struct {
		name    string
		handler http.Handler
		path    string
		want    wantErr
	}{
		{"502", faulty(identityxsim.Fault{Status: 502}), "/graphql", unavailable},
		{"503", faulty(identityxsim.Fault{Status: 503}), "/graphql", unavailable},
		{"200 not JSON", faulty(identityxsim.Fault{Garbage: true}), "/graphql", unavailable},
		{"404: not the GraphQL path", sim, "/api", unavailable},
		{"500 with GraphQL errors", answer(500, `{"errors":[{"message":"boom","extensions":{"code":"INTERNAL_SERVER_ERROR"}}]}`), "/graphql", unavailable},
		{"200 INTERNAL_SERVER_ERROR", answer(200, `{"errors":[{"message":"boom","extensions":{"code":"INTERNAL_SERVER_ERROR"}}],"data":null}`), "/graphql",
			wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, "INTERNAL_SERVER_ERROR"}},
		{"200 error code that is free text", answer(200, `{"errors":[{"message":"x","extensions":{"code":"token `+jwt+`"}}],"data":null}`), "/graphql",
			wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, "UNRECOGNISED"}},
		{"200 errors without code", answer(200, `{"errors":[{"message":"x"}],"data":null}`), "/graphql",
			wantErr{token.KindUnavailable, token.ReasonUpstreamUnavailable, "UNRECOGNISED"}},
		// A failed nullable field answers data with the field null, and
		// errors: the errors decide.
		{"200 data with errors", answer(200, `{"errors":[{"message":"x","extensions":{"code":"UNAUTHENTICATED"}}],"data":{"activeUser":{"id":"1"}}}`), "/graphql",
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED")},
		{"200 activeUser null without errors", answer(200, `{"data":{"activeUser":null}}`), "/graphql", unavailable},
		{"200 data null without errors", answer(200, `{"data":null}`), "/graphql", unavailable},
		{"200 activeUser without id", answer(200, `{"data":{"activeUser":{}}}`), "/graphql", unavailable},
		{"400 without errors", answer(400, `{}`), "/graphql", unavailable},
		{"400 validation failed: not IdentityX", answer(400, `{"errors":[{"message":"Cannot query field \"activeUser\" on type \"Query\".","extensions":{"code":"GRAPHQL_VALIDATION_FAILED"}}]}`), "/graphql",
			rejected(identityx.ReasonConfigRejected, "GRAPHQL_VALIDATION_FAILED")},
		{"405 from a GET-only server", answer(405, `{}`), "/graphql", unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			c := newClient(t, identityx.Config{Endpoint: srv.URL + tt.path, Credential: identityx.OrgUserAPIToken, Token: secret.Literal(jwt)}, srv.Client())
			tok, err := c.Token(t.Context(), token.Request{})
			if tok != nil {
				t.Fatalf("got a token, want an error")
			}
			checkErr(t, err, tt.want, jwt)
		})
	}
}

func TestTokenUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := newClient(t, identityx.Config{Endpoint: url + "/graphql", Credential: identityx.OrgUser, Token: secret.Literal("eyJ.x.y")}, http.DefaultClient)
	_, err := c.Token(t.Context(), token.Request{})
	checkErr(t, err, unavailable, "eyJ.x.y")
}

func TestTokenHonoursContext(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	c := clientFor(t, srv, credentials(sim)[0])
	sim.SetFault(identityxsim.Fault{Hang: true})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := c.Token(ctx, token.Request{}); done <- err }()
	select {
	case err := <-done:
		e := checkErr(t, err, unavailable)
		if !strings.Contains(e.Message, "in time") {
			t.Errorf("Message %q: want it to say the upstream did not answer in time", e.Message)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Token did not return when its context ended")
	}
}

// yamlSecret builds a Secret the way a config file does.
func yamlSecret(t *testing.T, src string) secret.Secret {
	t.Helper()
	var s secret.Secret
	if err := yaml.Unmarshal([]byte(src), &s); err != nil {
		t.Fatalf("yaml.Unmarshal(%q): %v", src, err)
	}
	return s
}

// TestTokenRereadsTokenFile: an operator who re-enrols writes the new token
// into the secret file, and the next check uses it without a restart.
func TestTokenRereadsTokenFile(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	old := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, identityx.Config{Endpoint: srv.URL + "/graphql", Credential: identityx.OrgUser, Token: yamlSecret(t, "{file: "+path+"}")}, srv.Client())
	if tok, err := c.Token(t.Context(), token.Request{}); err != nil || tok.AccessToken != old {
		t.Fatalf("first check: got %v, %v; want the file's token", tok, err)
	}
	sim.Revoke(old)
	_, err := c.Token(t.Context(), token.Request{})
	checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), old)

	renewed := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	if err := os.WriteFile(path, []byte(renewed+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.Token(t.Context(), token.Request{}); err != nil || tok.AccessToken != renewed {
		t.Fatalf("after the file was rewritten: got %v, %v; want the new token", tok, err)
	}
}

func TestTokenLocalFailuresAskNothing(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("eyJ.x.y"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, identityx.Config{Endpoint: srv.URL + "/graphql", Credential: identityx.OrgUser, Token: yamlSecret(t, "{file: "+path+"}")}, srv.Client())

	// The file is rewritten with the whole header value: a common mistake.
	if err := os.WriteFile(path, []byte("Bearer eyJ.x.y"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := c.Token(t.Context(), token.Request{})
	checkErr(t, err, rejected(identityx.ReasonConfigRejected, ""), "eyJ.x.y")

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = c.Token(t.Context(), token.Request{})
	checkErr(t, err, rejected(token.ReasonSecretUnreadable, ""))
	if got := sim.Queries(); got != 0 {
		t.Errorf("simulator queries: got %d, want 0", got)
	}
}

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
	const unsetEnv = "TOKENVEND_IDENTITYX_TEST_SURELY_UNSET_TOKEN"
	if _, ok := os.LookupEnv(unsetEnv); ok {
		t.Fatalf("%s is set in the environment; the test needs it unset", unsetEnv)
	}
	valid := func() identityx.Config {
		return identityx.Config{
			Endpoint:   "https://identity-x.example.com/graphql",
			Credential: identityx.AppUser,
			Token:      secret.Literal("eyJ.x.y"),
			AppID:      identityxsim.DefaultAppID,
		}
	}
	tests := []struct {
		name      string
		edit      func(*identityx.Config)
		wantPaths []string
		wantInMsg string
		wantCheck time.Duration
	}{
		{name: "valid", edit: func(*identityx.Config) {}, wantCheck: time.Hour},
		{name: "org_user needs no app_id", edit: func(c *identityx.Config) { c.Credential, c.AppID = identityx.OrgUser, "" }, wantCheck: time.Hour},
		{name: "check_interval kept", edit: func(c *identityx.Config) { c.CheckInterval = 10 * time.Minute }, wantCheck: 10 * time.Minute},
		{name: "check_interval too short", edit: func(c *identityx.Config) { c.CheckInterval = time.Second }, wantPaths: []string{"check_interval"}},
		{name: "check_interval negative", edit: func(c *identityx.Config) { c.CheckInterval = -time.Hour }, wantPaths: []string{"check_interval"}},
		{name: "endpoint missing", edit: func(c *identityx.Config) { c.Endpoint = "" }, wantPaths: []string{"endpoint"}},
		{name: "endpoint not http", edit: func(c *identityx.Config) { c.Endpoint = "ws://identity-x.example.com/graphql" }, wantPaths: []string{"endpoint"}},
		{name: "credential missing", edit: func(c *identityx.Config) { c.Credential = "" }, wantPaths: []string{"credential"}, wantInMsg: "org_user_api_token"},
		{name: "credential unknown", edit: func(c *identityx.Config) { c.Credential = "Bearer" }, wantPaths: []string{"credential"}, wantInMsg: "app_user"},
		{name: "credential as the header word", edit: func(c *identityx.Config) { c.Credential = "OrgUserApiToken" }, wantPaths: []string{"credential"}},
		{name: "app_user without app_id", edit: func(c *identityx.Config) { c.AppID = "" }, wantPaths: []string{"app_id"}},
		{name: "app_id with a space", edit: func(c *identityx.Config) { c.AppID = "a b" }, wantPaths: []string{"app_id"}},
		{name: "org_id with a newline", edit: func(c *identityx.Config) { c.OrgID = "o\nx-evil: 1" }, wantPaths: []string{"org_id"}},
		{name: "token not set", edit: func(c *identityx.Config) { c.Token = secret.Secret{} }, wantPaths: []string{"token"}},
		{name: "token env unset", edit: func(c *identityx.Config) { c.Token = yamlSecret(t, "{env: "+unsetEnv+"}") },
			wantPaths: []string{"token"}, wantInMsg: unsetEnv},
		{name: "token with the Bearer word", edit: func(c *identityx.Config) { c.Token = secret.Literal("Bearer eyJ.x.y") },
			wantPaths: []string{"token"}, wantInMsg: "Authorization word"},
		{name: "token with its own word", edit: func(c *identityx.Config) { c.Token = secret.Literal("AppUser eyJ.x.y") },
			wantPaths: []string{"token"}},
		{name: "everything wrong", edit: func(c *identityx.Config) { *c = identityx.Config{CheckInterval: time.Nanosecond} },
			wantPaths: []string{"check_interval", "credential", "endpoint", "token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := valid()
			tt.edit(&c)
			err := c.Validate()
			if got := fieldPaths(t, err); !slices.Equal(got, tt.wantPaths) {
				t.Fatalf("bad fields: got %v, want %v (error: %v)", got, tt.wantPaths, err)
			}
			if err != nil {
				if tt.wantInMsg != "" && !strings.Contains(err.Error(), tt.wantInMsg) {
					t.Errorf("error %q: want it to mention %q", err, tt.wantInMsg)
				}
				if strings.Contains(err.Error(), "eyJ.x.y") {
					t.Errorf("error %q holds the token", err)
				}
				return
			}
			if c.CheckInterval != tt.wantCheck {
				t.Errorf("check_interval: got %v, want %v", c.CheckInterval, tt.wantCheck)
			}
		})
	}
}
