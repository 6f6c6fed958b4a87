package token

import (
	"context"
	"sync"
	"testing"
	"time"
)

// current gets k's token, waiting for a login in flight.
func current(t *testing.T, c *Cache, k Key) *Token {
	t.Helper()
	tok, _ := mustGet(t, c, k, 0)
	return tok
}

func TestInvalidateOnlyTheCurrentToken(t *testing.T) {
	t.Parallel()
	c, src, _ := newTestCache(t, nil)
	k := Key{Scope: "a"}
	cur := current(t, c, k)
	current(t, c, Key{Scope: "b"})
	for _, tc := range []struct {
		name string
		k    Key
		tok  string
	}{
		{"made up", k, "tok-999"},
		{"another key's", k, "tok-2"},
		{"a prefix", k, cur.AccessToken[:3]},
		{"of a key never asked for", Key{Scope: "c"}, cur.AccessToken},
	} {
		if got := c.Invalidate(context.Background(), tc.k, tc.tok); got != NotCurrent {
			t.Errorf("%s: got %s, want %s", tc.name, got, NotCurrent)
		}
	}
	if n := src.calls(); n != 2 {
		t.Errorf("logins after reports of tokens that are not current: got %d, want 2", n)
	}
	if got := current(t, c, k); got.AccessToken != cur.AccessToken {
		t.Errorf("token after those reports: got %s, want %s kept", got.AccessToken, cur.AccessToken)
	}
}

func TestInvalidateConcurrentReportsCostOneLogin(t *testing.T) {
	t.Parallel()
	c, src, _ := newTestCache(t, nil)
	k := Key{Scope: "a"}
	old := current(t, c, k)
	release := src.block(t)
	var wg sync.WaitGroup
	results := make(chan Invalidation, 1000)
	for range 1000 {
		wg.Go(func() { results <- c.Invalidate(context.Background(), k, old.AccessToken) })
	}
	// Callers that arrive once the token is dropped wait on the one
	// login, never get the dropped token.
	waitFor(t, "a report to start the login", func() bool { busy, _ := inFlight(c, k); return busy })
	got := make(chan *Token, 20)
	for range 20 {
		wg.Go(func() { got <- current(t, c, k) })
	}
	waitFor(t, "20 callers waiting on the login", func() bool { _, waiting := inFlight(c, k); return waiting == 20 })
	release()
	wg.Wait()
	close(results)
	close(got)
	counts := map[Invalidation]int{}
	for r := range results {
		counts[r]++
	}
	// After the first, the token reported is no longer the current one.
	if counts[Invalidated] != 1 || counts[Invalidated]+counts[Limited]+counts[NotCurrent] != 1000 {
		t.Errorf("results of 1000 concurrent reports: got %v, want 1 invalidated, the rest rate_limited or not_current", counts)
	}
	if n := src.calls(); n != 2 {
		t.Errorf("logins: got %d, want 2 (the first, and one for the reports)", n)
	}
	for tok := range got {
		if tok.AccessToken == old.AccessToken {
			t.Errorf("a caller got the reported token")
		}
	}
}

func TestInvalidateIsRateLimitedAndBacksOff(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, func(o *Options) { o.MinReloginInterval = 30 * time.Second })
	k := Key{Scope: "a"}
	report := func(want Invalidation) {
		t.Helper()
		tok := current(t, c, k)
		if got := c.Invalidate(context.Background(), k, tok.AccessToken); got != want {
			t.Fatalf("report of %s at +%s: got %s, want %s", tok.AccessToken, clk.Now().Sub(t0), got, want)
		}
		current(t, c, k) // the login it started, if any, has landed
	}
	report(Invalidated) // +0: tok-1 dropped, tok-2
	// A caller that reports every fresh token: the fresh one's report
	// within 30s doubles the interval to 60s.
	report(Limited)
	clk.Advance(31 * time.Second)
	report(Limited) // +31s: inside the doubled interval
	clk.Advance(30 * time.Second)
	report(Invalidated) // +61s: tok-3
	if n := src.calls(); n != 3 {
		t.Fatalf("logins: got %d, want 3", n)
	}
	// Quiet for two intervals: back to 30s.
	clk.Advance(3 * time.Minute)
	report(Invalidated) // tok-4
	clk.Advance(31 * time.Second)
	report(Invalidated) // 31s later is outside the restored 30s interval
	if n := src.calls(); n != 5 {
		t.Errorf("logins: got %d, want 5", n)
	}
}

func TestInvalidateWhileHeld(t *testing.T) {
	t.Parallel()
	c, src, _ := newTestCache(t, nil)
	a := Key{Scope: "a"}
	tok := current(t, c, a)
	// Another key's login is rejected: the provider's logins are held.
	src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
	if _, _, err := c.Get(context.Background(), Key{Scope: "b"}, 0); err == nil {
		t.Fatal("Get after a rejection: got a token")
	}
	if got := c.Invalidate(context.Background(), a, tok.AccessToken); got != Held {
		t.Errorf("report while held: got %s, want %s", got, Held)
	}
	if n := src.calls(); n != 2 {
		t.Errorf("logins: got %d, want 2 (no login while held)", n)
	}
	if got := current(t, c, a); got.AccessToken != tok.AccessToken {
		t.Errorf("token while held: got %s, want %s still served", got.AccessToken, tok.AccessToken)
	}
}
