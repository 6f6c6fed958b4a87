package token

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

// Tests of Token.CheckEvery (revocable tokens that never expire) and of
// Cache.Keep (start-up login and periodic checks without callers).

// checked answers with a token "tok-N", issued at now(), that never
// expires and asks to be checked every interval.
func checked(now func() time.Time, every time.Duration) func(int, Request) (*Token, error) {
	return func(n int, _ Request) (*Token, error) {
		at := fmt.Sprintf("tok-%d", n)
		return &Token{
			AccessToken: at, Type: "Word",
			Headers:    map[string]string{"Authorization": "Word " + at},
			IssuedAt:   now(),
			CheckEvery: every,
		}, nil
	}
}

// holdLog records OnHold notices.
type holdLog struct {
	mu   sync.Mutex
	seen []bool
}

func (h *holdLog) on(held bool) {
	h.mu.Lock()
	h.seen = append(h.seen, held)
	h.mu.Unlock()
}

func (h *holdLog) get() []bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.seen)
}

func TestCheckEveryChecksInTheBackground(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, nil)
	src.setAnswer(checked(clk.Now, time.Hour))
	first, _ := mustGet(t, c, Key{}, 0)

	clk.Advance(time.Hour - time.Second)
	if tok, out := mustGet(t, c, Key{}, 0); tok != first || !out.Hit || src.calls() != 1 {
		t.Fatalf("before the check is due: got %q %+v after %d source calls, want a hit on tok-1 after 1", tok.AccessToken, out, src.calls())
	}
	clk.Advance(time.Second)
	// The check is due: the caller still gets the cached token at once
	// while the Source is asked again.
	if tok, out := mustGet(t, c, Key{}, 0); tok != first || !out.Hit {
		t.Fatalf("when the check is due: got %q %+v, want a hit on tok-1", tok.AccessToken, out)
	}
	waitFor(t, "the check", func() bool { busy, _ := inFlight(c, Key{}); return src.calls() == 2 && !busy })
	if r := src.req(t, 2); r.Previous != first {
		t.Errorf("check request Previous: got %v, want the cached token", r.Previous)
	}
	if tok, _ := mustGet(t, c, Key{}, 0); tok.AccessToken != "tok-2" {
		t.Errorf("after the check: got %q, want tok-2", tok.AccessToken)
	}
}

func TestRejectedCheckDropsToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		answer    func(clk *clocktest.Clock) func(int, Request) (*Token, error)
		advance   time.Duration // to when the refresh or check is due
		wantServe bool          // the cached token is still served after the rejection
	}{
		{"a revocable token is dropped", func(clk *clocktest.Clock) func(int, Request) (*Token, error) { return checked(clk.Now, time.Hour) },
			time.Hour, false},
		// Unchanged: a rejected refresh of an expiring token does not make
		// the token itself invalid.
		{"an expiring token is kept", func(clk *clocktest.Clock) func(int, Request) (*Token, error) { return issue(clk, time.Hour) },
			59 * time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var holds holdLog
			c, src, clk := newTestCache(t, func(o *Options) { o.OnHold = holds.on })
			src.setAnswer(tc.answer(clk))
			first, _ := mustGet(t, c, Key{}, 0)
			src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
			clk.Advance(tc.advance)
			mustGet(t, c, Key{}, 0) // starts the refresh or check
			waitFor(t, "the rejected check", func() bool { busy, _ := inFlight(c, Key{}); return src.calls() == 2 && !busy })

			tok, out, err := c.Get(context.Background(), Key{}, 0)
			if tc.wantServe {
				if err != nil || tok != first || !out.Hit {
					t.Errorf("got %v %+v %v, want a hit on tok-1", tok, out, err)
				}
			} else {
				if e := asError(t, err); e.Kind != KindRejected || !out.Held || e.RetryAfter <= 0 {
					t.Errorf("got kind %v outcome %+v RetryAfter %v, want KindRejected from the hold", e.Kind, out, e.RetryAfter)
				}
				if s := c.State(); s.Valid || s.Held == nil {
					t.Errorf("State: got Valid %v Held %v, want no valid token and a hold", s.Valid, s.Held)
				}
			}
			if got := holds.get(); !slices.Equal(got, []bool{true}) {
				t.Errorf("OnHold: got %v, want [true]", got)
			}
			if got := src.calls(); got != 2 {
				t.Errorf("source calls: got %d, want 2", got)
			}
		})
	}
}

