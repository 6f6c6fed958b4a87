package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// The Prometheus names of the reload metrics, as the issue fixes them.
const (
	reloadOK = "tokenvend_config_last_reload_successful"
	reloadAt = "tokenvend_config_last_reload_success_timestamp_seconds"
)

// reload reloads the service with yaml (testServer is added, as
// startService does).
func (s *service) reload(yaml string) error {
	return s.app.Reload(func() (*config.Config, error) { return config.Parse([]byte(testServer + yaml)) })
}

func (s *service) mustReload(yaml string) {
	s.t.Helper()
	if err := s.reload(yaml); err != nil {
		s.t.Fatalf("Reload: %v", err)
	}
}

// logLines returns the service's log lines whose msg starts with msg.
func (s *service) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && strings.HasPrefix(m["msg"].(string), msg) {
			out = append(out, m)
		}
	}
	return out
}

// works checks that a vended credential is accepted on the simulator.
func works(t *testing.T, url string, resp *tokenvendv1.GetTokenResponse) {
	t.Helper()
	if got := useHeaders(t, url+kycsim.ResourcePath, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint at %s with the vended headers: got %d, want 200", url, got)
	}
}

// TestReloadProviders: a reload adds, removes and keeps providers without
// a restart, over the same listeners and the same client connection. The
// unchanged provider keeps its token (no login); the added one is served
// and its token works upstream; the removed one is not found, its health
// unknown and its series gone from the metrics; the reload metrics say
// when.
func TestReloadProviders(t *testing.T) {
	t.Parallel()
	clk := newClock()
	simA, urlA := kycSim(t, clk)
	simB, urlB := kycSim(t, clk)
	simC, urlC := kycSim(t, clk)
	start := clk.Now()
	s := startService(t, clk, "providers:"+kycProvider("a", urlA, kycPassword)+kycProvider("b", urlB, kycPassword))
	if got := s.metric(reloadOK, ""); got != 1 {
		t.Errorf("%s at start: got %v, want 1", reloadOK, got)
	}
	if got, want := s.metric(reloadAt, ""), float64(start.Unix()); got != want {
		t.Errorf("%s at start: got %v, want %v (the start)", reloadAt, got, want)
	}
	tokA := s.mustGet("a")
	s.mustGet("b")

	clk.Advance(time.Minute)
	// Reordered, with a comment and flow style: still the same provider a.
	s.mustReload("providers:" + kycProvider("c", urlC, kycPassword) +
		"  # a, unchanged\n  - {name: a, kind: kyc, base_url: " + urlA + ", username: " + kycUser + ", password: \"" + kycPassword + "\"}\n")

	if got := s.mustGet("a"); got.GetAccessToken() != tokA.GetAccessToken() {
		t.Error("unchanged provider a: got a new token, want the cached one")
	}
	if got := simA.Logins(); got != 1 {
		t.Errorf("logins of unchanged provider a: got %d, want 1 (none since the reload)", got)
	}
	works(t, urlA, tokA)
	works(t, urlC, s.mustGet("c"))
	if got := simC.Logins(); got != 1 {
		t.Errorf("logins of added provider c: got %d, want 1", got)
	}
	_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "b"})
	if code, info := errorInfo(t, err); code != codes.NotFound || info.GetReason() != "PROVIDER_NOT_FOUND" {
		t.Errorf("removed provider b: got %v %s, want NotFound PROVIDER_NOT_FOUND", code, info.GetReason())
	}
	if got := simB.Logins(); got != 1 {
		t.Errorf("logins of removed provider b: got %d, want 1", got)
	}
	for name, want := range map[string]healthpb.HealthCheckResponse_ServingStatus{
		"a": healthpb.HealthCheckResponse_SERVING,
		"b": healthpb.HealthCheckResponse_SERVICE_UNKNOWN,
		"c": healthpb.HealthCheckResponse_SERVING,
	} {
		if got := s.health(name); got != want {
			t.Errorf("health of %s: got %v, want %v", name, got, want)
		}
	}
	list, err := s.client.ListProviders(context.Background(), &tokenvendv1.ListProvidersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list.GetProviders() {
		names = append(names, p.GetName())
	}
	if want := []string{"c", "a"}; !slices.Equal(names, want) {
		t.Errorf("ListProviders: got %v, want %v", names, want)
	}

	for _, m := range []struct {
		name, labels string
		want         float64
	}{
		{reloadOK, "", 1},
		{reloadAt, "", float64(start.Add(time.Minute).Unix())},
		{"tokenvend_requests_total", `provider="a",code="OK"`, 2},         // counted across the reload
		{"tokenvend_requests_total", `provider="c",code="OK"`, 1},         // a new provider's series
		{"tokenvend_requests_total", `provider="b",`, -1},                 // gone with b
		{"tokenvend_cache_lookups_total", `provider="b",`, -1},            // b's cache closed
		{"tokenvend_cache_lookups_total", `provider="a",result="hit"`, 1}, // a's cache kept
	} {
		if got := s.metric(m.name, m.labels); got != m.want {
			t.Errorf("%s{%s}: got %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	lines := s.logLines("config reloaded")
	if len(lines) != 1 {
		t.Fatalf("reload log lines: got %d, want 1", len(lines))
	}
	for key, want := range map[string]string{
		"providers_added": "[c]", "providers_removed": "[b]", "providers_changed": "[]", "providers_unchanged": "[a]",
	} {
		if got := logNames(lines[0][key]); got != want {
			t.Errorf("reload log %s: got %s, want %s", key, got, want)
		}
	}
}

// logNames renders a logged list of names as [x y].
func logNames(v any) string {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		out = append(out, x.(string))
	}
	return "[" + strings.Join(out, " ") + "]"
}

// TestReloadChangedCredentials: a provider whose password changed logs in
// with the new one on its next request (its cached token, of the old
// credentials, is not served), and one held after a rejection has its
// hold lifted by new credentials: the next request tries them at once.
func TestReloadChangedCredentials(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	heldSim, heldURL := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword)+kycProvider("held", heldURL, "wrong password"))
	s.mustGet("kyc")
	for range 2 {
		if _, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "held"}); err == nil {
			t.Fatal("GetToken(held) with a wrong password: got a token")
		}
	}
	if got := heldSim.LoginAttempts(); got != 1 {
		t.Fatalf("login attempts with the wrong password: got %d, want 1 (then held)", got)
	}
	if got := s.health("held"); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health of the held provider: got %v, want NOT_SERVING", got)
	}

	const rotated = "the rotated password"
	sim.SetPassword(kycUser, rotated)
	s.mustReload("providers:" + kycProvider("kyc", url, rotated) + kycProvider("held", heldURL, kycPassword))

	if got := s.health("held"); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of the held provider after new credentials: got %v, want SERVING", got)
	}
	fresh := s.mustGet("kyc")
	if got := sim.Logins(); got != 2 {
		t.Errorf("logins of the changed provider: got %d, want 2 (its next request logs in with the new password)", got)
	}
	works(t, url, fresh)
	// Still inside the 1m hold of the old credentials: the new ones are
	// tried at once.
	works(t, heldURL, s.mustGet("held"))
	if got := heldSim.LoginAttempts(); got != 2 {
		t.Errorf("login attempts of the held provider: got %d, want 2", got)
	}
	if lines := s.logLines("config reloaded"); len(lines) != 1 || logNames(lines[0]["providers_changed"]) != "[kyc held]" {
		t.Errorf("reload log: got %v, want kyc and held changed", lines)
	}
}

