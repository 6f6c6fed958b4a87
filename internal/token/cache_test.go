package token

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

// These tests live inside package token so that they can watch a login in
// flight (how many callers wait on it) and use the refresh retry constants.

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeSource counts its calls, records their requests, can hold every call
// at a gate until the test opens it, and answers from a script.
type fakeSource struct {
	mu        sync.Mutex
	reqs      []Request
	gate      chan struct{}
	cancelled int
	// answer is the n-th call's answer (n counts from 1).
	answer func(n int, r Request) (*Token, error)
}

func (f *fakeSource) Token(ctx context.Context, r Request) (*Token, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	n, gate, answer := len(f.reqs), f.gate, f.answer
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			f.mu.Lock()
			f.cancelled++
			f.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	return answer(n, r)
}

// block makes every call from now on wait until release is called (or its
// context ends). Cleanup releases it, so no goroutine outlives the test.
func (f *fakeSource) block(t *testing.T) (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	f.mu.Lock()
	f.gate = ch
	f.mu.Unlock()
	return release
}

// unblock lets calls from now on answer at once.
func (f *fakeSource) unblock() {
	f.mu.Lock()
	f.gate = nil
	f.mu.Unlock()
}

func (f *fakeSource) setAnswer(a func(n int, r Request) (*Token, error)) {
	f.mu.Lock()
	f.answer = a
	f.mu.Unlock()
}

func (f *fakeSource) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

// req is the n-th call's request (n counts from 1).
func (f *fakeSource) req(t *testing.T, n int) Request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if n > len(f.reqs) {
		t.Fatalf("source has %d calls, want at least %d", len(f.reqs), n)
	}
	return f.reqs[n-1]
}

func (f *fakeSource) cancels() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancelled
}

// issue answers with a fresh token "tok-N" living lifetime from now.
func issue(clk *clocktest.Clock, lifetime time.Duration) func(int, Request) (*Token, error) {
	return func(n int, r Request) (*Token, error) {
		now := clk.Now()
		at := fmt.Sprintf("tok-%d", n)
		return &Token{
			AccessToken: at, Type: "Bearer",
			Headers:  map[string]string{"Authorization": "Bearer " + at},
			IssuedAt: now, Expiry: now.Add(lifetime),
		}, nil
	}
}

func rejected() *Error {
	return Rejected(ReasonCredentialsRejected, "LOGIN_BAD_CREDENTIALS", "the upstream rejected the configured credentials")
}

// newTestCache returns a Cache over a fakeSource that issues one-hour
// tokens, with RefreshBefore 1m, MinValid 10s, RejectBackoff 1m (max 10m),
// three attempts and millisecond retries; mod adjusts the options.
func newTestCache(t *testing.T, mod func(*Options)) (*Cache, *fakeSource, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(t0)
	src := &fakeSource{answer: issue(clk, time.Hour)}
	o := Options{
		Provider: "p", Kind: "fake",
		RefreshBefore: time.Minute, MinValid: 10 * time.Second,
		RejectBackoff: time.Minute, MaxRejectBackoff: 10 * time.Minute,
		LoginTimeout: 10 * time.Second, LoginAttempts: 3, RetryBase: time.Millisecond,
		Now: clk.Now,
	}
	if mod != nil {
		mod(&o)
	}
	return NewCache(src, o), src, clk
}

// inFlight reports whether a login or refresh for k is running and how many
// callers wait on it.
func inFlight(c *Cache, k Key) (busy bool, waiters int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil || e.call == nil {
		return false, 0
	}
	return true, e.call.waiters
}

// waitFor polls cond until it holds, for goroutine progress a test cannot
// otherwise observe.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

type result struct {
	tok *Token
	out Outcome
	err error
}

func goGet(ctx context.Context, c *Cache, k Key, minValidFor time.Duration) <-chan result {
	ch := make(chan result, 1)
	go func() {
		tok, out, err := c.Get(ctx, k, minValidFor)
		ch <- result{tok, out, err}
	}()
	return ch
}

// recv is the result of a Get that must return promptly.
func recv(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Get did not return")
		return result{}
	}
}

func mustGet(t *testing.T, c *Cache, k Key, minValidFor time.Duration) (*Token, Outcome) {
	t.Helper()
	tok, out, err := c.Get(context.Background(), k, minValidFor)
	if err != nil {
		t.Fatalf("Get(%+v): %v", k, err)
	}
	return tok, out
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want a *token.Error", err, err)
	}
	return e
}

