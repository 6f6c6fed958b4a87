package token

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Tests of the limits that keep callers, local faults and odd upstream
// answers from costing logins: the relogin interval, pauses for secrets
// that cannot be read and for tokens that arrive expired, the checks on a
// token's times, and the refresh window.

// TestCacheMinReloginInterval: a min_valid_for that only a new login could
// satisfy costs at most one login per key per MinReloginInterval; inside
// it the caller learns what validity can be had.
func TestCacheMinReloginInterval(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("51 requests just under the lifetime: one login per interval", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil) // one-hour tokens, interval 30s (the default)
		k := Key{Scope: "s"}
		need := time.Hour - 500*time.Millisecond
		first, _ := mustGet(t, c, k, need) // a first login is never refused
		for i := range 50 {
			clk.Advance(500 * time.Millisecond)
			_, out, err := c.Get(ctx, k, need)
			e := asError(t, err)
			if e.Kind != KindInvalid || e.Reason != ReasonMinValidTooLong || !out.Held {
				t.Fatalf("request %d: got %v %+v, want KindInvalid %s, Held (no login)", i+2, e, out, ReasonMinValidTooLong)
			}
			if i == 0 && (e.RetryAfter != 29500*time.Millisecond || !strings.Contains(e.Message, "valid for 59m59s more") ||
				!strings.Contains(e.Message, "new token valid for 1h0m0s")) {
				t.Errorf("refusal: RetryAfter %s, message %q; want 29.5s, the validity left (59m59s) and a new token's (1h0m0s)", e.RetryAfter, e.Message)
			}
		}
		if got := src.calls(); got != 1 {
			t.Fatalf("logins for 51 requests inside the interval: got %d, want 1", got)
		}
		if tok, out := mustGet(t, c, k, 0); tok != first || !out.Hit {
			t.Errorf("a caller without min_valid_for: got %q %+v, want the cached token as a hit", tok.AccessToken, out)
		}

		clk.Advance(5 * time.Second) // 30s since the login
		if tok, _ := mustGet(t, c, k, need); tok == first {
			t.Errorf("after the interval: got the old token, want a new login")
		}
		for range 20 {
			clk.Advance(time.Second)
			if _, _, err := c.Get(ctx, k, need); KindOf(err) != KindInvalid {
				t.Fatalf("inside the next interval: got %v, want the refusal", err)
			}
		}
		if got := src.calls(); got != 2 {
			t.Errorf("logins: got %d, want 2 (one per interval)", got)
		}
	})

	t.Run("a token too close to expiry for anyone is replaced whatever the interval", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, func(o *Options) { o.MinReloginInterval = time.Hour })
		src.setAnswer(issue(clk, 40*time.Second))
		first, _ := mustGet(t, c, Key{}, 0)
		clk.Advance(31 * time.Second) // 9s left, less than MinValid (10s)
		if tok, _ := mustGet(t, c, Key{}, 0); tok == first || src.calls() != 2 {
			t.Errorf("got %q after %d logins, want a new token from a second login", tok.AccessToken, src.calls())
		}
	})

	t.Run("keys are spaced separately", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		mustGet(t, c, Key{Scope: "a"}, 0)
		clk.Advance(time.Second)
		mustGet(t, c, Key{Scope: "b"}, time.Hour-time.Second)
		if got := src.calls(); got != 2 {
			t.Errorf("logins: got %d, want 2 (key b's first)", got)
		}
	})
}

// TestCacheSecretUnreadableIsNoRejection: a secret that cannot be read is
// not held like a rejected password: logins pause for secretRetry, no
// strike counts towards the rejection backoff, health hears of it, and
// the caller's message does not say where the secret lives.
func TestCacheSecretUnreadableIsNoRejection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var holds holdLog
	c, src, clk := newTestCache(t, func(o *Options) { o.OnHold = holds.on })
	ok := issue(clk, time.Hour)
	src.setAnswer(func(n int, r Request) (*Token, error) {
		switch {
		case n <= 3:
			return nil, SecretUnreadable("password", errors.New("environment variable KYC_PASSWORD is not set"))
		case n == 4:
			return nil, rejected()
		default:
			return ok(n, r)
		}
	})

	for i := range 3 {
		_, _, err := c.Get(ctx, Key{}, 0)
		e := asError(t, err)
		if e.Reason != ReasonSecretUnreadable || e.RetryAfter != secretRetry {
			t.Fatalf("round %d: got reason %s RetryAfter %s, want %s for %s", i, e.Reason, e.RetryAfter, ReasonSecretUnreadable, secretRetry)
		}
		if strings.Contains(e.Message, "KYC_PASSWORD") || !strings.Contains(e.Message, "password") {
			t.Errorf("message %q: want it to name the key (password), not the variable", e.Message)
		}
		for range 10 {
			if _, out, err := c.Get(ctx, Key{Scope: "other"}, 0); KindOf(err) != KindRejected || !out.Held {
				t.Fatalf("round %d, during the pause: got %v %+v, want the held failure", i, err, out)
			}
		}
		if got := src.calls(); got != i+1 {
			t.Fatalf("round %d: source calls %d, want %d (one per pause)", i, got, i+1)
		}
		clk.Advance(secretRetry)
	}
	if got := holds.get(); !slices.Equal(got, []bool{true}) {
		t.Errorf("OnHold during the fault: got %v, want [true]", got)
	}

	// The first rejection after three pauses holds for RejectBackoff, as a
	// first rejection does: the pauses counted no strike.
	_, _, err := c.Get(ctx, Key{}, 0)
	if e := asError(t, err); e.Reason != ReasonCredentialsRejected || e.RetryAfter != time.Minute {
		t.Fatalf("rejection after the pauses: got %s held %s, want %s held 1m", e.Reason, e.RetryAfter, ReasonCredentialsRejected)
	}
	clk.Advance(time.Minute)
	mustGet(t, c, Key{}, 0)
	if got := holds.get(); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("OnHold after a login worked: got %v, want [true false]", got)
	}
}