// TestReloadCacheSettings: a change of the cache section applies to every
// provider, yet an unchanged provider keeps its token: no login at the
// reload, and its refresh then follows the new refresh_before.
func TestReloadCacheSettings(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "cache:\n  refresh_before: 5m\nproviders:"+kycProvider("kyc", url, kycPassword))
	tok := s.mustGet("kyc") // one hour
	// Before both the old refresh (at 55m) and the new one (at 30m: half
	// the token's life, as 50m is more than that).
	clk.Advance(25 * time.Minute)

	s.mustReload("cache:\n  refresh_before: 50m\nproviders:" + kycProvider("kyc", url, kycPassword))
	if got := s.mustGet("kyc"); got.GetAccessToken() != tok.GetAccessToken() || sim.Logins() != 1 {
		t.Fatalf("after a cache change: got a new token (%d logins), want the cached one", sim.Logins())
	}
	// Past the new refresh point, not the old: the next call starts a
	// refresh.
	clk.Advance(6 * time.Minute)
	s.mustGet("kyc")
	eventually(t, "the refresh under the new refresh_before", func() bool { return sim.Logins() == 2 })
	eventually(t, "the refreshed token", func() bool { return s.mustGet("kyc").GetAccessToken() != tok.GetAccessToken() })
	works(t, url, s.mustGet("kyc"))
	if lines := s.logLines("config reloaded"); len(lines) != 1 || lines[0]["cache_changed"] != true {
		t.Errorf("reload log: got %v, want cache_changed true", lines)
	}
}