func TestCacheCoalescing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("cold key: 1,000 concurrent Gets share one login", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		release := src.block(t)
		k := Key{Scope: "s"}
		const n = 1000
		results := make([]<-chan result, n)
		for i := range results {
			results[i] = goGet(ctx, c, k, 0)
		}
		waitFor(t, "1,000 callers waiting on the login", func() bool { _, w := inFlight(c, k); return w == n })
		if got := src.calls(); got != 1 {
			t.Fatalf("source calls while 1,000 wait: got %d, want 1", got)
		}
		release()
		var first *Token
		counts := map[string]int{}
		for _, ch := range results {
			r := recv(t, ch)
			if r.err != nil {
				t.Fatalf("Get: %v", r.err)
			}
			if first == nil {
				first = r.tok
			}
			if r.tok != first {
				t.Fatalf("got token %q (%p), want the one shared token %q (%p)", r.tok.AccessToken, r.tok, first.AccessToken, first)
			}
			counts[r.out.String()]++
		}
		if first.AccessToken != "tok-1" {
			t.Errorf("got token %q, want tok-1", first.AccessToken)
		}
		if want := map[string]int{"login": 1, "shared": n - 1}; !maps.Equal(counts, want) {
			t.Errorf("outcomes: got %v, want %v (only the caller that started the login is not Shared)", counts, want)
		}
		if got := src.calls(); got != 1 {
			t.Errorf("source calls: got %d, want 1", got)
		}
	})

	t.Run("a hit returns the cached token; different keys log in separately", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		keys := []Key{{}, {Scope: "a"}, {Scope: "b"}, {Scope: "a", Subject: "alice"}, {Subject: "alice"}}
		first := map[Key]*Token{}
		for i, k := range keys {
			tok, out := mustGet(t, c, k, 0)
			if got, want := src.calls(), i+1; got != want {
				t.Fatalf("source calls after a miss on %+v: got %d, want %d", k, got, want)
			}
			if out != (Outcome{}) {
				t.Errorf("outcome of a miss on %+v: got %+v, want a login", k, out)
			}
			r := src.req(t, i+1)
			if r.Scope != k.Scope || r.Subject != k.Subject || r.Previous != nil {
				t.Errorf("request for %+v: got %+v, want Scope %q Subject %q and no Previous", k, r, k.Scope, k.Subject)
			}
			first[k] = tok
		}
		for _, k := range keys {
			for range 3 {
				tok, out := mustGet(t, c, k, 0)
				if tok != first[k] {
					t.Errorf("hit on %+v: got %q, want the cached %q", k, tok.AccessToken, first[k].AccessToken)
				}
				if !out.Hit {
					t.Errorf("outcome of a second Get on %+v: got %+v, want Hit", k, out)
				}
			}
		}
		if got, want := src.calls(), len(keys); got != want {
			t.Errorf("source calls after hits: got %d, want %d", got, want)
		}
	})
}

func TestCacheRefreshAhead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("old token served without waiting while one background refresh runs", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		k := Key{Scope: "s"}
		old, _ := mustGet(t, c, k, 0)

		clk.Advance(time.Hour - time.Minute - time.Second)
		if tok, out := mustGet(t, c, k, 0); tok != old || !out.Hit {
			t.Fatalf("before the refresh point: got %q %+v, want the cached %q as a hit", tok.AccessToken, out, old.AccessToken)
		}
		if busy, _ := inFlight(c, k); busy || src.calls() != 1 {
			t.Fatalf("before the refresh point: in flight %v, source calls %d; want no refresh", busy, src.calls())
		}

		release := src.block(t)
		clk.Advance(time.Second) // exactly RefreshBefore ahead of expiry
		const n = 200
		results := make([]<-chan result, n)
		for i := range results {
			results[i] = goGet(ctx, c, k, 0)
		}
		// The refresh is blocked in the source: a caller that waited on it
		// would never return here.
		for _, ch := range results {
			r := recv(t, ch)
			if r.err != nil || r.tok != old || !r.out.Hit {
				t.Fatalf("during the refresh: got %v %+v err %v, want the old token %q as a hit", r.tok, r.out, r.err, old.AccessToken)
			}
		}
		waitFor(t, "the background refresh to reach the source", func() bool { return src.calls() == 2 })
		for range 100 {
			if tok, _ := mustGet(t, c, k, 0); tok != old {
				t.Fatalf("during the refresh: got %q, want the old %q", tok.AccessToken, old.AccessToken)
			}
		}
		if got := src.calls(); got != 2 {
			t.Fatalf("source calls during the refresh: got %d, want 2 (one refresh)", got)
		}
		if busy, w := inFlight(c, k); !busy || w != 0 {
			t.Errorf("refresh in flight: got busy %v with %d waiters, want busy with 0", busy, w)
		}
		if r := src.req(t, 2); r.Previous != old || r.Scope != "s" {
			t.Errorf("refresh request: got Previous %v Scope %q, want Previous = the old token and Scope s", r.Previous, r.Scope)
		}

		release()
		waitFor(t, "the refreshed token to be served", func() bool { tok, _ := mustGet(t, c, k, 0); return tok != old })
		tok, out := mustGet(t, c, k, 0)
		if tok.AccessToken != "tok-2" || !out.Hit {
			t.Errorf("after the refresh: got %q %+v, want tok-2 as a hit", tok.AccessToken, out)
		}
		if got := src.calls(); got != 2 {
			t.Errorf("source calls after the refresh: got %d, want 2", got)
		}
	})

	for _, tc := range []struct {
		name     string
		lifetime time.Duration
		// refreshAfter is the token's age when the refresh starts.
		refreshAfter time.Duration
	}{
		{"long-lived token refreshes RefreshBefore ahead", time.Hour, time.Hour - time.Minute},
		{"lifetime of exactly twice RefreshBefore", 2 * time.Minute, time.Minute},
		// Handed out for 30s (MinValid 10s): refreshed halfway through.
		{"short-lived token refreshes halfway through its hand-out time", 40 * time.Second, 15 * time.Second},
		{"90s token refreshes halfway through its hand-out time", 90 * time.Second, 40 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, src, clk := newTestCache(t, nil)
			src.setAnswer(issue(clk, tc.lifetime))
			k := Key{}
			old, _ := mustGet(t, c, k, 0)

			clk.Advance(tc.refreshAfter - time.Second)
			mustGet(t, c, k, 0)
			if busy, _ := inFlight(c, k); busy || src.calls() != 1 {
				t.Fatalf("1s before %s: in flight %v, source calls %d; want no refresh yet", tc.refreshAfter, busy, src.calls())
			}
			clk.Advance(time.Second)
			if tok, out := mustGet(t, c, k, 0); tok != old || !out.Hit {
				t.Errorf("at %s: got %q %+v, want the old token as a hit", tc.refreshAfter, tok.AccessToken, out)
			}
			waitFor(t, "the refresh", func() bool { return src.calls() == 2 })
			if r := src.req(t, 2); r.Previous != old {
				t.Errorf("refresh Previous: got %v, want the old token", r.Previous)
			}
		})
	}

	t.Run("a failed refresh keeps serving the old token and retries after a backoff", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
		ok := issue(clk, time.Hour)
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n == 2 || n == 3 {
				return nil, Unavailable("the upstream is down", nil)
			}
			return ok(n, r)
		})
		k := Key{}
		old, _ := mustGet(t, c, k, 0)
		idle := func() bool { busy, _ := inFlight(c, k); return !busy }

		clk.Advance(time.Hour - time.Minute)
		mustGet(t, c, k, 0)
		waitFor(t, "the first refresh to fail", func() bool { return src.calls() == 2 && idle() })
		for range 100 {
			tok, out, err := c.Get(ctx, k, 0)
			if err != nil || tok != old || !out.Hit {
				t.Fatalf("after a failed refresh: got %v %+v err %v, want the old token as a hit", tok, out, err)
			}
		}
		if got := src.calls(); got != 2 {
			t.Fatalf("source calls after 100 Gets following a failed refresh: got %d, want 2 (no retry before the backoff)", got)
		}

		// The first retry waits refreshRetryFirst, the next twice that.
		for i, wait := range []time.Duration{refreshRetryFirst, 2 * refreshRetryFirst} {
			calls := src.calls()
			clk.Advance(wait - time.Second)
			mustGet(t, c, k, 0)
			if got := src.calls(); got != calls || !idle() {
				t.Fatalf("retry %d, 1s before its %s backoff: source calls %d (want %d), idle %v", i+1, wait, got, calls, idle())
			}
			clk.Advance(time.Second)
			if tok, _ := mustGet(t, c, k, 0); tok != old {
				t.Fatalf("retry %d: got %q, want the old token while refreshing", i+1, tok.AccessToken)
			}
			waitFor(t, fmt.Sprintf("refresh retry %d", i+1), func() bool { return src.calls() == calls+1 && idle() })
			if r := src.req(t, calls+1); r.Previous != old {
				t.Errorf("retry %d Previous: got %v, want the old token", i+1, r.Previous)
			}
		}
		if tok, _ := mustGet(t, c, k, 0); tok.AccessToken != "tok-4" {
			t.Errorf("after a successful retry: got %q, want tok-4", tok.AccessToken)
		}
	})

	t.Run("a rejected refresh keeps serving the old token and holds further refreshes", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		ok := issue(clk, time.Hour)
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n == 2 {
				return nil, rejected()
			}
			return ok(n, r)
		})
		k := Key{}
		old, _ := mustGet(t, c, k, 0)
		clk.Advance(time.Hour - time.Minute) // the refresh point; the hold lasts until expiry
		mustGet(t, c, k, 0)
		waitFor(t, "the refresh to be rejected", func() bool { busy, _ := inFlight(c, k); return src.calls() == 2 && !busy })
		if got, want := src.calls(), 2; got != want {
			t.Fatalf("source calls: got %d, want %d (a rejection is not retried)", got, want)
		}
		if s := c.State(); s.Held == nil || !s.Valid {
			t.Errorf("state after a rejected refresh: got %+v, want Valid and Held", s)
		}
		clk.Advance(refreshRetryFirst) // past the refresh backoff, still inside the hold
		for range 50 {
			tok, out, err := c.Get(ctx, k, 0)
			if err != nil || tok != old || !out.Hit {
				t.Fatalf("while held: got %v %+v err %v, want the old token as a hit", tok, out, err)
			}
		}
		if got := src.calls(); got != 2 {
			t.Errorf("source calls while held: got %d, want 2", got)
		}
	})
}

