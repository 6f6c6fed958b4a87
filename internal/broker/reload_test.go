package broker_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/token"
)

// TestNext: what a Broker built by Next takes over, provider by provider,
// and that a retired provider's hold changes are no longer reported.
func TestNext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := clocktest.New(t0)
	src := map[string]*fakeSource{}
	for _, n := range []string{"all", "tokens", "fresh", "gone"} {
		src[n] = &fakeSource{name: n, now: clk.Now, lifetime: time.Hour}
	}
	var mu sync.Mutex
	var holds []string
	onHold := func(p string, held bool) {
		mu.Lock()
		defer mu.Unlock()
		if held {
			holds = append(holds, p)
		}
	}
	o := token.Options{Now: clk.Now, RetryBase: time.Millisecond}
	b := broker.New([]broker.Provider{
		{Name: "all", Kind: "fake", Source: src["all"]},
		{Name: "tokens", Kind: "fake", Source: src["tokens"]},
		{Name: "fresh", Kind: "fake", Source: src["fresh"]},
		{Name: "gone", Kind: "fake", Source: src["gone"]},
	}, o, onHold)
	first := map[string]string{}
	for _, n := range []string{"all", "tokens", "fresh", "gone"} {
		a, err := b.Token(ctx, broker.Request{Provider: n})
		if err != nil {
			t.Fatal(err)
		}
		first[n] = a.Token.AccessToken
	}

	newFresh := &fakeSource{name: "fresh-new", now: clk.Now, lifetime: time.Hour}
	added := &fakeSource{name: "added", now: clk.Now, lifetime: time.Hour}
	carry := map[string]broker.Carry{"all": broker.All, "tokens": broker.Tokens, "fresh": broker.Fresh}
	next, retired := b.Next([]broker.Provider{
		// The Sources given for carried providers are not used.
		{Name: "all", Kind: "fake", Source: &fakeSource{name: "unused"}},
		{Name: "tokens", Kind: "fake", Source: &fakeSource{name: "unused"}},
		{Name: "fresh", Kind: "fake", Source: newFresh},
		{Name: "added", Kind: "fake", Source: added},
	}, o, onHold, func(name string) broker.Carry { return carry[name] })

	for _, tc := range []struct {
		name, want string
	}{
		{"all", first["all"]},       // the same cache
		{"tokens", first["tokens"]}, // adopted
		{"fresh", "fresh-new-1"},    // a login with the new Source
		{"added", "added-1"},
	} {
		a, err := next.Token(ctx, broker.Request{Provider: tc.name})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := a.Token.AccessToken; got != tc.want {
			t.Errorf("%s: got token %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, err := next.Token(ctx, broker.Request{Provider: "gone"}); token.KindOf(err) != token.KindNotFound {
		t.Errorf("removed provider: got %v, want not found", err)
	}
	if got := len(retired); got != 3 {
		t.Errorf("retired caches: got %d, want 3 (tokens, fresh, gone)", got)
	}
	var names []string
	for _, p := range next.Providers() {
		names = append(names, p.Name)
	}
	if want := []string{"all", "tokens", "fresh", "added"}; !slices.Equal(names, want) {
		t.Errorf("Providers: got %v, want %v, in config order", names, want)
	}
	// The old broker still answers its in-flight callers; a retired
	// cache's rejection is not reported for the name.
	src["gone"].err = token.Rejected(token.ReasonCredentialsRejected, "BAD", "rejected")
	for _, c := range retired {
		c.Close()
	}
	if _, err := b.Token(ctx, broker.Request{Provider: "gone"}); token.KindOf(err) != token.KindRejected {
		t.Fatalf("old broker after Close: got %v, want the rejection (a login, the token dropped)", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(holds) != 0 {
		t.Errorf("holds reported: got %v, want none from a retired provider", holds)
	}
}