// TestReloadCallers: grants and callers change with a reload: a new grant
// applies at once, a removed caller is no longer identified, and the Host
// check of a service without callers follows whether callers are
// configured.
func TestReloadCallers(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, urlA := kycSim(t, clk)
	_, urlB := kycSim(t, clk)
	providers := "providers:" + kycProvider("a", urlA, kycPassword) + kycProvider("b", urlB, kycPassword)
	s := startService(t, clk, providers)
	hostGet := func() int {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/healthz", nil)
		req.Host = "rebound.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := hostGet(); got != http.StatusForbidden {
		t.Fatalf("a foreign Host without callers: got %d, want 403", got)
	}

	callers := func(appGrants string) string {
		return providers + `callers:
  - id: app
    api_key_sha256: ` + keyHash("app-key") + `
    allow:` + appGrants + `
  - id: ops
    api_key_sha256: ` + keyHash("ops-key") + `
    allow: [{provider: b}]
`
	}
	s.mustReload(callers("\n      - provider: a\n"))
	if got := hostGet(); got != http.StatusOK {
		t.Errorf("a foreign Host once callers are configured: got %d, want 200 (callers are identified instead)", got)
	}
	works(t, urlA, mustKeyGet(t, s, "app-key", "a"))
	_, err := s.keyGet("app-key", &tokenvendv1.GetTokenRequest{Provider: "b"})
	if code, info := errorInfo(t, err); code != codes.PermissionDenied || info.GetReason() != "CALLER_NOT_ALLOWED" {
		t.Errorf("app for b without a grant: got %v %s, want PermissionDenied CALLER_NOT_ALLOWED", code, info.GetReason())
	}
	_, err = s.keyGet("", &tokenvendv1.GetTokenRequest{Provider: "a"})
	if code, info := errorInfo(t, err); code != codes.Unauthenticated || info.GetReason() != "CALLER_UNIDENTIFIED" {
		t.Errorf("no key once callers are configured: got %v %s, want Unauthenticated CALLER_UNIDENTIFIED", code, info.GetReason())
	}

	// app gains b; ops is removed.
	s.mustReload(strings.Replace(callers("\n      - provider: a\n      - provider: b\n"),
		"  - id: ops\n    api_key_sha256: "+keyHash("ops-key")+"\n    allow: [{provider: b}]\n", "", 1))
	works(t, urlB, mustKeyGet(t, s, "app-key", "b"))
	if r := s.keyREST("app-key", http.MethodGet, "/v1/providers/b/token", ""); r.Status != http.StatusOK {
		t.Errorf("REST app for b after the new grant: got %d %s, want 200", r.Status, r.Raw)
	}
	_, err = s.keyGet("ops-key", &tokenvendv1.GetTokenRequest{Provider: "b"})
	if code, info := errorInfo(t, err); code != codes.Unauthenticated || info.GetReason() != "CALLER_UNIDENTIFIED" {
		t.Errorf("removed caller ops: got %v %s, want Unauthenticated CALLER_UNIDENTIFIED", code, info.GetReason())
	}
	if r := s.keyREST("ops-key", http.MethodGet, "/v1/providers/b/token", ""); r.Status != http.StatusUnauthorized {
		t.Errorf("REST removed caller ops: got %d, want 401", r.Status)
	}
}