func TestCacheRetries(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	for _, tc := range []struct {
		name      string
		attempts  int
		answer    func(n int) (*Token, error) // nil token with nil error means "issue one"
		wantCalls int
		wantKind  Kind // ignored when wantTok is set
		wantTok   string
	}{
		{
			name: "unavailable is tried LoginAttempts times", attempts: 3,
			answer:    func(int) (*Token, error) { return nil, Unavailable("down", nil) },
			wantCalls: 3, wantKind: KindUnavailable,
		},
		{
			name: "LoginAttempts is honoured", attempts: 5,
			answer:    func(int) (*Token, error) { return nil, Unavailable("down", nil) },
			wantCalls: 5, wantKind: KindUnavailable,
		},
		{
			name: "unavailable then success", attempts: 3,
			answer: func(n int) (*Token, error) {
				if n < 3 {
					return nil, Unavailable("down", nil)
				}
				return nil, nil
			},
			wantCalls: 3, wantTok: "tok-3",
		},
		{
			name: "rejected is not retried", attempts: 3,
			answer:    func(int) (*Token, error) { return nil, rejected() },
			wantCalls: 1, wantKind: KindRejected,
		},
		{
			name: "internal is not retried", attempts: 3,
			answer:    func(int) (*Token, error) { return nil, &Error{Kind: KindInternal, Message: "bug"} },
			wantCalls: 1, wantKind: KindInternal,
		},
		{
			name: "a plain error is classified unavailable and retried", attempts: 3,
			answer:    func(int) (*Token, error) { return nil, boom },
			wantCalls: 3, wantKind: KindUnavailable,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, src, clk := newTestCache(t, func(o *Options) { o.LoginAttempts = tc.attempts })
			ok := issue(clk, time.Hour)
			src.setAnswer(func(n int, r Request) (*Token, error) {
				if tok, err := tc.answer(n); tok != nil || err != nil {
					return tok, err
				}
				return ok(n, r)
			})
			tok, _, err := c.Get(context.Background(), Key{}, 0)
			if got := src.calls(); got != tc.wantCalls {
				t.Errorf("source calls: got %d, want %d", got, tc.wantCalls)
			}
			if tc.wantTok != "" {
				if err != nil || tok == nil || tok.AccessToken != tc.wantTok {
					t.Fatalf("got %v, %v; want %s", tok, err, tc.wantTok)
				}
				return
			}
			if tok != nil {
				t.Errorf("got token %q with an error, want none", tok.AccessToken)
			}
			if e := asError(t, err); e.Kind != tc.wantKind {
				t.Errorf("error kind: got %v, want %v (%v)", e.Kind, tc.wantKind, err)
			}
		})
	}

	t.Run("a plain error keeps its cause and says it failed", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
		src.setAnswer(func(int, Request) (*Token, error) { return nil, boom })
		_, _, err := c.Get(context.Background(), Key{}, 0)
		e := asError(t, err)
		if e.Kind != KindUnavailable || e.Reason != ReasonUpstreamUnavailable || !errors.Is(err, boom) {
			t.Errorf("got %+v, want KindUnavailable, reason %s, wrapping the cause", e, ReasonUpstreamUnavailable)
		}
		if strings.Contains(e.Message, boom.Error()) {
			t.Errorf("message %q carries the internal cause", e.Message)
		}
	})

	t.Run("no token and no error is an internal error, not a panic", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		src.setAnswer(func(int, Request) (*Token, error) { return nil, nil })
		tok, _, err := c.Get(context.Background(), Key{}, 0)
		if tok != nil {
			t.Errorf("got token %v, want none", tok)
		}
		if e := asError(t, err); e.Kind != KindInternal {
			t.Errorf("error kind: got %v, want KindInternal", e.Kind)
		}
		if got := src.calls(); got != 1 {
			t.Errorf("source calls: got %d, want 1", got)
		}
	})
}

func TestCacheRejectionHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const heldText = "will not try this login again"

	t.Run("a rejection holds every key: 1,000 callers, no login", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
		k := Key{Scope: "s0"}

		_, out, err := c.Get(ctx, k, 0)
		e := asError(t, err)
		if e.Kind != KindRejected || e.Upstream != "LOGIN_BAD_CREDENTIALS" || e.RetryAfter != time.Minute {
			t.Errorf("first rejection: got kind %v upstream %q RetryAfter %s, want KindRejected, LOGIN_BAD_CREDENTIALS, 1m", e.Kind, e.Upstream, e.RetryAfter)
		}
		if !strings.Contains(e.Message, heldText+" for 1m0s") {
			t.Errorf("first rejection message %q does not say logins are held for 1m0s", e.Message)
		}
		if out.Held {
			t.Errorf("the rejected login's own caller: got Held, want a login outcome")
		}

		const n = 1000
		results := make([]<-chan result, n)
		for i := range results {
			results[i] = goGet(ctx, c, Key{Scope: fmt.Sprintf("s%d", i%10), Subject: fmt.Sprint(i % 3)}, 0)
		}
		for _, ch := range results {
			r := recv(t, ch)
			e := asError(t, r.err)
			if e.Kind != KindRejected || e.RetryAfter <= 0 || !strings.Contains(e.Message, heldText) || !r.out.Held {
				t.Fatalf("held Get: got kind %v RetryAfter %s message %q outcome %+v; want KindRejected, RetryAfter > 0, a held message, Held", e.Kind, e.RetryAfter, e.Message, r.out)
			}
		}
		if got := src.calls(); got != 1 {
			t.Fatalf("source calls after 1,000 held Gets: got %d, want 1", got)
		}

		clk.Advance(time.Minute - time.Second)
		_, _, err = c.Get(ctx, k, 0)
		if e := asError(t, err); e.RetryAfter != time.Second {
			t.Errorf("1s before the hold ends: RetryAfter %s, want 1s", e.RetryAfter)
		}

		// The hold ends: exactly one more login, however many ask.
		clk.Advance(time.Second)
		release := src.block(t)
		for i := range results {
			results[i] = goGet(ctx, c, k, 0)
		}
		waitFor(t, "1,000 callers waiting on the probe login", func() bool { _, w := inFlight(c, k); return w == n })
		if got := src.calls(); got != 2 {
			t.Fatalf("source calls after the hold ends: got %d, want 2", got)
		}
		release()
		for _, ch := range results {
			r := recv(t, ch)
			if e := asError(t, r.err); e.Kind != KindRejected || e.RetryAfter != 2*time.Minute {
				t.Fatalf("second rejection: got kind %v RetryAfter %s, want KindRejected held for 2m (doubled)", e.Kind, e.RetryAfter)
			}
		}
		if got := src.calls(); got != 2 {
			t.Errorf("source calls after the second rejection: got %d, want 2", got)
		}
	})

	for _, tc := range []struct {
		name string
		hold time.Duration // the rejection's Error.Hold
		want []time.Duration
	}{
		{"backoff doubles up to MaxRejectBackoff", 0, []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}},
		{"Error.Hold longer than the backoff wins", 15 * time.Minute, []time.Duration{15 * time.Minute, 15 * time.Minute, 15 * time.Minute}},
		{"Error.Hold shorter than the backoff loses", 30 * time.Second, []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute}},
		{"Error.Hold between", 3 * time.Minute, []time.Duration{3 * time.Minute, 3 * time.Minute, 4 * time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, src, clk := newTestCache(t, nil)
			src.setAnswer(func(int, Request) (*Token, error) {
				e := rejected()
				e.Hold = tc.hold
				return nil, e
			})
			for i, want := range tc.want {
				_, _, err := c.Get(ctx, Key{}, 0)
				if e := asError(t, err); e.RetryAfter != want {
					t.Errorf("rejection %d: RetryAfter %s, want %s", i+1, e.RetryAfter, want)
				}
				if got := src.calls(); got != i+1 {
					t.Fatalf("rejection %d: source calls %d, want %d", i+1, got, i+1)
				}
				clk.Advance(want - time.Second)
				if _, out, _ := c.Get(ctx, Key{}, 0); !out.Held || src.calls() != i+1 {
					t.Fatalf("rejection %d, 1s before the hold ends: outcome %+v, source calls %d; want Held, %d", i+1, out, src.calls(), i+1)
				}
				clk.Advance(time.Second)
			}
		})
	}

	t.Run("a success clears the hold and its strikes", func(t *testing.T) {
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		ok := issue(clk, time.Hour)
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n == 3 {
				return ok(n, r)
			}
			return nil, rejected()
		})
		for i, want := range []time.Duration{time.Minute, 2 * time.Minute} {
			_, _, err := c.Get(ctx, Key{Scope: "a"}, 0)
			if e := asError(t, err); e.RetryAfter != want {
				t.Fatalf("rejection %d: RetryAfter %s, want %s", i+1, e.RetryAfter, want)
			}
			if s := c.State(); s.Held == nil || s.Held.RetryAfter != want {
				t.Fatalf("state after rejection %d: Held %+v, want held for %s", i+1, s.Held, want)
			}
			clk.Advance(want)
		}
		if tok, _ := mustGet(t, c, Key{Scope: "a"}, 0); tok.AccessToken != "tok-3" {
			t.Fatalf("after the hold: got %q, want tok-3", tok.AccessToken)
		}
		if s := c.State(); s.Held != nil || !s.Valid {
			t.Errorf("state after a success: got %+v, want Valid and not Held", s)
		}
		_, _, err := c.Get(ctx, Key{Scope: "b"}, 0)
		if e := asError(t, err); e.Kind != KindRejected || e.RetryAfter != time.Minute {
			t.Errorf("rejection after a success: kind %v RetryAfter %s, want KindRejected and 1m (strikes reset)", e.Kind, e.RetryAfter)
		}
		if got := src.calls(); got != 4 {
			t.Errorf("source calls: got %d, want 4", got)
		}
	})

	t.Run("OnHold hears true on the rejection and false on the next success", func(t *testing.T) {
		t.Parallel()
		heard := make(chan bool, 10)
		c, src, clk := newTestCache(t, func(o *Options) { o.OnHold = func(h bool) { heard <- h } })
		ok := issue(clk, time.Hour)
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n < 3 {
				return nil, rejected()
			}
			return ok(n, r)
		})
		next := func() bool {
			t.Helper()
			select {
			case h := <-heard:
				return h
			case <-time.After(5 * time.Second):
				t.Fatal("OnHold was not called")
				return false
			}
		}
		var got []bool
		c.Get(ctx, Key{}, 0)
		got = append(got, next())
		clk.Advance(time.Minute)
		c.Get(ctx, Key{}, 0) // rejected again: already held, so no second OnHold(true)
		clk.Advance(2 * time.Minute)
		mustGet(t, c, Key{}, 0)
		for got[len(got)-1] {
			got = append(got, next())
		}
		if want := []bool{true, false}; !slices.Equal(got, want) {
			t.Errorf("OnHold calls: got %v, want %v", got, want)
		}
	})

	t.Run("OnHold calls arrive in order", func(t *testing.T) {
		// OnHold feeds the provider's health: a notice overtaken by an
		// older one would leave a recovered provider NOT_SERVING. Notices
		// are delivered synchronously, so each has arrived, in order, by
		// the time the Get that caused it returns.
		t.Parallel()
		var mu sync.Mutex
		var got []bool
		c, src, clk := newTestCache(t, func(o *Options) {
			o.OnHold = func(h bool) {
				mu.Lock()
				got = append(got, h)
				mu.Unlock()
			}
		})
		ok := issue(clk, time.Hour)
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n == 1 {
				return nil, rejected()
			}
			return ok(n, r)
		})
		snapshot := func() []bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(got)
		}
		c.Get(ctx, Key{}, 0)
		if want := []bool{true}; !slices.Equal(snapshot(), want) {
			t.Errorf("after the rejection: got %v, want %v", snapshot(), want)
		}
		clk.Advance(time.Minute)
		mustGet(t, c, Key{}, 0)
		if want := []bool{true, false}; !slices.Equal(snapshot(), want) {
			t.Errorf("after the success: got %v, want %v", snapshot(), want)
		}
	})

	t.Run("after the hold ends, one login probes for every key", func(t *testing.T) {
		// The hold is provider-wide; when it ends, callers of other keys
		// must not each send the rejected credentials again.
		t.Parallel()
		c, src, clk := newTestCache(t, nil)
		src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
		c.Get(ctx, Key{Scope: "s0"}, 0)
		clk.Advance(time.Minute)
		release := src.block(t)
		probe := goGet(ctx, c, Key{Scope: "s0"}, 0)
		waitFor(t, "the probe login to reach the source", func() bool { return src.calls() == 2 })
		var others []<-chan result
		for i := 1; i < 10; i++ {
			others = append(others, goGet(ctx, c, Key{Scope: fmt.Sprintf("s%d", i)}, 0))
		}
		// Wait until each other caller has been answered from the hold or
		// has started (or joined) a login: a login started here reaches the
		// source even after the gate opens.
		waitFor(t, "the other callers to pass the hold check", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			for i := 1; i < 10; i++ {
				if c.entries[Key{Scope: fmt.Sprintf("s%d", i)}] == nil {
					return false
				}
			}
			return true
		})
		release()
		recv(t, probe)
		for _, ch := range others {
			if r := recv(t, ch); KindOf(r.err) != KindRejected {
				t.Errorf("other key: got %v, want KindRejected", r.err)
			}
		}
		if got := src.calls(); got != 2 {
			t.Errorf("source calls once the hold ended and 10 keys asked: got %d, want 2 (one probe after the first rejection)", got)
		}
	})
}

