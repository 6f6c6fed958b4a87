package app_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/store/redistest"
)

// The fleet tests run three replicas (three app.New on loopback ports,
// the same config with the redis store) against one real redis-server and
// one upstream simulator, and count what the upstream sees.

// fleetClock is a fake clock at the real time: Redis expires stored tokens
// at their expiry on its own (real) clock.
func fleetClock() *clocktest.Clock { return clocktest.New(time.Now().Truncate(time.Second)) }

// storeKey is an encryption key (32 bytes, base64) made of b.
func storeKey(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

// storeYAML is the store section for Redis at addrs with the keys named
// (id: key).
func storeYAML(addrs []string, keys ...[2]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "store:\n  redis:\n    addrs: [%s]\n  encryption_keys:\n", strings.Join(addrs, ", "))
	for _, k := range keys {
		fmt.Fprintf(&b, "    - {id: %q, key: %q}\n", k[0], k[1])
	}
	return b.String()
}

var defaultKeys = [][2]string{{"k1", storeKey('a')}}

// fleetOpts tune a replica.
type fleetOpts struct {
	leaseTTL time.Duration
}

// startReplica runs one replica for yaml until the test ends (or until its
// stop is called).
func startReplica(t *testing.T, clk *clocktest.Clock, yaml string, fo fleetOpts) *service {
	t.Helper()
	cfg, err := config.Parse([]byte("server:\n  grpc_addr: 127.0.0.1:0\n  http_addr: 127.0.0.1:0\n" + yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return startConfigWith(t, clk, cfg, func(o *app.Options) { o.StoreLeaseTTL = fo.leaseTTL })
}

// startFleet starts n replicas of yaml and waits until each has reached
// Redis (tokenvend_store_up 1).
func startFleet(t *testing.T, clk *clocktest.Clock, n int, yaml string, fo fleetOpts) []*service {
	t.Helper()
	var fleet []*service
	for range n {
		fleet = append(fleet, startReplica(t, clk, yaml, fo))
	}
	for _, s := range fleet {
		eventually(t, "the replica to reach Redis", func() bool { return s.metric("tokenvend_store_up", "") == 1 })
	}
	return fleet
}

// callers runs per concurrent GetTokens of provider on each replica and
// returns the answers and the number of failures.
func callers(fleet []*service, provider string, per int) (answers []*tokenvendv1.GetTokenResponse, failed int, lastErr error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range fleet {
		for range per {
			wg.Go(func() {
				resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: provider})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed++
					lastErr = err
					return
				}
				answers = append(answers, resp)
			})
		}
	}
	wg.Wait()
	return answers, failed, lastErr
}

// auditResults counts the audit lines' results across the fleet.
func auditResults(fleet []*service) map[string]int {
	out := map[string]int{}
	for _, s := range fleet {
		for _, r := range []string{"hit", "login", "shared", "held", "fleet", "shared_fleet"} {
			out[r] += strings.Count(s.logs.String(), `"result":"`+r+`"`)
		}
	}
	return out
}

// TestFleetColdBurst: 300 callers spread over three replicas, all cold,
// cost one upstream login; every replica's token works upstream, and the
// audit says which replicas' callers got the fleet's login. It runs
// against a standalone Redis and a three-node Cluster.
func TestFleetColdBurst(t *testing.T) {
	t.Parallel()
	for name, addrs := range map[string]func(t *testing.T) []string{
		"standalone": func(t *testing.T) []string { return []string{redistest.Start(t).Addr} },
		"cluster":    func(t *testing.T) []string { return redistest.StartCluster(t).Addrs() },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := fleetClock()
			sim, url := kycSim(t, clk)
			fleet := startFleet(t, clk, 3, storeYAML(addrs(t), defaultKeys...)+"providers:"+kycProvider("kyc", url, kycPassword), fleetOpts{})
			answers, failed, err := callers(fleet, "kyc", 100)
			if failed > 0 {
				t.Fatalf("%d of 300 callers failed, the last with %v", failed, err)
			}
			if got := sim.Logins(); got != 1 {
				t.Errorf("upstream logins for 300 callers on 3 replicas: got %d, want 1", got)
			}
			for _, a := range answers {
				if a.GetAccessToken() != answers[0].GetAccessToken() {
					t.Fatal("replicas vended different tokens")
				}
			}
			if got := useHeaders(t, url+"/api/v1/resource", answers[0].GetHeaders()); got != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", got)
			}
			res := auditResults(fleet)
			if res["login"] != 1 || res["fleet"] < 1 {
				t.Errorf("audit results: %v; want one login, and the fleet's login for another replica", res)
			}
			// Store calls are traced on the login path, never on a hit.
			storeSpans := func() (n int) {
				for _, s := range fleet {
					for _, sp := range s.spans.GetSpans() {
						if strings.HasPrefix(sp.Name, "tokenvend.store.") {
							n++
						}
					}
				}
				return n
			}
			if storeSpans() == 0 {
				t.Error("no tokenvend.store.* span on the login path")
			}
			// The fleet's write invalidated every replica's read of the
			// key: each one's first Get after it reads the stored token
			// once (and tracks the key again). From then on, nothing.
			if _, failed, err := callers(fleet, "kyc", 1); failed > 0 {
				t.Fatal(err)
			}
			for _, s := range fleet {
				s.spans.Reset()
			}
			if _, failed, err := callers(fleet, "kyc", 20); failed > 0 {
				t.Fatal(err)
			}
			if n := storeSpans(); n != 0 {
				t.Errorf("cached GetTokens made %d store calls, want 0", n)
			}
			t.Logf("cold burst, 300 callers on 3 replicas: %d upstream login(s); audit %v", sim.Logins(), res)
		})
	}
}