func mustKeyGet(t *testing.T, s *service, key, provider string) *tokenvendv1.GetTokenResponse {
	t.Helper()
	resp, err := s.keyGet(key, &tokenvendv1.GetTokenRequest{Provider: provider})
	if err != nil {
		t.Fatalf("GetToken(%s) with key %s: %v", provider, key, err)
	}
	return resp
}

// TestReloadRefusesBadConfig: a config that fails validation is refused
// whole: the error and the log name every bad field, the old config goes
// on serving (its token, no login; the provider the bad config would add
// is not there), and the metrics say the last reload failed, with the
// time of the last good one. The next good config is applied.
func TestReloadRefusesBadConfig(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	_, urlC := kycSim(t, clk)
	start := clk.Now()
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	tok := s.mustGet("kyc")
	clk.Advance(time.Minute)

	err := s.reload("cache:\n  login_attempts: 99\nproviders:" + kycProvider("kyc", "ftp://example.com", kycPassword) +
		kycProvider("c", urlC, kycPassword) + "    pasword: hunter2\n")
	wantFields := []string{"cache.login_attempts", "providers[0].base_url", "providers[1].pasword"}
	if err == nil {
		t.Fatal("Reload of a bad config: got nil, want an error")
	}
	for _, f := range wantFields {
		if !strings.Contains(err.Error(), f+":") {
			t.Errorf("error does not name %s:\n%v", f, err)
		}
	}
	lines := s.logLines("config reload refused")
	if len(lines) != 1 {
		t.Fatalf("refusal log lines: got %d, want 1", len(lines))
	}
	var fields []string
	for _, f := range lines[0]["fields"].([]any) {
		fields = append(fields, f.(string))
	}
	slices.Sort(fields)
	if !slices.Equal(fields, wantFields) {
		t.Errorf("refusal log fields: got %v, want %v", fields, wantFields)
	}
	if strings.Contains(s.logs.String(), "hunter2") || strings.Contains(s.logs.String(), kycPassword) {
		t.Error("the log holds a value from the config")
	}

	if got := s.mustGet("kyc"); got.GetAccessToken() != tok.GetAccessToken() {
		t.Error("after a refused reload: got a new token, want the old config's cached one")
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("logins after a refused reload: got %d, want 1", got)
	}
	_, err = s.get(&tokenvendv1.GetTokenRequest{Provider: "c"})
	if code, _ := errorInfo(t, err); code != codes.NotFound {
		t.Errorf("the refused config's provider c: got %v, want NotFound", code)
	}
	if got := s.metric(reloadOK, ""); got != 0 {
		t.Errorf("%s after a refused reload: got %v, want 0", reloadOK, got)
	}
	if got, want := s.metric(reloadAt, ""), float64(start.Unix()); got != want {
		t.Errorf("%s after a refused reload: got %v, want %v (the start, unchanged)", reloadAt, got, want)
	}

	clk.Advance(time.Minute)
	s.mustReload("providers:" + kycProvider("kyc", url, kycPassword) + kycProvider("c", urlC, kycPassword))
	works(t, urlC, s.mustGet("c"))
	if got := s.metric(reloadOK, ""); got != 1 {
		t.Errorf("%s after a good reload: got %v, want 1", reloadOK, got)
	}
	if got, want := s.metric(reloadAt, ""), float64(start.Add(2*time.Minute).Unix()); got != want {
		t.Errorf("%s after a good reload: got %v, want %v", reloadAt, got, want)
	}
}