func TestCacheCancellation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("a caller that gives up leaves the shared login running", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		release := src.block(t)
		k := Key{}
		starterCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		starter := goGet(starterCtx, c, k, 0)
		waitFor(t, "the starter to wait", func() bool { _, w := inFlight(c, k); return w == 1 })
		other := goGet(ctx, c, k, 0)
		waitFor(t, "a second waiter", func() bool { _, w := inFlight(c, k); return w == 2 })

		cancel()
		r := recv(t, starter) // returns while the login is still blocked
		if r.err != context.Canceled || r.tok != nil {
			t.Errorf("cancelled caller: got %v, %v; want nil, context.Canceled", r.tok, r.err)
		}
		if busy, w := inFlight(c, k); !busy || w != 1 {
			t.Errorf("after one caller left: in flight %v with %d waiters, want the login running with 1", busy, w)
		}
		release()
		r = recv(t, other)
		if r.err != nil || r.tok == nil || r.tok.AccessToken != "tok-1" || !r.out.Shared {
			t.Errorf("remaining caller: got %v %+v err %v, want tok-1, Shared", r.tok, r.out, r.err)
		}
		if src.cancels() != 0 || src.calls() != 1 {
			t.Errorf("source: %d calls, %d saw cancellation; want 1 call, none cancelled", src.calls(), src.cancels())
		}
	})

	for _, tc := range []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		cancel  bool // cancel once the caller waits
		wantErr error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }, true, context.Canceled},
		{"deadline passed", func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(ctx, time.Now().Add(-time.Second))
		}, false, context.DeadlineExceeded},
	} {
		t.Run("the last caller leaving ("+tc.name+") lets the login land", func(t *testing.T) {
			// The upstream may already have counted the attempt: its
			// answer must land (a token cached, a rejection held), or the
			// next caller would send the same credentials again.
			t.Parallel()
			c, src, _ := newTestCache(t, nil)
			release := src.block(t)
			k := Key{}
			cctx, cancel := tc.ctx()
			defer cancel()
			ch := goGet(cctx, c, k, 0)
			if tc.cancel {
				waitFor(t, "the login to reach the source", func() bool { return src.calls() == 1 })
				cancel()
			}
			if r := recv(t, ch); r.err != tc.wantErr {
				t.Errorf("caller: got %v, want %v", r.err, tc.wantErr)
			}
			waitFor(t, "the login to reach the source", func() bool { return src.calls() == 1 })
			release()
			waitFor(t, "the abandoned login to land", func() bool { return c.State().Valid })
			tok, out := mustGet(t, c, k, 0)
			if tok.AccessToken != "tok-1" || !out.Hit {
				t.Errorf("next Get: got %q %+v, want the abandoned login's tok-1 as a hit", tok.AccessToken, out)
			}
			if src.calls() != 1 || src.cancels() != 0 {
				t.Errorf("source: %d calls, %d cancelled; want 1 call, none cancelled", src.calls(), src.cancels())
			}
		})
	}
}

