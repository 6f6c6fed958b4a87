package app_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

const (
	kycUser     = "svc@example.com"
	kycPassword = "correct horse battery staple"
)

// kycSim runs a kyc simulator with one user on the fake clock.
func kycSim(t *testing.T, clk *clocktest.Clock, users ...kycsim.User) (*kycsim.Server, string) {
	t.Helper()
	if len(users) == 0 {
		users = []kycsim.User{{Email: kycUser, Password: kycPassword}}
	}
	sim := kycsim.New(kycsim.Options{Users: users, Now: clk.Now})
	return sim, serve(t, sim)
}

func kycProvider(name, url, password string) string {
	return fmt.Sprintf(`
  - name: %s
    kind: kyc
    base_url: %s
    username: %s
    password: %q
`, name, url, kycUser, password)
}

func TestGetTokenOverGRPCAndRESTIsAcceptedUpstream(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))

	resp := s.mustGet("kyc")
	if got := resp.GetTokenType(); got != "Bearer" {
		t.Errorf("token_type: got %q, want Bearer", got)
	}
	if got, want := resp.GetHeaders()["Authorization"], "Bearer "+resp.GetAccessToken(); got != want {
		t.Errorf("Authorization header: got %q, want %q", got, want)
	}
	if got, want := resp.GetExpireTime().AsTime(), clk.Now().Add(time.Hour); !got.Equal(want) {
		t.Errorf("expire_time: got %v, want %v (the JWT's exp)", got, want)
	}
	if got := useHeaders(t, url+"/api/v1/resource", resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint with gRPC headers: got %d, want 200", got)
	}

	for _, call := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/providers/kyc/token", ""},
		{http.MethodPost, "/v1/token", `{"provider":"kyc"}`},
	} {
		r := s.rest(call.method, call.path, call.body)
		if r.Status != http.StatusOK {
			t.Fatalf("%s %s: got %d %s, want 200", call.method, call.path, r.Status, r.Raw)
		}
		for _, field := range []string{"access_token", "token_type", "headers", "expire_time", "issue_time", "single_use"} {
			if _, ok := r.Body[field]; !ok {
				t.Errorf("%s %s: no %q in %s", call.method, call.path, field, r.Raw)
			}
		}
		headers := map[string]string{}
		for k, v := range r.Body["headers"].(map[string]any) {
			headers[k] = v.(string)
		}
		if got := useHeaders(t, url+"/api/v1/resource", headers); got != http.StatusOK {
			t.Errorf("protected endpoint with REST headers: got %d, want 200", got)
		}
		if got := r.Body["access_token"]; got != resp.GetAccessToken() {
			t.Errorf("REST answer is not the cached token")
		}
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1 (one login, then the cache)", got)
	}

	list, err := s.client.ListProviders(context.Background(), &tokenvendv1.ListProvidersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetProviders()) != 1 || list.GetProviders()[0].GetName() != "kyc" || list.GetProviders()[0].GetKind() != "kyc" || !list.GetProviders()[0].GetHasValidCredential() {
		t.Errorf("ListProviders: got %v, want kyc/kyc with a valid credential", list)
	}
	if r := s.rest(http.MethodGet, "/v1/providers", ""); r.Status != http.StatusOK || strings.Contains(r.Raw, kycPassword) || !strings.Contains(r.Raw, `"has_valid_credential":true`) {
		t.Errorf("GET /v1/providers: got %d %s", r.Status, r.Raw)
	}
}

func TestThousandCallersOnColdKeyShareOneLogin(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	// The hung login must outlast gathering 1,000 callers on a slow
	// machine: it is not cut and retried after the default 10s.
	s := startService(t, clk, "cache:\n  attempt_timeout: 1m\nproviders:"+kycProvider("kyc", url, kycPassword))

	// The login hangs until every caller is waiting on it, so all 1,000
	// are misses on a cold key, not hits after a quick login.
	sim.SetFault(kycsim.Fault{Hang: true})
	const n = 1000
	var wg sync.WaitGroup
	tokens := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
			tokens[i], errs[i] = resp.GetAccessToken(), err
		})
	}
	eventually(t, "1,000 callers waiting on the login", func() bool {
		return s.metric("tokenvend_login_waiters", `provider="kyc"`) == n
	})
	sim.SetFault(kycsim.Fault{})
	wg.Wait()

	for i := range n {
		if errs[i] != nil || tokens[i] != tokens[0] {
			t.Fatalf("caller %d: got %v / same token %v, want the one shared token", i, errs[i], tokens[i] == tokens[0])
		}
	}
	if got := sim.LoginAttempts(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1", got)
	}
	if got := s.metric("tokenvend_cache_lookups_total", `result="shared"`); got != n-1 {
		t.Errorf("callers that shared the login: got %v, want %d", got, n-1)
	}
}

