package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
)

// cli runs tokenvend with args and returns its stdout, stderr and error.
func cli(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// printedToken checks that stdout holds exactly one token line and nothing
// else, and returns the token.
func printedToken(t *testing.T, what, stdout string) string {
	t.Helper()
	tok, ok := strings.CutSuffix(stdout, "\n")
	if !ok || tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		t.Fatalf("%s: stdout %q, want one token and a newline, nothing else", what, stdout)
	}
	return tok
}

// accepts reports whether the simulator's protected query accepts the
// Authorization header auth (with x-app-id appID when set).
func accepts(t *testing.T, endpoint, auth, appID, query string) bool {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"query": query})
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	if appID != "" {
		req.Header.Set("x-app-id", appID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		Data   map[string]map[string]string `json:"data"`
		Errors []any                        `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode == http.StatusOK && len(a.Errors) == 0 && len(a.Data) == 1
}

func startIdentityX(t *testing.T) (*identityxsim.Server, string) {
	t.Helper()
	sim := identityxsim.New(identityxsim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL + "/graphql"
}

// TestIdentityXEnrolment runs the whole enrolment through the CLI: mail a
// link, exchange it, make an API token, and uses each printed token on
// the simulator. It is not parallel: it runs in an empty working and home
// directory to check that nothing is written to disk.
func TestIdentityXEnrolment(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("HOME", dir)
	t.Setenv("XDG_CONFIG_HOME", dir)
	sim, endpoint := startIdentityX(t)

	stdout, stderr, err := cli(t, "identityx", "send-link", "--endpoint", endpoint, "--email", identityxsim.DefaultOrgUserEmail)
	if err != nil || stdout != "" || !strings.Contains(stderr, "tokenvend identityx login --endpoint "+endpoint) {
		t.Fatalf("send-link: got err %v, stdout %q, stderr %q; want success, empty stdout, the next command on stderr", err, stdout, stderr)
	}
	link, ok := sim.LastLinkToken(identityxsim.DefaultOrgUserEmail)
	if !ok {
		t.Fatal("send-link: no mail in the simulator's outbox")
	}

	stdout, stderr, err = cli(t, "identityx", "login", "--endpoint", endpoint, "--link-token", link)
	if err != nil {
		t.Fatalf("login: %v (stderr %q)", err, stderr)
	}
	orgTok := printedToken(t, "login", stdout)
	if !accepts(t, endpoint, "OrgUser "+orgTok, "", "{ activeUser { id } }") {
		t.Fatal("the printed OrgUser token is not accepted by activeUser")
	}
	if strings.Contains(stderr, orgTok) || !strings.Contains(stderr, "org_user") {
		t.Errorf("login stderr %q: want the credential kind and not the token", stderr)
	}

	stdout, stderr, err = cli(t, "identityx", "api-token", "--endpoint", endpoint, "--org-user-token", orgTok)
	if err != nil {
		t.Fatalf("api-token: %v (stderr %q)", err, stderr)
	}
	apiTok := printedToken(t, "api-token", stdout)
	if apiTok == orgTok || !accepts(t, endpoint, "OrgUserApiToken "+apiTok, "", "{ activeUser { id } }") {
		t.Fatal("the printed API token is not an OrgUserApiToken accepted by activeUser")
	}
	if strings.Contains(stderr, apiTok) {
		t.Errorf("api-token stderr %q holds the token", stderr)
	}

	// The app-user path.
	const authURL = "https://app.example.com/auth"
	app := identityxsim.DefaultAppID
	stdout, stderr, err = cli(t, "identityx", "send-link", "--endpoint", endpoint, "--email", identityxsim.DefaultAppUserEmail,
		"--app-id", app, "--auth-url", authURL)
	if err != nil || stdout != "" || !strings.Contains(stderr, "--app-id "+app) {
		t.Fatalf("send-link --app-id: got err %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	link, _ = sim.LastLinkToken(identityxsim.DefaultAppUserEmail)
	stdout, _, err = cli(t, "identityx", "login", "--endpoint", endpoint, "--link-token", link, "--app-id", app)
	if err != nil {
		t.Fatalf("login --app-id: %v", err)
	}
	appTok := printedToken(t, "login --app-id", stdout)
	if !accepts(t, endpoint, "AppUser "+appTok, app, "{ activeAppUser { id } }") {
		t.Fatal("the printed AppUser token is not accepted by activeAppUser")
	}

	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("working and home directory: got %d entries (%v), want nothing written", len(entries), err)
	}
}

func TestIdentityXCommandErrors(t *testing.T) {
	t.Parallel()
	sim, endpoint := startIdentityX(t)
	orgTok := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	sim.Revoke(orgTok)
	cases := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no command", []string{"identityx"}, "a command is required"},
		{"unknown command", []string{"identityx", "enrol"}, `unknown command "enrol"`},
		{"no endpoint", []string{"identityx", "login", "--link-token", "x"}, "--endpoint URL is required"},
		{"relative endpoint", []string{"identityx", "login", "--endpoint", "identity-x/graphql", "--link-token", "x"}, "absolute"},
		{"no email", []string{"identityx", "send-link", "--endpoint", endpoint}, "--email E is required"},
		{"app id without auth URL", []string{"identityx", "send-link", "--endpoint", endpoint, "--email", "a@example.com", "--app-id", "x"}, "go together"},
		{"no link token", []string{"identityx", "login", "--endpoint", endpoint}, "--link-token T is required"},
		{"no OrgUser token", []string{"identityx", "api-token", "--endpoint", endpoint}, "--org-user-token T is required"},
		{"stray argument", []string{"identityx", "api-token", "--endpoint", endpoint, "--org-user-token", "x", "extra"}, `unexpected argument "extra"`},
		{"unknown user", []string{"identityx", "send-link", "--endpoint", endpoint, "--email", "nobody@example.com"}, "BAD_USER_INPUT"},
		{"used or bad link", []string{"identityx", "login", "--endpoint", endpoint, "--link-token", "not-a-link"}, "send a new link"},
		{"revoked OrgUser token", []string{"identityx", "api-token", "--endpoint", endpoint, "--org-user-token", orgTok}, "UNAUTHENTICATED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, err := cli(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
			if stdout != "" {
				t.Errorf("stdout: got %q, want nothing", stdout)
			}
			if strings.Contains(err.Error()+stderr, orgTok) {
				t.Error("the error or stderr holds the token given on the command line")
			}
		})
	}
}
