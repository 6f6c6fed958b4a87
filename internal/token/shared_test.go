package token

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

// A fleet in one process: n Caches ("replicas") over one Source (the
// upstream) and one MemoryStore (what they share), on one fake clock. The
// redis store runs the same scenarios across processes' worth of clients
// in internal/app's fleet tests.
func newFleet(t *testing.T, n int, mod func(*Options)) ([]*Cache, *fakeSource, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(t0)
	src := &fakeSource{answer: issue(clk, time.Hour)}
	store := NewMemoryStore(clk.Now)
	var caches []*Cache
	for range n {
		o := Options{
			Provider: "p", Kind: "fake",
			RefreshBefore: time.Minute, MinValid: 10 * time.Second,
			RejectBackoff: time.Minute, MaxRejectBackoff: 10 * time.Minute,
			LoginTimeout: 10 * time.Second, LoginAttempts: 3, RetryBase: time.Millisecond,
			Now: clk.Now, Store: store,
		}
		if mod != nil {
			mod(&o)
		}
		caches = append(caches, NewCache(src, o))
	}
	return caches, src, clk
}

// burst runs per callers Gets of k on each cache at once and returns their
// results.
func burst(caches []*Cache, k Key, per int) []result {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var out []result
	for _, c := range caches {
		for range per {
			wg.Go(func() {
				tok, o, err := c.Get(context.Background(), k, 0)
				mu.Lock()
				out = append(out, result{tok, o, err})
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return out
}

// TestFleetColdBurstLogsInOnce: concurrent misses on three replicas cost
// one login; the other replicas' callers are told it was the fleet's.
func TestFleetColdBurstLogsInOnce(t *testing.T) {
	t.Parallel()
	caches, src, _ := newFleet(t, 3, nil)
	release := src.block(t)
	k := Key{Scope: "s"}
	done := make(chan []result)
	go func() { done <- burst(caches, k, 100) }()
	for _, c := range caches {
		waitFor(t, "every caller waiting", func() bool { _, n := inFlight(c, k); return n == 100 })
	}
	release()
	res := <-done
	fleet := 0
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("Get: %v", r.err)
		}
		if r.tok.AccessToken != "tok-1" {
			t.Fatalf("got token %q, want tok-1", r.tok.AccessToken)
		}
		if r.out.Fleet {
			fleet++
		}
	}
	if got := src.calls(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1", got)
	}
	if fleet != 200 {
		t.Errorf("callers answered by another replica's login: got %d, want 200", fleet)
	}
	// Later hits read nothing but memory.
	for _, c := range caches {
		if _, out := mustGet(t, c, k, 0); !out.Hit {
			t.Errorf("second Get: got %v, want hit", out)
		}
	}
}

// TestFleetWrongPasswordOneAttemptPerBackoff: a rejection on one replica
// holds every replica's logins, and after each backoff one probe for the
// fleet asks the upstream again.
func TestFleetWrongPasswordOneAttemptPerBackoff(t *testing.T) {
	t.Parallel()
	caches, src, clk := newFleet(t, 3, nil)
	src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
	k := Key{Scope: "s"}
	backoff := time.Minute
	for round := 1; round <= 3; round++ {
		for _, r := range burst(caches, k, 60) {
			if KindOf(r.err) != KindRejected {
				t.Fatalf("round %d: got %v, want the rejection", round, r.err)
			}
		}
		if got := src.calls(); got != round {
			t.Fatalf("round %d: upstream attempts: got %d, want %d", round, got, round)
		}
		clk.Advance(backoff + time.Second)
		backoff *= 2
	}
}

// TestFleetRefreshOnce: the token nearing expiry is refreshed by one
// replica; the others serve its new token without a login.
func TestFleetRefreshOnce(t *testing.T) {
	t.Parallel()
	caches, src, clk := newFleet(t, 3, nil)
	k := Key{Scope: "s"}
	for _, c := range caches {
		mustGet(t, c, k, 0)
	}
	if got := src.calls(); got != 1 {
		t.Fatalf("logins: got %d, want 1", got)
	}
	clk.Advance(time.Hour - 50*time.Second) // past the refresh point, still valid
	for _, c := range caches {
		mustGet(t, c, k, 0) // starts each replica's background refresh
	}
	for _, c := range caches {
		waitFor(t, "the refresh to end", func() bool { busy, _ := inFlight(c, k); return !busy })
	}
	if got := src.calls(); got != 2 {
		t.Errorf("logins after the refresh point: got %d, want 2", got)
	}
	for i, c := range caches {
		if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-2" {
			t.Errorf("replica %d: got %q, want the refreshed tok-2", i, tok.AccessToken)
		}
	}
}

// TestFleetInvalidateOneLogin: replicas reporting the same refused token
// cost one login for the fleet; the report does not adopt the refused
// token back from the store.
func TestFleetInvalidateOneLogin(t *testing.T) {
	t.Parallel()
	caches, src, _ := newFleet(t, 3, nil)
	k := Key{Scope: "s"}
	for _, c := range caches {
		mustGet(t, c, k, 0)
	}
	for _, c := range caches {
		if got := c.Invalidate(context.Background(), k, "tok-1"); got != Invalidated {
			t.Fatalf("Invalidate: got %s, want %s", got, Invalidated)
		}
		if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-2" {
			t.Fatalf("after the report: got %q, want tok-2", tok.AccessToken)
		}
	}
	if got := src.calls(); got != 2 {
		t.Errorf("logins: got %d, want 2 (the first, and one for the report)", got)
	}
}

