package app_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/store/redistest"
)

// The push tests: a replica serves its local copy of a token without
// reading Redis, and when another replica replaces or removes the shared
// token, Redis' invalidation makes the copy's next Get read the stored one.

// warmFleet starts three replicas of kyc on one Redis, gives each the
// fleet's token (one login), and lets each read the stored token once
// after the fleet's write, as the first Get after an invalidation does.
func warmFleet(t *testing.T, clk *clocktest.Clock) (*kycsim.Server, string, *redistest.Server, string, []*service, *tokenvendv1.GetTokenResponse) {
	t.Helper()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	fleet := startFleet(t, clk, 3, yaml, fleetOpts{})
	answers, failed, err := callers(fleet, "kyc", 5)
	if failed > 0 {
		t.Fatalf("%d callers failed: %v", failed, err)
	}
	if _, failed, err := callers(fleet, "kyc", 1); failed > 0 {
		t.Fatal(err)
	}
	for _, a := range answers {
		if a.GetAccessToken() != answers[0].GetAccessToken() {
			t.Fatal("replicas vended different tokens")
		}
	}
	if got := sim.Logins(); got != 1 {
		t.Fatalf("upstream logins to warm the fleet: got %d, want 1", got)
	}
	return sim, url, srv, yaml, fleet, answers[0]
}

// TestFleetReportReachesOtherReplicas: a token reported on replica A is
// no longer served by B and C, which had it cached: their next GetToken
// returns the token of the fleet's one new login.
func TestFleetReportReachesOtherReplicas(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url, _, _, fleet, old := warmFleet(t, clk)
	sim.Revoke(old.GetAccessToken())
	clk.Advance(time.Second) // the next login's JWT differs from the revoked one
	resp, err := fleet[0].client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{
		Provider: "kyc", AccessToken: old.GetAccessToken(), UpstreamStatus: 401})
	if err != nil || !resp.GetInvalidated() {
		t.Fatalf("report on replica 0: got %v, %v; want invalidated", resp, err)
	}
	fresh := fleet[0].mustGet("kyc")
	if fresh.GetAccessToken() == old.GetAccessToken() {
		t.Fatal("replica 0 served the reported token after its report")
	}
	for i, s := range fleet[1:] {
		got := s.mustGet("kyc")
		if got.GetAccessToken() == old.GetAccessToken() {
			t.Fatalf("replica %d still served the token reported on replica 0", i+1)
		}
		if got.GetAccessToken() != fresh.GetAccessToken() {
			t.Errorf("replica %d: got another token than the fleet's new one", i+1)
		}
		if code := useHeaders(t, url+"/api/v1/resource", got.GetHeaders()); code != http.StatusOK {
			t.Errorf("replica %d: the new token upstream: got %d, want 200", i+1, code)
		}
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2 (the first, and the fleet's one after the report)", got)
	}
}

// TestFleetRefreshReachesOtherReplicas: at the refresh point, one
// replica's Get starts the background refresh; once it has landed, the
// other replicas serve the new token on their next Get, without a login
// or a refresh of their own (without the change, they would serve the old
// token at their refresh point and start their own refresh).
func TestFleetRefreshReachesOtherReplicas(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url, _, _, fleet, old := warmFleet(t, clk)
	waits := func(s *service) float64 {
		return max(s.metric("tokenvend_store_events_total", `provider="kyc",event="lease_wait"`), 0)
	}
	var waited []float64
	for _, s := range fleet {
		waited = append(waited, waits(s))
	}
	// kyc's tokens live an hour; the refresh starts 5m before expiry.
	clk.Advance(kycsim.DefaultLifetime - 4*time.Minute)
	if got := fleet[0].mustGet("kyc"); got.GetAccessToken() != old.GetAccessToken() {
		t.Fatal("the Get at the refresh point did not serve the cached token")
	}
	var fresh *tokenvendv1.GetTokenResponse
	eventually(t, "replica 0's refresh to land", func() bool {
		fresh = fleet[0].mustGet("kyc")
		return fresh.GetAccessToken() != old.GetAccessToken()
	})
	for i, s := range fleet[1:] {
		got := s.mustGet("kyc")
		if got.GetAccessToken() != fresh.GetAccessToken() {
			t.Fatalf("replica %d: its first Get after replica 0's refresh served the old token", i+1)
		}
		if code := useHeaders(t, url+"/api/v1/resource", got.GetHeaders()); code != http.StatusOK {
			t.Errorf("replica %d: the refreshed token upstream: got %d, want 200", i+1, code)
		}
		if n := s.metric("tokenvend_store_events_total", `provider="kyc",event="replaced"`); n != 1 {
			t.Errorf("replica %d: local copies replaced by the stored token: got %v, want 1", i+1, n)
		}
		if n := waits(s) - waited[i+1]; n > 0 {
			t.Errorf("replica %d: waited on a lease %v times since the refresh point, want 0 (no refresh of its own)", i+1, n)
		}
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2 (the first, and one refresh for the fleet)", got)
	}
}

