package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
)

// identityxSim serves an IdentityX simulator on the test's clock and
// returns it with its GraphQL URL.
func identityxSim(t *testing.T, clk *clocktest.Clock) (*identityxsim.Server, string) {
	t.Helper()
	sim := identityxsim.New(identityxsim.Options{Now: clk.Now})
	return sim, serve(t, sim) + "/graphql"
}

// identityxProvider is a provider block; extra holds further keys, one
// "key: value" per line.
func identityxProvider(name, endpoint, credential, token string, extra ...string) string {
	b := fmt.Sprintf("\n  - name: %s\n    kind: identityx\n    endpoint: %q\n    credential: %s\n    token: %s", name, endpoint, credential, token)
	for _, e := range extra {
		b += "\n    " + e
	}
	return b + "\n"
}

// identityxQuery runs query on the simulator as a service using a vended
// credential would, with headers copied onto the request, and returns the
// HTTP status and the first GraphQL error code ("" when none).
func identityxQuery(t *testing.T, endpoint string, headers map[string]string, query string) (int, string) {
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
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		Data   map[string]map[string]string `json:"data"`
		Errors []struct {
			Extensions map[string]string `json:"extensions"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("GraphQL answer is not JSON: %v", err)
	}
	if len(a.Errors) > 0 {
		return resp.StatusCode, a.Errors[0].Extensions["code"]
	}
	for _, u := range a.Data {
		if u["id"] == "" {
			t.Errorf("GraphQL answer %v names no user", a.Data)
		}
	}
	return resp.StatusCode, ""
}

func (s *service) health(name string) healthpb.HealthCheckResponse_ServingStatus {
	s.t.Helper()
	h, err := healthpb.NewHealthClient(s.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: name})
	if err != nil {
		s.t.Fatalf("health %s: %v", name, err)
	}
	return h.GetStatus()
}

func (s *service) hasValidCredential(name string) bool {
	s.t.Helper()
	resp, err := s.client.ListProviders(context.Background(), &tokenvendv1.ListProvidersRequest{})
	if err != nil {
		s.t.Fatalf("ListProviders: %v", err)
	}
	for _, p := range resp.GetProviders() {
		if p.GetName() == name {
			return p.GetHasValidCredential()
		}
	}
	s.t.Fatalf("ListProviders: no provider %s", name)
	return false
}

// TestIdentityXCredentialsAreAccepted gets each kind of IdentityX
// credential over gRPC and REST and uses the vended headers, as they are,
// on the simulator's protected query; the same token with Bearer, as the
// vendor's docs suggest, is refused.
func TestIdentityXCredentialsAreAccepted(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, endpoint := identityxSim(t, clk)
	app := identityxsim.DefaultAppID
	creds := []struct {
		provider, credential, word, jwt string
		extra                           []string
		query                           string
		wantHeaders                     map[string]string
	}{
		{"api", "org_user_api_token", "OrgUserApiToken", sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail),
			[]string{"org_id: org-7"}, "{ activeUser { id } }", map[string]string{"x-org-id": "org-7"}},
		{"org", "org_user", "OrgUser", sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail),
			nil, "{ activeUser { id } }", map[string]string{}},
		{"app", "app_user", "AppUser", sim.IssueAppUserToken(app, identityxsim.DefaultAppUserEmail),
			[]string{"app_id: " + app}, "{ activeAppUser { id } }", map[string]string{"x-app-id": app}},
	}
	yaml := "providers:"
	for _, c := range creds {
		yaml += identityxProvider(c.provider, endpoint, c.credential, c.jwt, c.extra...)
	}
	s := startService(t, clk, yaml)

	for _, c := range creds {
		t.Run(c.credential, func(t *testing.T) {
			resp := s.mustGet(c.provider)
			want := map[string]string{"Authorization": c.word + " " + c.jwt}
			for k, v := range c.wantHeaders {
				want[k] = v
			}
			if resp.GetAccessToken() != c.jwt || resp.GetTokenType() != c.word || fmt.Sprint(resp.GetHeaders()) != fmt.Sprint(want) {
				t.Errorf("gRPC: got type %q headers %v, want type %q headers %v", resp.GetTokenType(), resp.GetHeaders(), c.word, want)
			}
			if resp.GetExpireTime() != nil {
				t.Errorf("gRPC expire_time: got %v, want unset", resp.GetExpireTime().AsTime())
			}
			if st, code := identityxQuery(t, endpoint, resp.GetHeaders(), c.query); st != http.StatusOK || code != "" {
				t.Errorf("protected query with the gRPC headers: got %d %q, want 200 and no error", st, code)
			}

			r := s.rest(http.MethodGet, "/v1/providers/"+c.provider+"/token", "")
			if r.Status != http.StatusOK {
				t.Fatalf("REST: got %d %s, want 200", r.Status, r.Raw)
			}
			headers := map[string]string{}
			for k, v := range r.Body["headers"].(map[string]any) {
				headers[k] = v.(string)
			}
			if r.Body["expire_time"] != nil || r.Body["token_type"] != c.word {
				t.Errorf("REST: got expire_time %v token_type %v, want no expire_time and %q", r.Body["expire_time"], r.Body["token_type"], c.word)
			}
			if st, code := identityxQuery(t, endpoint, headers, c.query); st != http.StatusOK || code != "" {
				t.Errorf("protected query with the REST headers: got %d %q, want 200 and no error", st, code)
			}

			// The simulator is strict: the same token behind Bearer fails.
			bearer := map[string]string{}
			for k, v := range resp.GetHeaders() {
				bearer[k] = v
			}
			for _, auth := range []string{"Bearer " + c.jwt, "Bearer " + c.word + " " + c.jwt} {
				bearer["Authorization"] = auth
				if st, code := identityxQuery(t, endpoint, bearer, c.query); code != "UNAUTHENTICATED" {
					t.Errorf("protected query with %q: got %d %q, want UNAUTHENTICATED", strings.Replace(auth, c.jwt, "<jwt>", 1), st, code)
				}
			}
		})
	}
}

// TestIdentityXRevokedTokenTurnsNotServing revokes the configured token:
// at the next check (the clock past check_interval) the provider turns
// NOT_SERVING and GetToken FAILED_PRECONDITION, saying what to do. A token
// enrolled again into the secret file brings it back after the hold.
func TestIdentityXRevokedTokenTurnsNotServing(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, endpoint := identityxSim(t, clk)
	jwt := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	path := filepath.Join(t.TempDir(), "identityx-token")
	if err := os.WriteFile(path, []byte(jwt+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startService(t, clk, "cache:\n  reject_backoff: 1m\nproviders:"+
		identityxProvider("idx", endpoint, "org_user", "{file: "+path+"}", "check_interval: 1h"))

	// The start-up check needs no caller.
	eventually(t, "the start-up check", func() bool { return s.hasValidCredential("idx") })
	if got := sim.Queries(); got != 1 {
		t.Errorf("upstream queries after start-up: got %d, want 1", got)
	}
	resp := s.mustGet("idx")
	if st, code := identityxQuery(t, endpoint, resp.GetHeaders(), "{ activeUser { id } }"); code != "" {
		t.Fatalf("protected query with the vended headers: got %d %q, want no error", st, code)
	}

	sim.Revoke(jwt)
	queries := sim.Queries()
	clk.Advance(time.Hour - time.Second)
	if resp := s.mustGet("idx"); resp.GetAccessToken() != jwt || sim.Queries() != queries {
		t.Fatalf("before the check is due: got a different token or %d more queries, want the cached token and none", sim.Queries()-queries)
	}
	clk.Advance(time.Second)
	s.mustGet("idx") // the check is due: served from the cache while it runs
	eventually(t, "the provider to turn NOT_SERVING", func() bool { return s.health("idx") == healthpb.HealthCheckResponse_NOT_SERVING })

	_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "idx"})
	code, info := errorInfo(t, err)
	msg := status.Convert(err).Message()
	if code != codes.FailedPrecondition || info.GetReason() != "CREDENTIALS_REJECTED" || info.GetMetadata()["upstream_code"] != "UNAUTHENTICATED" {
		t.Errorf("GetToken: got %v %s %v, want FailedPrecondition CREDENTIALS_REJECTED upstream_code UNAUTHENTICATED", code, info.GetReason(), info.GetMetadata())
	}
	for _, want := range []string{"revoked", "tokenvend identityx login"} {
		if !strings.Contains(msg, want) {
			t.Errorf("GetToken message %q: want it to mention %q", msg, want)
		}
	}
	if strings.Contains(msg, jwt) || strings.Contains(s.logs.String(), jwt) {
		t.Error("the token appears in the error message or the logs")
	}
	if r := s.rest(http.MethodGet, "/v1/providers/idx/token", ""); r.Status != http.StatusBadRequest {
		t.Errorf("REST: got %d, want 400 (FAILED_PRECONDITION)", r.Status)
	}
	if s.hasValidCredential("idx") {
		t.Error("ListProviders: got a valid credential, want none")
	}

	// Re-enrolment: a new token in the file, used once the hold ends.
	renewed := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	if err := os.WriteFile(path, []byte(renewed+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if resp := s.mustGet("idx"); resp.GetAccessToken() != renewed {
		t.Errorf("after re-enrolment: got another token, want the renewed one")
	}
	if got := s.health("idx"); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health after re-enrolment: got %v, want SERVING", got)
	}
}

// TestIdentityXUnreachableAtStartUp starts the service while IdentityX
// cannot be reached: it serves anyway, and the start-up check, retried
// with backoff, succeeds once IdentityX comes up, with no caller asking.
func TestIdentityXUnreachableAtStartUp(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim := identityxsim.New(identityxsim.Options{Now: clk.Now})
	jwt := sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail)
	// A port nothing listens on, until the test serves the simulator there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	endpoint := "http://" + addr + "/graphql"

	// Provider other is never asked for: only the service's own retries
	// can make its check succeed.
	s := startService(t, clk, "providers:"+identityxProvider("idx", endpoint, "org_user_api_token", jwt)+
		identityxProvider("other", endpoint, "org_user_api_token", jwt))
	_, err = s.get(&tokenvendv1.GetTokenRequest{Provider: "idx"})
	if code, info := errorInfo(t, err); code != codes.Unavailable || info.GetReason() != "UPSTREAM_UNAVAILABLE" {
		t.Errorf("GetToken while IdentityX is down: got %v %s, want Unavailable UPSTREAM_UNAVAILABLE", code, info.GetReason())
	}
	if got := s.health("idx"); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health while IdentityX is down: got %v, want SERVING (an outage is not a rejection)", got)
	}

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: sim}}
	srv.Start()
	t.Cleanup(srv.Close)

	eventually(t, "the start-up check to succeed", func() bool { return s.hasValidCredential("idx") && s.hasValidCredential("other") })
	hits := s.metric("tokenvend_cache_lookups_total", `provider="idx",result="hit"`)
	resp := s.mustGet("idx")
	if got := s.metric("tokenvend_cache_lookups_total", `provider="idx",result="hit"`); got != max(hits, 0)+1 {
		t.Errorf("cache hits: got %v, want %v (the check cached the token)", got, max(hits, 0)+1)
	}
	if st, code := identityxQuery(t, endpoint, resp.GetHeaders(), "{ activeUser { id } }"); code != "" {
		t.Errorf("protected query with the vended headers: got %d %q, want no error", st, code)
	}
}

// TestIdentityXDemo checks the demo's identityx provider: the token it is
// configured with is checked and vended, and works on the demo upstream.
func TestIdentityXDemo(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	s := startConfig(t, nil, d.Config)
	resp := s.mustGet("identityx")
	if resp.GetTokenType() != "OrgUserApiToken" {
		t.Errorf("token_type: got %q, want OrgUserApiToken", resp.GetTokenType())
	}
	if st, code := identityxQuery(t, d.Upstreams["identityx"], resp.GetHeaders(), "{ activeUser { id } }"); st != http.StatusOK || code != "" {
		t.Errorf("demo identityx upstream: got %d %q, want 200 and no error", st, code)
	}
	if got := d.Simulators["identityx"].(*identityxsim.Server).AuthFailures(); got != 0 {
		t.Errorf("demo identityx refused credentials: got %d, want 0", got)
	}
}