// TestFleetWarmStart: a replica started after another logged in serves
// the stored token without a login.
func TestFleetWarmStart(t *testing.T) {
	t.Parallel()
	caches, src, _ := newFleet(t, 2, nil)
	k := Key{Scope: "s"}
	mustGet(t, caches[0], k, 0)
	tok, out := mustGet(t, caches[1], k, 0)
	if tok.AccessToken != "tok-1" || out.String() != "fleet" {
		t.Errorf("second replica: got %q (%s), want tok-1 (fleet)", tok.AccessToken, out)
	}
	if got := src.calls(); got != 1 {
		t.Errorf("logins: got %d, want 1", got)
	}
}

// TestFleetLateWriteIsFenced: a replica whose login ends after a newer
// lease's token was stored (it was paused past its lease) does not
// overwrite it: its Save is refused and it serves the stored token.
func TestFleetLateWriteIsFenced(t *testing.T) {
	t.Parallel()
	caches, src, clk := newFleet(t, 1, nil)
	store := caches[0].o.Store.(*MemoryStore)
	release := src.block(t)
	k := Key{Scope: "s"}
	ch := goGet(context.Background(), caches[0], k, 0)
	waitFor(t, "the login in flight", func() bool { return src.calls() == 1 })
	newer := &Token{AccessToken: "newer", IssuedAt: clk.Now(), Expiry: clk.Now().Add(time.Hour)}
	if err := store.Save(context.Background(), k, Stored{Token: newer, Fence: 1000}); err != nil {
		t.Fatal(err)
	}
	release()
	r := recv(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tok.AccessToken != "newer" {
		t.Errorf("after a fenced write: got %q, want the newer stored token", r.tok.AccessToken)
	}
	if st, _ := store.Load(context.Background(), k); st.Token.AccessToken != "newer" || st.Fence != 1000 {
		t.Errorf("stored: got %q (fence %d), want newer (1000)", st.Token.AccessToken, st.Fence)
	}
}

// TestFleetCheckOnce: a revocable token (CheckEvery) is checked once per
// interval for the fleet; when a check is rejected, every replica stops
// serving it.
func TestFleetCheckOnce(t *testing.T) {
	t.Parallel()
	caches, src, clk := newFleet(t, 3, nil)
	src.setAnswer(func(n int, r Request) (*Token, error) {
		if n == 3 {
			return nil, rejected()
		}
		return &Token{AccessToken: "revocable", IssuedAt: clk.Now(), CheckEvery: time.Minute}, nil
	})
	k := Key{Scope: "s"}
	for _, c := range caches {
		mustGet(t, c, k, 0)
	}
	for round := 2; round <= 3; round++ {
		clk.Advance(time.Minute + time.Second)
		for _, c := range caches {
			c.Get(context.Background(), k, 0) // a hit past the check point starts the check
			waitFor(t, "the check to end", func() bool { busy, _ := inFlight(c, k); return !busy })
		}
		if got := src.calls(); got != round {
			t.Fatalf("checks after %d intervals: got %d calls, want %d (one per interval for the fleet)", round-1, got, round)
		}
	}
	for i, c := range caches {
		if _, _, err := c.Get(context.Background(), k, 0); KindOf(err) != KindRejected {
			t.Errorf("replica %d after the rejected check: got %v, want the rejection", i, err)
		}
	}
}