func TestCacheMinValidFor(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		minValidFor time.Duration // asked when the cached token has 20m left
		wantCalls   int
		wantTok     string
		wantOut     Outcome
		wantReason  string
	}{
		{name: "enough left is a hit", minValidFor: 15 * time.Minute, wantCalls: 1, wantTok: "tok-1", wantOut: Outcome{Hit: true}},
		{name: "too little left logs in", minValidFor: 30 * time.Minute, wantCalls: 2, wantTok: "tok-2"},
		{name: "exactly what is left logs in", minValidFor: 20 * time.Minute, wantCalls: 2, wantTok: "tok-2"},
		// The upstream's token lifetime is known from the first login, so
		// an unsatisfiable request costs no upstream call.
		{name: "more than any token lives is invalid", minValidFor: 2 * time.Hour, wantCalls: 1, wantReason: ReasonMinValidTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, src, clk := newTestCache(t, nil)
			old, _ := mustGet(t, c, Key{}, 0)
			clk.Advance(40 * time.Minute)
			tok, out, err := c.Get(context.Background(), Key{}, tc.minValidFor)
			if got := src.calls(); got != tc.wantCalls {
				t.Errorf("source calls: got %d, want %d", got, tc.wantCalls)
			}
			if tc.wantCalls == 2 {
				if r := src.req(t, 2); r.Previous != old {
					t.Errorf("login Previous: got %v, want the cached token", r.Previous)
				}
			}
			if tc.wantReason != "" {
				e := asError(t, err)
				if e.Kind != KindInvalid || e.Reason != tc.wantReason {
					t.Errorf("got kind %v reason %q, want KindInvalid %s", e.Kind, e.Reason, tc.wantReason)
				}
				if !strings.Contains(e.Message, "1h0m0s") || !strings.Contains(e.Message, "2h0m0s") {
					t.Errorf("message %q does not name the token lifetime (1h0m0s) and the asked validity (2h0m0s)", e.Message)
				}
				return
			}
			if err != nil || tok.AccessToken != tc.wantTok || out != tc.wantOut {
				t.Errorf("got %v %+v err %v, want %s %+v", tok, out, err, tc.wantTok, tc.wantOut)
			}
		})
	}
}

func TestCacheState(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, nil)
	check := func(step string, wantValid, wantHeld bool) {
		t.Helper()
		s := c.State()
		if s.Valid != wantValid || (s.Held != nil) != wantHeld {
			t.Errorf("%s: got Valid %v Held %v, want Valid %v Held %v", step, s.Valid, s.Held, wantValid, wantHeld)
		}
		if s.Held != nil && (s.Held.Kind != KindRejected || s.Held.RetryAfter <= 0) {
			t.Errorf("%s: Held %+v, want a KindRejected error with RetryAfter", step, s.Held)
		}
	}
	check("empty cache", false, false)
	mustGet(t, c, Key{}, 0)
	check("after a login", true, false)
	clk.Advance(time.Hour - 10*time.Second) // MinValid left: not enough
	check("with MinValid left", false, false)
	src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
	c.Get(context.Background(), Key{Scope: "x"}, 0)
	check("after a rejection", false, true)
	clk.Advance(time.Minute)
	check("after the hold ends", false, false)
}

func TestCacheMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	m, err := NewMetrics(mp.Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	c, src, clk := newTestCache(t, func(o *Options) { o.Metrics = m })
	ok := issue(clk, time.Hour)
	src.setAnswer(func(n int, r Request) (*Token, error) {
		if n == 1 {
			return ok(n, r)
		}
		return nil, rejected()
	})

	// One login shared by three callers, two hits, one rejected login, two
	// held answers.
	release := src.block(t)
	var chs []<-chan result
	for range 3 {
		chs = append(chs, goGet(ctx, c, Key{Scope: "a"}, 0))
	}
	waitFor(t, "three waiters", func() bool { _, w := inFlight(c, Key{Scope: "a"}); return w == 3 })
	release()
	for _, ch := range chs {
		if r := recv(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	mustGet(t, c, Key{Scope: "a"}, 0)
	mustGet(t, c, Key{Scope: "a"}, 0)
	c.Get(ctx, Key{Scope: "b"}, 0)
	c.Get(ctx, Key{Scope: "b"}, 0)
	c.Get(ctx, Key{Scope: "c"}, 0)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]map[string]int64{}
	counts := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				sums[mt.Name] = map[string]int64{}
				for _, dp := range d.DataPoints {
					var kv []string
					for _, a := range dp.Attributes.ToSlice() {
						kv = append(kv, string(a.Key)+"="+a.Value.Emit())
					}
					sums[mt.Name][strings.Join(kv, ",")] += dp.Value
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					counts[mt.Name] += dp.Count
				}
			}
		}
	}
	for _, tc := range []struct {
		metric string
		want   map[string]int64
	}{
		{"tokenvend.cache.lookups", map[string]int64{
			"provider=p,result=login":  2,
			"provider=p,result=shared": 2,
			"provider=p,result=hit":    2,
			"provider=p,result=held":   2,
		}},
		{"tokenvend.logins", map[string]int64{
			"outcome=ok,provider=p":       1,
			"outcome=rejected,provider=p": 1,
		}},
		{"tokenvend.login.failures", map[string]int64{
			"outcome=rejected,provider=p": 1,
		}},
	} {
		if got := sums[tc.metric]; !maps.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.metric, got, tc.want)
		}
	}
	if got := counts["tokenvend.login.duration"]; got != 2 {
		t.Errorf("tokenvend.login.duration count: got %d, want 2", got)
	}
}

func TestOutcomeString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		out  Outcome
		want string
	}{
		{Outcome{}, "login"},
		{Outcome{Hit: true}, "hit"},
		{Outcome{Shared: true}, "shared"},
		{Outcome{Held: true}, "held"},
		{Outcome{Fleet: true}, "fleet"},
		{Outcome{Fleet: true, Shared: true}, "shared_fleet"},
	} {
		if got := tc.out.String(); got != tc.want {
			t.Errorf("%+v.String(): got %q, want %q", tc.out, got, tc.want)
		}
	}
}

// TestCacheAbandonedRejectionIsHeld: callers that give up before a slow
// rejection arrives do not make the cache send the credentials again: the
// rejection lands and is held, and an abandoned login starts no retries.
func TestCacheAbandonedRejectionIsHeld(t *testing.T) {
	t.Parallel()
	c, src, _ := newTestCache(t, nil)
	release := src.block(t)
	src.setAnswer(func(n int, r Request) (*Token, error) { return nil, rejected() })
	for range 10 {
		cctx, cancel := context.WithCancel(context.Background())
		ch := goGet(cctx, c, Key{}, 0)
		waitFor(t, "the login to reach the source", func() bool { return src.calls() >= 1 })
		cancel()
		if r := recv(t, ch); r.err != context.Canceled {
			t.Fatalf("caller: got %v, want context.Canceled", r.err)
		}
	}
	release()
	waitFor(t, "the rejection to be held", func() bool { return c.State().Held != nil })
	if _, out, err := c.Get(context.Background(), Key{}, 0); KindOf(err) != KindRejected || !out.Held {
		t.Errorf("after the abandoned rejection: got %v %+v, want the held rejection", err, out)
	}
	if got := src.calls(); got != 1 {
		t.Errorf("source calls: got %d, want 1 (ten callers gave up on one login)", got)
	}
}

// TestCacheAbandonedLoginStopsRetrying: a transient failure of a login
// nobody waits for any more is not retried.
func TestCacheAbandonedLoginStopsRetrying(t *testing.T) {
	t.Parallel()
	c, src, _ := newTestCache(t, func(o *Options) { o.LoginAttempts = 5 })
	release := src.block(t)
	src.setAnswer(func(n int, r Request) (*Token, error) { return nil, Unavailable("down", nil) })
	cctx, cancel := context.WithCancel(context.Background())
	ch := goGet(cctx, c, Key{}, 0)
	waitFor(t, "the login to reach the source", func() bool { return src.calls() == 1 })
	cancel()
	recv(t, ch)
	release()
	waitFor(t, "the login to end", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		e := c.entries[Key{}]
		return e != nil && e.call == nil
	})
	if got := src.calls(); got != 1 {
		t.Errorf("source calls: got %d, want 1 (no retries for nobody)", got)
	}
}