func TestUnavailableCheckKeepsServing(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
	src.setAnswer(checked(clk.Now, time.Hour))
	first, _ := mustGet(t, c, Key{}, 0)
	src.setAnswer(func(int, Request) (*Token, error) { return nil, Unavailable("down", nil) })
	clk.Advance(time.Hour)
	mustGet(t, c, Key{}, 0)
	waitFor(t, "the failed check", func() bool { busy, _ := inFlight(c, Key{}); return src.calls() == 2 && !busy })
	if tok, out := mustGet(t, c, Key{}, 0); tok != first || !out.Hit {
		t.Errorf("during the outage: got %q %+v, want a hit on tok-1", tok.AccessToken, out)
	}
	if got := src.calls(); got != 2 {
		t.Errorf("source calls before the retry is due: got %d, want 2", got)
	}
	clk.Advance(refreshRetryFirst)
	src.setAnswer(checked(clk.Now, time.Hour))
	mustGet(t, c, Key{}, 0)
	waitFor(t, "the retried check", func() bool { busy, _ := inFlight(c, Key{}); return src.calls() == 3 && !busy })
	if tok, _ := mustGet(t, c, Key{}, 0); tok.AccessToken != "tok-3" {
		t.Errorf("after the retried check: got %q, want tok-3", tok.AccessToken)
	}
}

func TestRefreshAtWithCheckEvery(t *testing.T) {
	t.Parallel()
	c, _, _ := newTestCache(t, nil) // RefreshBefore 1m
	for _, tc := range []struct {
		name        string
		life, every time.Duration
		want        time.Duration // after issue; 0 means never
	}{
		{"never expires, never checked", 0, 0, 0},
		{"never expires, checked", 0, time.Hour, time.Hour},
		{"check before the refresh", 2 * time.Hour, time.Hour, time.Hour},
		{"refresh before the check", time.Hour, 2 * time.Hour, 59 * time.Minute},
	} {
		tok := &Token{IssuedAt: t0, CheckEvery: tc.every}
		if tc.life > 0 {
			tok.Expiry = t0.Add(tc.life)
		}
		got := c.refreshAt(tok, t0)
		want := time.Time{}
		if tc.want > 0 {
			want = t0.Add(tc.want)
		}
		if !got.Equal(want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, want)
		}
	}
}

// keep runs c.Keep(k) until the test ends, and waits for it to return.
func keep(t *testing.T, c *Cache, k Key) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Keep(ctx, k); close(done) }()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Keep did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

func TestKeepRetriesAtStartUp(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
	ok := checked(clk.Now, time.Hour)
	src.setAnswer(func(n int, r Request) (*Token, error) {
		if n <= 3 {
			return nil, Unavailable("down", nil)
		}
		return ok(n, r)
	})
	keep(t, c, Key{Scope: "s"})
	waitFor(t, "a token cached without any caller", func() bool { return c.State().Valid })
	if got := src.calls(); got != 4 {
		t.Errorf("source calls: got %d, want 4 (three failures, then the token)", got)
	}
	if tok, out := mustGet(t, c, Key{Scope: "s"}, 0); tok.AccessToken != "tok-4" || !out.Hit {
		t.Errorf("first caller: got %q %+v, want a hit on tok-4", tok.AccessToken, out)
	}
}

func TestKeepChecksPeriodically(t *testing.T) {
	t.Parallel()
	// Real time: Keep sleeps on timers, and nobody calls Get.
	var holds holdLog
	c, src, _ := newTestCache(t, func(o *Options) {
		o.Now = time.Now
		o.OnHold = holds.on
		o.RejectBackoff, o.MaxRejectBackoff = 20*time.Millisecond, 20*time.Millisecond
	})
	good := checked(time.Now, 5*time.Millisecond)
	src.setAnswer(good)
	stop := keep(t, c, Key{})
	waitFor(t, "three checks", func() bool { return src.calls() >= 3 })

	// A revoked token turns held without any caller; once accepted again,
	// the hold ends.
	src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
	waitFor(t, "the hold", func() bool { return c.State().Held != nil })
	if c.State().Valid {
		t.Error("after the rejected check: got a valid token, want none")
	}
	src.setAnswer(good)
	waitFor(t, "the hold to end", func() bool { s := c.State(); return s.Held == nil && s.Valid })
	stop()
	if got := holds.get(); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("OnHold: got %v, want [true false]", got)
	}
}

func TestKeepStopsForTokenThatNeedsNothing(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, nil)
	src.setAnswer(checked(clk.Now, 0))
	done := make(chan struct{})
	go func() { c.Keep(context.Background(), Key{}); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not return for a token that never expires and is never checked")
	}
	if got := src.calls(); got != 1 {
		t.Errorf("source calls: got %d, want 1", got)
	}
}
