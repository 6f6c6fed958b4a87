package redisstore_test

import (
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/store/redisstore"
	"github.com/tokenvend/tokenvend/internal/store/redistest"
	"github.com/tokenvend/tokenvend/internal/token"
	"github.com/tokenvend/tokenvend/internal/token/storetest"
)

// watched records what a store tells one Watcher.
type watched struct {
	w       *token.Watcher
	changed chan token.Key
	lost    chan struct{}
}

func newWatched() *watched {
	r := &watched{changed: make(chan token.Key, 16), lost: make(chan struct{}, 16)}
	r.w = &token.Watcher{
		Changed: func(k token.Key) { r.changed <- k },
		Lost:    func() { r.lost <- struct{}{} },
	}
	return r
}

func (r *watched) wantChanged(t *testing.T, want token.Key) {
	t.Helper()
	select {
	case k := <-r.changed:
		if k != want {
			t.Fatalf("Changed(%+v), want Changed(%+v)", k, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no Changed(%+v) within 5s", want)
	}
}

// TestWatchTellsChanges: a replica that read a token is told, with the
// token.Key (escaped parts mapped back), when another replica writes it or
// removes it, and told to check everything when its connection is lost.
func TestWatchTellsChanges(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	addrs := []string{srv.Addr}
	ac, bc := client(t, addrs, redisstore.Options{}), client(t, addrs, redisstore.Options{})
	a, b := ac.Provider("kyc"), bc.Provider("kyc")
	rec := newWatched()
	b.Watch(rec.w)
	ctx := t.Context()
	k := token.Key{Scope: "read:all {x}%", Subject: "user@example.com/é"}
	if err := a.Save(ctx, k, token.Stored{Token: storetest.Token("one"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, k, token.Stored{Token: storetest.Token("two"), Fence: 2}); err != nil {
		t.Fatal(err)
	}
	rec.wantChanged(t, k)
	// Read again, then removed (a tombstone is an expired token).
	if st, err := b.Load(ctx, k); err != nil || st.Token == nil || st.Token.AccessToken != "two" {
		t.Fatalf("Load after the change: %+v, %v; want two", st.Token, err)
	}
	now := time.Now()
	if err := a.Save(ctx, k, token.Stored{Token: &token.Token{IssuedAt: now, Expiry: now}, Fence: 3}); err != nil {
		t.Fatal(err)
	}
	rec.wantChanged(t, k)
	// Another provider's token of the same key, read by the same client,
	// is not this watcher's: the next thing it hears is otherKey.
	if _, err := bc.Provider("other").Load(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := ac.Provider("other").Save(ctx, k, token.Stored{Token: storetest.Token("three"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	otherKey := token.Key{Scope: "s"}
	if _, err := b.Load(ctx, otherKey); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, otherKey, token.Stored{Token: storetest.Token("x"), Fence: 1}); err != nil {
		t.Fatal(err)
	}
	rec.wantChanged(t, otherKey)
	srv.Kill()
	select {
	case <-rec.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("no Lost within 10s of Redis being killed")
	}
}