// TestFleetWrongPassword: 180 callers over three replicas with a wrong
// password cost one upstream attempt per backoff period for the fleet.
func TestFleetWrongPassword(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	fleet := startFleet(t, clk, 3, storeYAML([]string{srv.Addr}, defaultKeys...)+"providers:"+kycProvider("kyc", url, "wrong"), fleetOpts{})
	backoff := time.Minute // cache.reject_backoff's default, doubling
	for round := 1; round <= 3; round++ {
		_, failed, _ := callers(fleet, "kyc", 60)
		if failed != 180 {
			t.Fatalf("round %d: %d of 180 callers failed, want all", round, failed)
		}
		if got := sim.LoginAttempts(); got != int64(round) {
			t.Fatalf("after %d backoff period(s): upstream attempts got %d, want %d", round, got, round)
		}
		clk.Advance(backoff + time.Second)
		backoff *= 2
	}
	t.Logf("wrong password, 180 callers on 3 replicas per period, 3 periods: %d upstream attempts", sim.LoginAttempts())
}

// TestFleetIbaneraLockout: a wrong Ibanera password across many backoff
// periods and TOTP steps never reaches the upstream's lockout: the fleet
// sends it max_failed_logins (3) times in all.
func TestFleetIbaneraLockout(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := ibaneraSim(t, clk)
	srv := redistest.Start(t)
	fleet := startFleet(t, clk, 3, storeYAML([]string{srv.Addr}, defaultKeys...)+"providers:"+ibaneraProvider(url, "wrong", ""), fleetOpts{})
	backoff := time.Minute
	for round := 1; round <= 6; round++ {
		if _, failed, _ := callers(fleet, "ibanera", 20); failed != 60 {
			t.Fatalf("round %d: %d of 60 callers failed, want all", round, failed)
		}
		clk.Advance(backoff + time.Second)
		backoff = min(2*backoff, 30*time.Minute)
	}
	if got := sim.FailedLogins(); got != 3 {
		t.Errorf("failed logins upstream over 6 backoff periods: got %d, want 3 (max_failed_logins for the fleet)", got)
	}
	if sim.Locked(ibaneraUser) {
		t.Fatal("the upstream locked the account")
	}
	t.Logf("ibanera wrong password, 3 replicas, 6 backoff periods: %d failed logins upstream, locked: %v", sim.FailedLogins(), sim.Locked(ibaneraUser))
}

// TestFleetIbaneraOneLogin: three replicas share one Ibanera session.
func TestFleetIbaneraOneLogin(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := ibaneraSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + ibaneraProvider(url, ibaneraPassword, "")
	fleet := startFleet(t, clk, 3, yaml, fleetOpts{})
	if _, failed, err := callers(fleet, "ibanera", 10); failed > 0 {
		t.Fatalf("%d callers failed: %v", failed, err)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("ibanera logins for 3 replicas: got %d, want 1", got)
	}
}