// TestReloadKeepsListeners: a reload that changes a listen address says so
// and keeps the running one; the rest of it applies.
func TestReloadKeepsListeners(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	_, urlB := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	grpcAddr := s.app.GRPCAddr()
	err := s.app.Reload(func() (*config.Config, error) {
		return config.Parse([]byte("server:\n  grpc_addr: 127.0.0.1:1\n  http_addr: 127.0.0.1:0\nproviders:" +
			kycProvider("kyc", url, kycPassword) + kycProvider("b", urlB, kycPassword)))
	})
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	lines := s.logLines("config reload: server.grpc_addr changed")
	if len(lines) != 1 || lines[0]["running"] != "127.0.0.1:0" || lines[0]["config"] != "127.0.0.1:1" || lines[0]["level"] != "WARN" {
		t.Errorf("log of the address change: got %v, want one warning naming both addresses", lines)
	}
	if len(s.logLines("config reload: server.http_addr")) != 0 {
		t.Error("an unchanged http_addr was logged as changed")
	}
	if got := s.app.GRPCAddr(); got != grpcAddr {
		t.Errorf("gRPC address: got %s, want %s", got, grpcAddr)
	}
	works(t, urlB, s.mustGet("b")) // over the old connection, to the old address
}

// TestReloadKeptProviders: a provider marked Keep (IdentityX) that a
// reload adds gets its start-up check with no caller asking, and one that
// stays keeps its checked token: the Keep loops restarted by the reload
// cost it no query.
func TestReloadKeptProviders(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, endpoint := identityxSim(t, clk)
	idx := identityxProvider("idx", endpoint, "org_user", sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail), "check_interval: 1h")
	s := startService(t, clk, "providers:"+idx)
	eventually(t, "the start-up check", func() bool { return s.hasValidCredential("idx") })

	added := identityxProvider("idx2", endpoint, "org_user", sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail), "check_interval: 1h")
	s.mustReload("providers:" + idx + added)
	eventually(t, "the added provider's start-up check", func() bool { return s.hasValidCredential("idx2") })
	if got := sim.Queries(); got != 2 {
		t.Errorf("upstream queries: got %d, want 2 (one start-up check each)", got)
	}
	if !s.hasValidCredential("idx") {
		t.Error("the unchanged provider lost its checked token")
	}
}

// TestReloadUnderLoad: callers over gRPC and REST, on connections kept
// open, get their tokens throughout a run of reloads that add and remove
// another provider: no call fails, and the provider that stays logs in
// once.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	_, urlB := kycSim(t, clk)
	base := "providers:" + kycProvider("kyc", url, kycPassword)
	s := startService(t, clk, base)
	tok := s.mustGet("kyc").GetAccessToken()

	stop := make(chan struct{})
	errs := make(chan error, 100)
	var calls atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var got string
				if i%2 == 0 {
					resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
					if err != nil {
						errs <- err
						return
					}
					got = resp.GetAccessToken()
				} else {
					resp, err := client.Get(s.base + "/v1/providers/kyc/token")
					if err != nil {
						errs <- err
						return
					}
					var body struct {
						AccessToken string `json:"access_token"`
					}
					err = json.NewDecoder(resp.Body).Decode(&body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK {
						errs <- fmt.Errorf("REST: %d %v", resp.StatusCode, err)
						return
					}
					got = body.AccessToken
				}
				if got != tok {
					errs <- errors.New("got another token than the cached one")
					return
				}
				calls.Add(1)
			}
		})
	}
	for i := range 20 {
		yaml := base
		if i%2 == 0 {
			yaml += kycProvider("b", urlB, kycPassword)
		}
		s.mustReload(yaml)
		// Calls answered under each config, not only between reloads.
		n := calls.Load()
		eventually(t, "calls under the new config", func() bool { return calls.Load() >= n+8 || len(errs) > 0 })
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call during the reloads: %v", err)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("logins: got %d, want 1", got)
	}
}
