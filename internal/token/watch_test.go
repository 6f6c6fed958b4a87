package token

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

// TestFleetReportReachesReplicas: a token reported on one replica is
// dropped by the others, which had it cached: a Get while the fleet's new
// login runs waits on it, a Get after it serves its token; one login.
func TestFleetReportReachesReplicas(t *testing.T) {
	t.Parallel()
	caches, src, _ := newFleet(t, 3, nil)
	k := Key{Scope: "s"}
	burst(caches, k, 1)
	for _, c := range caches {
		if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-1" {
			t.Fatalf("warm: got %q, want tok-1", tok.AccessToken)
		}
	}
	release := src.block(t)
	if r := caches[0].Invalidate(context.Background(), k, "tok-1"); r != Invalidated {
		t.Fatalf("Invalidate: %v", r)
	}
	// The reported token is removed from the store before the login asks.
	waitFor(t, "the report's login to reach the upstream", func() bool { return src.calls() == 2 })
	ch := goGet(context.Background(), caches[1], k, 0)
	waitFor(t, "replica 1 to wait on the fleet's login", func() bool { busy, _ := inFlight(caches[1], k); return busy })
	release()
	if r := recv(t, ch); r.err != nil || r.tok.AccessToken != "tok-2" || !r.out.Fleet {
		t.Fatalf("replica 1 during the fleet's login: got %v, %v, %v; want tok-2 from the fleet", r.tok, r.out, r.err)
	}
	if tok, out := mustGet(t, caches[2], k, 0); tok.AccessToken != "tok-2" || !out.Fleet {
		t.Fatalf("replica 2 after the fleet's login: got %q (%v), want tok-2 from the fleet", tok.AccessToken, out)
	}
	if got := src.calls(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2", got)
	}
}

// flushable is a MemoryStore that a test can empty (Redis restarted
// without its data) or make fail (Redis down).
type flushable struct {
	now  func() time.Time
	mu   sync.Mutex
	cur  *MemoryStore
	down bool
	w    *Watcher
}

var errDown = errors.New("store down")

func (f *flushable) store() (*MemoryStore, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	return f.cur, nil
}

func (f *flushable) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = NewMemoryStore(f.now)
	if f.w != nil {
		f.cur.Watch(f.w)
	}
}

func (f *flushable) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *flushable) Watch(w *Watcher) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w = w
	f.cur.Watch(w)
}

func (f *flushable) Load(ctx context.Context, k Key) (Stored, error) {
	m, err := f.store()
	if err != nil {
		return Stored{}, err
	}
	return m.Load(ctx, k)
}

func (f *flushable) Save(ctx context.Context, k Key, s Stored) error {
	m, err := f.store()
	if err != nil {
		return err
	}
	return m.Save(ctx, k, s)
}

func (f *flushable) Acquire(ctx context.Context, k Key) (*Lease, error) {
	m, err := f.store()
	if err != nil {
		return nil, err
	}
	return m.Acquire(ctx, k)
}

func (f *flushable) Wait(ctx context.Context, k Key, seen uint64) error {
	m, err := f.store()
	if err != nil {
		return err
	}
	return m.Wait(ctx, k, seen)
}

func (f *flushable) Admit(ctx context.Context, a Attempt) (Admission, error) {
	m, err := f.store()
	if err != nil {
		return Admission{}, err
	}
	return m.Admit(ctx, a)
}

func (f *flushable) Settle(ctx context.Context, s Settlement) (Hold, error) {
	m, err := f.store()
	if err != nil {
		return Hold{}, err
	}
	return m.Settle(ctx, s)
}

// TestRecheck: after a reconnect (Lost) a store found empty keeps the
// local copy; after a change it means the token was removed, and the copy
// is dropped; a store that fails the recheck leaves the copy served and
// marked, and a newer stored token is taken up once it answers again.
func TestRecheck(t *testing.T) {
	t.Parallel()
	clk := clocktest.New(t0)
	fs := &flushable{now: clk.Now, cur: NewMemoryStore(clk.Now)}
	c, src, _ := newTestCache(t, func(o *Options) { o.Now, o.Store = clk.Now, fs })
	src.setAnswer(issue(clk, time.Hour))
	k := Key{Scope: "s"}
	if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-1" {
		t.Fatalf("got %q, want tok-1", tok.AccessToken)
	}
	mustGet(t, c, k, 0) // its own write, read once

	fs.flush()
	c.watcher.Lost()
	if tok, out := mustGet(t, c, k, 0); tok.AccessToken != "tok-1" || !out.Hit {
		t.Fatalf("after a reconnect to an empty store: got %q (%v), want tok-1, a hit", tok.AccessToken, out)
	}
	c.watcher.Changed(k)
	if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-2" {
		t.Fatalf("after a change to an empty store (removed): got %q, want tok-2 (a new login)", tok.AccessToken)
	}
	mustGet(t, c, k, 0)

	fs.setDown(true)
	c.watcher.Lost()
	if tok, out, err := c.Get(context.Background(), k, 0); err != nil || tok.AccessToken != "tok-2" || !out.Hit {
		t.Fatalf("with the store down: got %v (%v), %v; want tok-2, a hit", tok, out, err)
	}
	fs.setDown(false)
	c.mu.Lock()
	c.recheckPause = time.Time{} // the retry pause is real time: skip it
	c.mu.Unlock()
	now := clk.Now()
	newer := &Token{AccessToken: "other", IssuedAt: now, Expiry: now.Add(time.Hour)}
	if err := fs.Save(context.Background(), k, Stored{Token: newer, Fence: 100}); err != nil {
		t.Fatal(err)
	}
	if tok, out := mustGet(t, c, k, 0); tok.AccessToken != "other" || !out.Fleet {
		t.Fatalf("the store back with a newer token: got %q (%v), want it from the fleet", tok.AccessToken, out)
	}
	if got := src.calls(); got != 2 {
		t.Errorf("upstream logins: got %d, want 2", got)
	}
}