// TestFleetReconnectRevalidates: Redis restarted (empty) drops every
// replica's connection, and the tracking of the keys they had read with
// it; a token replaced afterwards by replica A's write is heard of by no
// one. Each replica therefore reads every local copy once after a
// reconnect: B and C serve A's new token, and no replica lost its own
// token to the empty store (it was written back).
func TestFleetReconnectRevalidates(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, _, srv, _, fleet, old := warmFleet(t, clk)
	srv.Kill()
	for _, s := range fleet {
		eventually(t, "the replica to see Redis gone", func() bool { return s.metric("tokenvend_store_up", "") == 0 })
	}
	srv.Restart()
	for _, s := range fleet {
		eventually(t, "the replica to see Redis back", func() bool { return s.metric("tokenvend_store_up", "") == 1 })
		eventually(t, "its token to be written back", func() bool {
			return s.metric("tokenvend_store_events_total", `provider="kyc",event="written_back"`) >= 1
		})
	}
	// Every copy kept through the restart, read once again, costs nothing.
	if got := fleet[0].mustGet("kyc"); got.GetAccessToken() != old.GetAccessToken() {
		t.Fatal("replica 0 lost its token to the restart")
	}
	clk.Advance(time.Second)
	resp, err := fleet[0].client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{
		Provider: "kyc", AccessToken: old.GetAccessToken()})
	if err != nil || !resp.GetInvalidated() {
		t.Fatalf("report on replica 0: got %v, %v; want invalidated", resp, err)
	}
	fresh := fleet[0].mustGet("kyc")
	for i, s := range fleet[1:] {
		if got := s.mustGet("kyc"); got.GetAccessToken() != fresh.GetAccessToken() {
			t.Errorf("replica %d: after the reconnect, did not serve replica 0's new token", i+1)
		}
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2 (none for the restart, one for the report)", got)
	}
}

// TestFleetJoinedReplicaHearsChanges: a replica that started without
// Redis logged in alone, so it never read its token from Redis, which
// therefore would not tell it of changes. Once Redis answers, it checks
// its copies: a report on another replica reaches it like any other.
func TestFleetJoinedReplicaHearsChanges(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	srv.Kill()
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	alone := startReplica(t, clk, yaml, fleetOpts{})
	old := alone.mustGet("kyc")
	srv.Restart()
	eventually(t, "the replica to reach Redis", func() bool { return alone.metric("tokenvend_store_up", "") == 1 })
	eventually(t, "its token to be written back", func() bool {
		return alone.metric("tokenvend_store_events_total", `event="written_back"`) >= 1
	})
	if got := alone.mustGet("kyc"); got.GetAccessToken() != old.GetAccessToken() {
		t.Fatal("the replica lost its token on joining")
	}
	other := startFleet(t, clk, 1, yaml, fleetOpts{})[0]
	if got := other.mustGet("kyc"); got.GetAccessToken() != old.GetAccessToken() {
		t.Fatal("a second replica did not get the token written back")
	}
	clk.Advance(time.Second)
	resp, err := other.client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{
		Provider: "kyc", AccessToken: old.GetAccessToken()})
	if err != nil || !resp.GetInvalidated() {
		t.Fatalf("report: got %v, %v; want invalidated", resp, err)
	}
	fresh := other.mustGet("kyc")
	if got := alone.mustGet("kyc"); got.GetAccessToken() != fresh.GetAccessToken() {
		t.Error("the replica that joined late still served the reported token")
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2", got)
	}
}