// TestCacheSecretUnreadableKeepsRevocableToken: a check that cannot read
// its secret says nothing about the token being checked.
func TestCacheSecretUnreadableKeepsRevocableToken(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, nil)
	good := checked(clk.Now, time.Hour)
	src.setAnswer(func(n int, r Request) (*Token, error) {
		if n == 2 {
			return nil, SecretUnreadable("token", errors.New("cannot read secret file /run/x"))
		}
		return good(n, r)
	})
	first, _ := mustGet(t, c, Key{}, 0)
	clk.Advance(time.Hour)
	mustGet(t, c, Key{}, 0) // starts the check
	waitFor(t, "the check to fail", func() bool { busy, _ := inFlight(c, Key{}); return src.calls() == 2 && !busy })
	if tok, out := mustGet(t, c, Key{}, 0); tok != first || !out.Hit {
		t.Errorf("after a check that could not read its secret: got %q %+v, want the cached token", tok.AccessToken, out)
	}
}

// expiredAt answers tokens that expire at a fixed offset from now (and
// then, from call `fixed` on, good one-hour tokens).
func expiredAt(c func() time.Time, offset time.Duration, fixed int) func(int, Request) (*Token, error) {
	return func(n int, r Request) (*Token, error) {
		now := c()
		exp := now.Add(offset)
		if n >= fixed {
			exp = now.Add(time.Hour)
		}
		at := fmt.Sprintf("tok-%d", n)
		return &Token{AccessToken: at, Type: "Bearer", Headers: map[string]string{"Authorization": "Bearer " + at},
			IssuedAt: now, Expiry: exp}, nil
	}
}

// TestCacheTokenExpiredOnArrival: a token that cannot be handed out when
// it arrives is a transient failure: retried with backoff inside the
// login, never served, and then logins pause, doubling, instead of every
// call logging in.
func TestCacheTokenExpiredOnArrival(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		offset time.Duration
		says   string
	}{
		{"expired an hour ago", -time.Hour, "had expired 1h0m0s before it arrived"},
		{"expires as it arrives", 0, "had expired 0s before it arrived"},
		{"less than MinValid left", 10 * time.Second, "valid for only 10s when it arrived"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var holds holdLog
			c, src, clk := newTestCache(t, func(o *Options) { o.OnHold = holds.on })
			src.setAnswer(expiredAt(clk.Now, tc.offset, 10))

			tok, _, err := c.Get(ctx, Key{}, 0)
			e := asError(t, err)
			if tok != nil || e.Kind != KindUnavailable || e.Reason != ReasonTokenExpiredOnArrival ||
				!strings.Contains(e.Message, tc.says) || !strings.Contains(e.Message, "clock") {
				t.Fatalf("got %v, %v %s %q; want no token, KindUnavailable %s saying %q and naming the clock",
					tok, e.Kind, e.Reason, e.Message, ReasonTokenExpiredOnArrival, tc.says)
			}
			if got := src.calls(); got != 3 {
				t.Fatalf("upstream logins: got %d, want 3 (retried like any transient failure)", got)
			}
			// Then a pause: 5s, 10s, ...; no login per call.
			for round, pause := range []time.Duration{refreshRetryFirst, 2 * refreshRetryFirst} {
				calls := src.calls()
				for range 20 {
					if _, out, err := c.Get(ctx, Key{}, 0); KindOf(err) != KindUnavailable || !out.Held {
						t.Fatalf("round %d, during the pause: got %v %+v, want the held failure", round, err, out)
					}
				}
				clk.Advance(pause - time.Second)
				c.Get(ctx, Key{}, 0)
				if got := src.calls(); got != calls {
					t.Fatalf("round %d: logins during the %s pause: got %d, want %d", round, pause, got-calls, 0)
				}
				clk.Advance(time.Second)
				c.Get(ctx, Key{}, 0)
				if got := src.calls(); got != calls+3 {
					t.Fatalf("round %d: logins after the pause: got %d, want 3 (one login)", round, got-calls)
				}
			}
			if got := holds.get(); !slices.Equal(got, []bool{true}) {
				t.Errorf("OnHold: got %v, want [true]", got)
			}
			// Tokens come good (call 10 on): served once the pause ends.
			clk.Advance(4 * refreshRetryFirst)
			src.setAnswer(expiredAt(clk.Now, tc.offset, 0))
			if tok, _ := mustGet(t, c, Key{}, 0); !tok.ValidFor(clk.Now(), 59*time.Minute) {
				t.Errorf("after the fix: got a token expiring %v", tok.Expiry)
			}
			if got := holds.get(); !slices.Equal(got, []bool{true, false}) {
				t.Errorf("OnHold after the fix: got %v, want [true false]", got)
			}
		})
	}
}