// TestFleetWarmRestart: every replica stopped and three new ones started
// cost no login while the token is valid.
func TestFleetWarmRestart(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	first := startFleet(t, clk, 3, yaml, fleetOpts{})
	if _, failed, err := callers(first, "kyc", 10); failed > 0 {
		t.Fatalf("%d callers failed: %v", failed, err)
	}
	for _, s := range first {
		if err := s.stop(); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(10 * time.Minute)
	second := startFleet(t, clk, 3, yaml, fleetOpts{})
	answers, failed, err := callers(second, "kyc", 10)
	if failed > 0 {
		t.Fatalf("%d callers failed after the restart: %v", failed, err)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins across a restart of every replica: got %d, want 1 (0 after the restart)", got)
	}
	if got := useHeaders(t, url+"/api/v1/resource", answers[0].GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint after the restart: got %d, want 200", got)
	}
	t.Logf("warm restart of 3 replicas: %d login(s) after the restart", sim.Logins()-1)
}

// TestFleetLeaseHolderKilled: the replica whose login hangs upstream is
// stopped mid-login; another takes over once the lease lapses (its TTL
// here 2s), with one more login, and its callers get a token.
func TestFleetLeaseHolderKilled(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	const ttl = 2 * time.Second
	fleet := startFleet(t, clk, 3, yaml, fleetOpts{leaseTTL: ttl})
	// The fleet has logged in once (its credentials are proven), and the
	// token has expired: every replica needs a new one.
	if _, failed, err := callers(fleet, "kyc", 1); failed > 0 {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	holder := fleet[0]
	sim.SetFault(kycsim.Fault{Hang: true})
	hctx, hcancel := context.WithCancel(context.Background())
	hung := make(chan error, 1)
	go func() {
		_, err := holder.client.GetToken(hctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"})
		hung <- err
	}()
	eventually(t, "the holder's login to reach the upstream", func() bool { return sim.LoginAttempts() == 2 })
	others := make(chan error, 2)
	for _, s := range fleet[1:] {
		go func() {
			resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
			if err == nil && useHeaders(t, url+"/api/v1/resource", resp.GetHeaders()) != http.StatusOK {
				err = fmt.Errorf("the token does not work upstream")
			}
			others <- err
		}()
	}
	eventually(t, "the other replicas to wait on the lease", func() bool {
		return fleet[1].metric("tokenvend_store_events_total", `event="lease_wait"`) >= 1 &&
			fleet[2].metric("tokenvend_store_events_total", `event="lease_wait"`) >= 1
	})
	hcancel()
	<-hung
	killed := time.Now()
	if err := holder.stop(); err != nil {
		t.Fatal(err)
	}
	// The stopped replica's lease renewals fail; once it has given the
	// lease up, its login is cut. Only then does the upstream answer again.
	eventually(t, "the dead holder to lose its lease", func() bool { return strings.Contains(holder.logs.String(), "lease lost") })
	before := sim.LoginAttempts()
	sim.SetFault(kycsim.Fault{})
	for range 2 {
		if err := <-others; err != nil {
			t.Fatalf("a caller on another replica: %v\n%s", err, fleet[1].logs.String())
		}
	}
	took := time.Since(killed)
	if took > ttl+2*time.Second {
		t.Errorf("takeover after %s, want within the lease TTL (%s)", took, ttl)
	}
	// Attempts are counted as they arrive: the first login, the hung one,
	// and the one taking over.
	if got := sim.LoginAttempts() - before; got != 1 {
		t.Errorf("upstream login attempts after the holder died: got %d, want 1 (one replica taking over)", got)
	}
	takeovers := max(fleet[1].metric("tokenvend_store_events_total", `event="takeover"`), 0) + max(fleet[2].metric("tokenvend_store_events_total", `event="takeover"`), 0)
	if takeovers != 1 {
		t.Errorf("takeover metric: got %v, want 1", takeovers)
	}
	t.Logf("lease holder killed: taken over %s after the kill; %d upstream login attempt(s) after it", took.Round(time.Millisecond), sim.LoginAttempts()-before)
}

// TestFleetRedisLost: Redis killed mid-run costs no failed call for a
// valid token; a replica that must log in meanwhile does so alone; when
// Redis returns (empty), the tokens are written back, so a replica
// started then finds them without a login.
func TestFleetRedisLost(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword) + kycProvider("kyc2", url, kycPassword)
	fleet := startFleet(t, clk, 3, yaml, fleetOpts{})
	if _, failed, err := callers(fleet, "kyc", 10); failed > 0 {
		t.Fatalf("%d callers failed: %v", failed, err)
	}
	srv.Kill()
	for _, s := range fleet {
		eventually(t, "the replica to see Redis gone", func() bool { return s.metric("tokenvend_store_up", "") == 0 })
	}
	_, failed, err := callers(fleet, "kyc", 100)
	if failed > 0 {
		t.Errorf("with Redis down: %d of 300 calls for a valid token failed (last: %v), want 0", failed, err)
	}
	if r := fleet[0].rest(http.MethodGet, "/readyz", ""); r.Status != http.StatusOK {
		t.Errorf("readiness with Redis down: got %d, want 200", r.Status)
	}
	// A key no replica holds: each logs in alone, once for its callers.
	before := sim.Logins()
	if _, failed, err := callers(fleet, "kyc2", 20); failed > 0 {
		t.Fatalf("with Redis down, a cold key: %d callers failed: %v", failed, err)
	}
	alone := sim.Logins() - before
	if alone > 3 {
		t.Errorf("with Redis down, logins for 60 callers of a cold key on 3 replicas: got %d, want at most 3 (one per replica)", alone)
	}
	srv.Restart()
	for _, s := range fleet {
		eventually(t, "the replica to see Redis back", func() bool { return s.metric("tokenvend_store_up", "") == 1 })
	}
	defer func() {
		if t.Failed() {
			t.Log(fleet[0].logs.String())
		}
	}()
	eventually(t, "the tokens to be written back", func() bool {
		return fleet[0].metric("tokenvend_store_events_total", `provider="kyc",event="written_back"`) >= 1 &&
			fleet[0].metric("tokenvend_store_events_total", `provider="kyc2",event="written_back"`) >= 1
	})
	before = sim.Logins()
	late := startFleet(t, clk, 1, yaml, fleetOpts{})
	for _, p := range []string{"kyc", "kyc2"} {
		if _, failed, err := callers(late, p, 5); failed > 0 {
			t.Fatalf("a replica started after Redis came back, %s: %v", p, err)
		}
	}
	if got := sim.Logins() - before; got != 0 {
		t.Errorf("a replica started after Redis came back: %d logins, want 0 (the tokens written back)", got)
	}
	t.Logf("Redis lost: %d failed calls for valid tokens over 300; %d login(s) for a cold key on 3 replicas alone; 0 after the restart", failed, alone)
}

// TestFleetKeyRotation: a key added first still opens what the old one
// sealed (no login); once the old key is removed, its values are misses:
// one fresh login, no error to a caller.
func TestFleetKeyRotation(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	providers := "providers:" + kycProvider("kyc", url, kycPassword)
	old, next := [2]string{"old", storeKey('o')}, [2]string{"new", storeKey('n')}
	for i, step := range []struct {
		keys   [][2]string
		logins int64
	}{
		{[][2]string{old}, 1},
		{[][2]string{old, next}, 1}, // the new key added second: nothing changes
		{[][2]string{next, old}, 1}, // moved first: the old still opens
		{[][2]string{next}, 2},      // the old removed: a miss, one login
	} {
		fleet := startFleet(t, clk, 2, storeYAML([]string{srv.Addr}, step.keys...)+providers, fleetOpts{})
		answers, failed, err := callers(fleet, "kyc", 5)
		if failed > 0 {
			t.Fatalf("step %d: %d callers failed: %v", i, failed, err)
		}
		if got := sim.Logins(); got != step.logins {
			t.Errorf("step %d (keys %v): logins got %d, want %d", i, step.keys, got, step.logins)
		}
		if got := useHeaders(t, url+"/api/v1/resource", answers[0].GetHeaders()); got != http.StatusOK {
			t.Errorf("step %d: protected endpoint got %d, want 200", i, got)
		}
		for _, s := range fleet {
			if err := s.stop(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFleetNothingInTheClear: after real logins through the service, no
// Redis key or value holds an access token, a header value or a password.
func TestFleetNothingInTheClear(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	_, kurl := kycSim(t, clk)
	_, iurl := ibaneraSim(t, clk)
	srv := redistest.Start(t)
	fleet := startFleet(t, clk, 2, storeYAML([]string{srv.Addr}, defaultKeys...)+"providers:"+kycProvider("kyc", kurl, kycPassword)+ibaneraProvider(iurl, ibaneraPassword, ""), fleetOpts{})
	var secrets []string
	for _, p := range []string{"kyc", "ibanera"} {
		answers, failed, err := callers(fleet, p, 3)
		if failed > 0 {
			t.Fatalf("%s: %v", p, err)
		}
		secrets = append(secrets, answers[0].GetAccessToken())
		for _, v := range answers[0].GetHeaders() {
			secrets = append(secrets, strings.TrimPrefix(v, "Bearer "))
		}
	}
	secrets = append(secrets, kycPassword, ibaneraPassword, ibaneraSecret)
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	ctx := t.Context()
	keys, err := rc.Do(ctx, rc.B().Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil || len(keys) == 0 {
		t.Fatalf("KEYS: %v, %v", keys, err)
	}
	for _, k := range keys {
		typ, _ := rc.Do(ctx, rc.B().Type().Key(k).Build()).ToString()
		var v string
		switch typ {
		case "string":
			v, _ = rc.Do(ctx, rc.B().Get().Key(k).Build()).ToString()
		case "hash":
			m, _ := rc.Do(ctx, rc.B().Hgetall().Key(k).Build()).AsStrMap()
			v = fmt.Sprint(m)
		}
		for _, s := range secrets {
			// ibanera's per-call otp header is not stored at all; short
			// values (a six-digit code) would match by chance.
			if len(s) >= 8 && (strings.Contains(k, s) || strings.Contains(v, s)) {
				t.Errorf("Redis key %q holds a credential in the clear", k)
			}
		}
	}
}

// TestFleetStartsWithoutRedis: a replica started while Redis cannot be
// reached starts anyway, serves (logging in alone), stays ready with
// tokenvend_store_up 0, and joins the fleet once Redis answers.
func TestFleetStartsWithoutRedis(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	srv.Kill()
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	s := startReplica(t, clk, yaml, fleetOpts{})
	resp := s.mustGet("kyc")
	if got := useHeaders(t, url+"/api/v1/resource", resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
	if got := s.metric("tokenvend_store_up", ""); got != 0 {
		t.Errorf("tokenvend_store_up with Redis down: got %v, want 0", got)
	}
	if r := s.rest(http.MethodGet, "/readyz", ""); r.Status != http.StatusOK {
		t.Errorf("readiness with Redis down: got %d, want 200", r.Status)
	}
	srv.Restart()
	eventually(t, "the replica to reach Redis", func() bool { return s.metric("tokenvend_store_up", "") == 1 })
	eventually(t, "its token to be written back", func() bool {
		return s.metric("tokenvend_store_events_total", `event="written_back"`) >= 1
	})
	other := startFleet(t, clk, 1, yaml, fleetOpts{})
	if got := other[0].mustGet("kyc").GetAccessToken(); got != resp.GetAccessToken() {
		t.Error("a second replica did not get the token the first logged in for alone")
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1", got)
	}
}

// TestFleetInvalidate: a token the upstream revoked, reported on each of
// three replicas, costs one login for the fleet: the first report logs in,
// the others pick up its token; no replica serves the revoked one after
// its report, nor does a replica started after the first report.
func TestFleetInvalidate(t *testing.T) {
	t.Parallel()
	clk := fleetClock()
	sim, url := kycSim(t, clk)
	srv := redistest.Start(t)
	yaml := storeYAML([]string{srv.Addr}, defaultKeys...) + "providers:" + kycProvider("kyc", url, kycPassword)
	fleet := startFleet(t, clk, 3, yaml, fleetOpts{})
	answers, failed, err := callers(fleet, "kyc", 5)
	if failed > 0 {
		t.Fatal(err)
	}
	old := answers[0]
	sim.Revoke(old.GetAccessToken())
	clk.Advance(time.Second) // the next login's JWT differs from the revoked one
	for i, s := range fleet {
		resp, err := s.client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{
			Provider: "kyc", AccessToken: old.GetAccessToken(), UpstreamStatus: 401})
		if err != nil || !resp.GetInvalidated() {
			t.Fatalf("replica %d: report got %v, %v; want invalidated", i, resp, err)
		}
		fresh := s.mustGet("kyc")
		if fresh.GetAccessToken() == old.GetAccessToken() {
			t.Fatalf("replica %d: got the revoked token after its report", i)
		}
		if code := useHeaders(t, url+"/api/v1/resource", fresh.GetHeaders()); code != http.StatusOK {
			t.Errorf("replica %d: the fresh token upstream: got %d, want 200", i, code)
		}
	}
	late := startFleet(t, clk, 1, yaml, fleetOpts{})
	if got := late[0].mustGet("kyc").GetAccessToken(); got == old.GetAccessToken() {
		t.Error("a replica started after the report got the revoked token")
	}
	if got := sim.Logins(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2 (the first, and one for the fleet's report)", got)
	}
}
