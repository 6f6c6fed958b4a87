package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/token"
)

func TestKeepLogsInWithoutCallers(t *testing.T) {
	t.Parallel()
	clk := clocktest.New(t0)
	kept := &fakeSource{name: "kept", now: clk.Now, lifetime: time.Hour}
	lazy := &fakeSource{name: "lazy", now: clk.Now, lifetime: time.Hour}
	single := &fakeSource{name: "single", now: clk.Now, lifetime: time.Hour}
	b := broker.New([]broker.Provider{
		{Name: "kept", Kind: "fake", Source: kept, Keep: true, Scopes: broker.Scopes{Allowed: []string{"read", "write"}, Default: "read"}},
		{Name: "lazy", Kind: "fake", Source: lazy},
		{Name: "single", Kind: "fake", Source: single, SingleUse: true, Keep: true},
	}, token.Options{Now: clk.Now, RetryBase: time.Millisecond}, nil)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Keep(ctx); close(done) }()
	valid := func() map[string]bool {
		v := map[string]bool{}
		for _, p := range b.Providers() {
			v[p.Name] = p.Valid
		}
		return v
	}
	// Nothing to wait on but the cache itself: poll it.
	for deadline := time.Now().Add(5 * time.Second); !valid()["kept"]; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the kept provider's token")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not return after its context ended")
	}

	if got := kept.calls(); got != 1 {
		t.Fatalf("kept provider's logins: got %d, want 1", got)
	}
	if got := kept.last().Scope; got != "read" {
		t.Errorf("kept provider's login scope: got %q, want the default %q", got, "read")
	}
	if l, s := lazy.calls(), single.calls(); l != 0 || s != 0 {
		t.Errorf("logins of providers not kept (and single-use): got %d and %d, want 0 and 0", l, s)
	}
	if v := valid(); !v["kept"] || v["lazy"] {
		t.Errorf("Providers Valid: got %v, want kept true, lazy false", v)
	}
	a, err := b.Token(context.Background(), broker.Request{Provider: "kept"})
	if err != nil || a.Token.AccessToken != "kept-1" || !a.Outcome.Hit {
		t.Errorf("first caller: got %v %+v %v, want a hit on kept-1", a.Token, a.Outcome, err)
	}
}