// TestCacheAbsurdTimesAreGarbage: times outside what a token can carry
// (before 2000, a decade ahead, beyond google.protobuf.Timestamp) are the
// upstream answering garbage, never a token; since the upstream did log
// in, logins then pause rather than log in on every call.
func TestCacheAbsurdTimesAreGarbage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		issued, expiry time.Time
		says           string
	}{
		{name: "expiry beyond year 9999", expiry: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), says: "expiry (year 10000)"},
		{name: "expiry in year 9999", expiry: time.Date(9999, 6, 1, 0, 0, 0, 0, time.UTC), says: "expiry (year 9999)"},
		{name: "expiry at the epoch", expiry: time.Unix(0, 0), says: "expiry (year 1970)"},
		{name: "issue time beyond year 9999", issued: time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC), expiry: t0.Add(time.Hour), says: "issue time (year 12000)"},
		{name: "issue time in year 1", issued: time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC), expiry: t0.Add(time.Hour), says: "issue time (year 1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, src, clk := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
			src.setAnswer(func(int, Request) (*Token, error) {
				return &Token{AccessToken: "t", IssuedAt: tc.issued, Expiry: tc.expiry}, nil
			})
			for i := range 10 {
				tok, out, err := c.Get(context.Background(), Key{}, 0)
				e := asError(t, err)
				if tok != nil || e.Kind != KindUnavailable || e.Reason != ReasonUpstreamUnavailable || !strings.Contains(e.Message, tc.says) || out.Held != (i > 0) {
					t.Fatalf("Get %d: got %v, %v %s %q %+v; want no token, KindUnavailable %s saying %q", i, tok, e.Kind, e.Reason, e.Message, out, ReasonUpstreamUnavailable, tc.says)
				}
			}
			if got := src.calls(); got != 1 {
				t.Errorf("logins for 10 calls: got %d, want 1 (then a pause)", got)
			}
			clk.Advance(refreshRetryFirst)
			c.Get(context.Background(), Key{}, 0)
			if got := src.calls(); got != 2 {
				t.Errorf("logins after the pause: got %d, want 2", got)
			}
		})
	}
}

// TestRefreshWindowHasNoCliff: for every lifetime, the time between the
// start of the background refresh and the moment callers stop getting the
// token (MinValid before expiry) is at least half the time the token can
// be handed out, or RefreshBefore-MinValid for long tokens; a refresh never
// starts earlier than that needs; and the window changes smoothly with the
// lifetime. Before, a 61s token left 0.5s and a 60s one 15s.
func TestRefreshWindowHasNoCliff(t *testing.T) {
	t.Parallel()
	c, _, clk := newTestCache(t, func(o *Options) {
		o.RefreshBefore = 5 * time.Minute
		o.MinValid = 30 * time.Second
	})
	rb, mv := 5*time.Minute, 30*time.Second
	window := func(life time.Duration) (w, age time.Duration) {
		now := clk.Now()
		tok := &Token{IssuedAt: now, Expiry: now.Add(life)}
		at := c.refreshAt(tok, now)
		return tok.Expiry.Add(-mv).Sub(at), at.Sub(now)
	}
	for _, life := range []time.Duration{
		31 * time.Second, 45 * time.Second, time.Minute, 61 * time.Second, 90 * time.Second,
		2 * time.Minute, 2*time.Minute + time.Second, 5 * time.Minute, 10 * time.Minute,
		10*time.Minute + time.Second, 11 * time.Minute, time.Hour, 24 * time.Hour,
	} {
		t.Run(life.String(), func(t *testing.T) {
			handout := life - mv
			w, age := window(life)
			if want := min(rb-mv, handout/2); w < want {
				t.Errorf("window: got %s, want at least %s", w, want)
			}
			if w > rb-mv {
				t.Errorf("window: got %s, want at most refresh_before-min_valid (%s): refreshed earlier than configured", w, rb-mv)
			}
			if age < handout/2 {
				t.Errorf("refresh starts at age %s, want at least %s (half the hand-out time)", age, handout/2)
			}
			if w2, _ := window(life + time.Second); w2 < w || w2-w > time.Second {
				t.Errorf("window at %s: %s, and at %s: %s; want it to change by at most the 1s between", life, w, life+time.Second, w2)
			}
		})
	}
}