// TestCacheShortTokensRefreshBeforeCallersWait: a token so short that half
// its life is within MinValid of its expiry is refreshed early enough that
// no caller waits for the login.
func TestCacheShortTokensRefreshBeforeCallersWait(t *testing.T) {
	t.Parallel()
	c, src, clk := newTestCache(t, func(o *Options) {
		o.MinValid = 30 * time.Second
		o.RefreshBefore = 5 * time.Minute
	})
	src.setAnswer(issue(clk, 50*time.Second))
	first, _ := mustGet(t, c, Key{}, 0)
	// 50s tokens are handed out for 20s (MinValid 30s): the refresh is due
	// halfway, 10s after the login.
	clk.Advance(11 * time.Second)
	if tok, out := mustGet(t, c, Key{}, 0); tok != first || !out.Hit {
		t.Fatalf("at 11s: got %q %+v, want the first token as a hit, starting the refresh", tok.AccessToken, out)
	}
	waitFor(t, "the background refresh", func() bool { return src.calls() == 2 })
	waitFor(t, "the refreshed token", func() bool {
		tok, out := mustGet(t, c, Key{}, 0)
		return tok != first && out.Hit
	})
}

// TestCacheColdStartTriesCredentialsOnce: until a login has succeeded, one
// key's login tries the credentials and callers of other keys wait for its
// answer, so a cold start with wrong credentials asked for many scopes at
// once sends them once; with good ones, every scope then logs in at once.
func TestCacheColdStartTriesCredentialsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const scopes = 10
	start := func(t *testing.T, c *Cache, src *fakeSource) []<-chan result {
		t.Helper()
		var results []<-chan result
		for i := range scopes {
			for j := range 5 {
				results = append(results, goGet(ctx, c, Key{Scope: fmt.Sprintf("s%d", i), Subject: fmt.Sprint(j % 2)}, 0))
			}
		}
		// The trial's caller counts as waiting before its login reaches
		// the source: wait for both.
		waitFor(t, "every caller waiting", func() bool { return c.waiting.Load() == int64(len(results)) && src.calls() > 0 })
		if got := src.calls(); got != 1 {
			t.Fatalf("logins while the first is in flight: got %d, want 1 (the trial)", got)
		}
		return results
	}

	t.Run("wrong credentials: one attempt", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		src.setAnswer(func(int, Request) (*Token, error) { return nil, rejected() })
		release := src.block(t)
		results := start(t, c, src)
		release()
		for _, ch := range results {
			if e := asError(t, recv(t, ch).err); e.Kind != KindRejected {
				t.Fatalf("got %v, want the rejection", e)
			}
		}
		if got := src.calls(); got != 1 {
			t.Fatalf("upstream attempts: got %d, want 1", got)
		}
	})

	t.Run("good credentials: then every key logs in", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, nil)
		release := src.block(t)
		results := start(t, c, src)
		// The trial succeeds; every other key's login then starts and
		// blocks. Its callers are counted as waiting once each.
		releaseRest := src.block(t)
		release()
		waitFor(t, "every key logging in", func() bool { return src.calls() == 2*scopes })
		trialCallers := map[string]int64{"0": 3, "1": 2}[src.req(t, 1).Subject]
		want := int64(len(results)) - trialCallers
		waitFor(t, "the other callers waiting on their keys' logins", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			var n int64
			for _, e := range c.entries {
				if e.call != nil {
					n += int64(e.call.waiters)
				}
			}
			return n == want
		})
		if got := c.waiting.Load(); got != want {
			t.Fatalf("waiting callers: got %d, want %d", got, want)
		}
		src.unblock()
		releaseRest()
		for _, ch := range results {
			if r := recv(t, ch); r.err != nil {
				t.Fatal(r.err)
			}
		}
		if got := src.calls(); got != 2*scopes {
			t.Fatalf("logins: got %d, want %d (one per scope and subject)", got, 2*scopes)
		}
		// Proven credentials are not tried one key at a time again.
		release = src.block(t)
		fresh := []<-chan result{goGet(ctx, c, Key{Scope: "new-a"}, 0), goGet(ctx, c, Key{Scope: "new-b"}, 0)}
		waitFor(t, "both new keys logging in", func() bool { return src.calls() == 2*scopes+2 })
		release()
		for _, ch := range fresh {
			if r := recv(t, ch); r.err != nil {
				t.Fatal(r.err)
			}
		}
	})

	t.Run("an unreachable upstream: every waiter hears at once, the next request tries again", func(t *testing.T) {
		t.Parallel()
		c, src, _ := newTestCache(t, func(o *Options) { o.LoginAttempts = 1 })
		src.setAnswer(func(n int, r Request) (*Token, error) {
			if n == 1 {
				return nil, &Error{Kind: KindUnavailable, Reason: "UPSTREAM_UNAVAILABLE", Message: "down"}
			}
			return &Token{AccessToken: "t", Expiry: t0.Add(time.Hour)}, nil
		})
		release := src.block(t)
		first := goGet(ctx, c, Key{Scope: "a"}, 0)
		waitFor(t, "the trial", func() bool { return src.calls() == 1 })
		var others []<-chan result
		for i := range 5 {
			others = append(others, goGet(ctx, c, Key{Scope: fmt.Sprint("b", i)}, 0))
		}
		waitFor(t, "the other keys waiting", func() bool { return c.waiting.Load() == 6 })
		src.unblock()
		release()
		if e := asError(t, recv(t, first).err); e.Kind != KindUnavailable {
			t.Fatalf("first: got %v, want unavailable", e)
		}
		// Had each waiting key become the trial in turn, a hung upstream
		// would have kept the last one waiting five logins more.
		for i, ch := range others {
			if e := asError(t, recv(t, ch).err); e.Kind != KindUnavailable {
				t.Fatalf("waiter %d: got %v, want the trial's failure", i, e)
			}
		}
		if got := src.calls(); got != 1 {
			t.Fatalf("logins: got %d, want 1 (the failed trial, no key tried after it)", got)
		}
		if _, _, err := c.Get(ctx, Key{Scope: "b0"}, 0); err != nil {
			t.Fatalf("the next request, with the upstream back: %v", err)
		}
	})
}