func TestRefreshAheadKeepsCallersFromWaiting(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))

	first := s.mustGet("kyc")
	// The refresh will hang: any caller that waited on it would time out.
	sim.SetFault(kycsim.Fault{Hang: true})
	clk.Advance(time.Hour - 4*time.Minute) // past the refresh point (5m before expiry), still valid

	for range 50 {
		if got := s.mustGet("kyc"); got.GetAccessToken() != first.GetAccessToken() {
			t.Fatal("a caller got a new token before the refresh finished")
		}
	}
	eventually(t, "the background refresh to reach the upstream", func() bool { return sim.LoginAttempts() == 2 })
	sim.SetFault(kycsim.Fault{})
	var second *tokenvendv1.GetTokenResponse
	eventually(t, "the refreshed token", func() bool {
		second = s.mustGet("kyc")
		return second.GetAccessToken() != first.GetAccessToken()
	})
	if got := sim.LoginAttempts(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2 (one refresh for 50+ callers)", got)
	}
	if got, want := second.GetExpireTime().AsTime(), clk.Now().Add(time.Hour); !got.Equal(want) {
		t.Errorf("refreshed expire_time: got %v, want %v", got, want)
	}
	if got := useHeaders(t, url+"/api/v1/resource", second.GetHeaders()); got != http.StatusOK {
		t.Errorf("refreshed token upstream: got %d, want 200", got)
	}
}

func TestMinValidForRefreshesFirst(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	first := s.mustGet("kyc")
	clk.Advance(40 * time.Minute) // 20m left: before the refresh point

	got, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc", MinValidFor: durationpb.New(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetAccessToken() == first.GetAccessToken() || sim.Logins() != 2 {
		t.Errorf("min_valid_for 30m with 20m left: got the old token (logins %d), want a new one", sim.Logins())
	}
	_, err = s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc", MinValidFor: durationpb.New(2 * time.Hour)})
	if code, info := errorInfo(t, err); code != codes.InvalidArgument || info.GetReason() != "MIN_VALID_FOR_TOO_LONG" {
		t.Errorf("min_valid_for beyond the token lifetime: got %v %s, want InvalidArgument MIN_VALID_FOR_TOO_LONG", code, info.GetReason())
	}
}

func TestWrongPasswordCostsOneAttemptPerBackoff(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "cache:\n  reject_backoff: 1m\nproviders:"+kycProvider("kyc", url, "wrong password"))

	burst := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
				code, info := errorInfo(t, err)
				if code != codes.FailedPrecondition || info.GetReason() != "CREDENTIALS_REJECTED" || info.GetMetadata()["upstream_code"] != "LOGIN_BAD_CREDENTIALS" {
					t.Errorf("got %v %s %v, want FailedPrecondition CREDENTIALS_REJECTED upstream_code LOGIN_BAD_CREDENTIALS", code, info.GetReason(), info.GetMetadata())
				}
			})
		}
		wg.Wait()
	}
	steps := []struct {
		advance time.Duration
		want    int64
	}{
		{0, 1},                         // 1,000 callers: one attempt
		{59 * time.Second, 1},          // still inside the 1m hold
		{time.Second, 2},               // hold over: one more attempt
		{time.Minute + time.Second, 2}, // the hold doubled to 2m
		{time.Minute, 3},
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		burst(1000)
		if got := sim.LoginAttempts(); got != st.want {
			t.Fatalf("step %d: upstream attempts: got %d, want %d", i, got, st.want)
		}
	}
	h, err := healthpb.NewHealthClient(s.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "kyc"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health of kyc after rejection: got %v %v, want NOT_SERVING", h.GetStatus(), err)
	}
	_, err = s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if _, info := errorInfo(t, err); info.GetMetadata()["retry_after_seconds"] == "" || !strings.Contains(status.Convert(err).Message(), "will not try") {
		t.Errorf("held error: got %q %v, want a message and retry_after_seconds saying when", status.Convert(err).Message(), info.GetMetadata())
	}
}

func TestOutageWithValidCachedTokenFailsNoCaller(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	first := s.mustGet("kyc")

	sim.SetFault(kycsim.Fault{Status: http.StatusServiceUnavailable, Body: `{"detail":"down"}`})
	clk.Advance(time.Hour - 4*time.Minute) // past the refresh point
	for round := range 3 {
		var wg sync.WaitGroup
		for range 200 {
			wg.Go(func() {
				resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
				if err != nil || resp.GetAccessToken() != first.GetAccessToken() {
					t.Errorf("round %d: got %v, want the still-valid cached token", round, err)
				}
			})
		}
		wg.Wait()
		attempts := sim.LoginAttempts()
		eventually(t, "the failed refresh to settle", func() bool {
			return s.metric("tokenvend_logins_total", `outcome="unavailable"`) == float64(round+1)
		})
		if attempts < int64(round+2) {
			t.Errorf("round %d: upstream attempts %d: the refresh was not retried", round, attempts)
		}
		clk.Advance(time.Minute) // past the refresh retry delay
	}
	if got := sim.LoginAttempts(); got > 1+3*3 {
		t.Errorf("upstream attempts during the outage: got %d, want at most one refresh (of 3 tries) per retry period", got)
	}
}
