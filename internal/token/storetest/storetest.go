// Package storetest is the behaviour every token.Store must have, as
// tests that any store runs: token.MemoryStore, the reference, and
// redisstore against real Redis servers. Each test takes two "replicas"
// of one provider's store (for the memory store, the same one twice).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/token"
)

// Shared is everything a store keeps for one provider.
type Shared interface {
	token.Store
	token.Failures
	token.Steps
}

// New returns two replicas' views of one fresh provider's state.
type New func(t *testing.T) (a, b Shared)

// Run runs every conformance test.
func Run(t *testing.T, newStores New) {
	for name, test := range map[string]func(*testing.T, New){
		"TokenRoundTrip":      TokenRoundTrip,
		"ExpiredTokenIsMiss":  ExpiredTokenIsMiss,
		"FenceRefusesOlder":   FenceRefusesOlder,
		"LeaseExclusive":      LeaseExclusive,
		"LeaseContention":     LeaseContention,
		"StaleHolderIsFenced": StaleHolderIsFenced,
		"WaitWokenBySave":     WaitWokenBySave,
		"WaitWokenByRelease":  WaitWokenByRelease,
		"BudgetHold":          BudgetHold,
		"BudgetContention":    BudgetContention,
		"BudgetSlotExpires":   BudgetSlotExpires,
		"Failures":            Failures,
		"FailuresContention":  FailuresContention,
		"StepsExclusive":      StepsExclusive,
	} {
		t.Run(name, func(t *testing.T) { test(t, newStores) })
	}
}

// Token is a token with every field set, valid for an hour.
func Token(access string) *token.Token {
	now := time.Now().Truncate(time.Millisecond)
	return &token.Token{
		AccessToken:  access,
		Type:         "Bearer",
		Headers:      map[string]string{"Authorization": "Bearer " + access, "X-Session": "session-" + access},
		IssuedAt:     now,
		Expiry:       now.Add(time.Hour),
		RefreshToken: "refresh-" + access,
		CheckEvery:   time.Minute,
	}
}

func equal(a, b *token.Token) bool {
	return a.AccessToken == b.AccessToken && a.Type == b.Type && maps.Equal(a.Headers, b.Headers) &&
		a.IssuedAt.Equal(b.IssuedAt) && a.Expiry.Equal(b.Expiry) && a.RefreshToken == b.RefreshToken &&
		a.CheckEvery == b.CheckEvery
}

var key = token.Key{Scope: "read:all", Subject: "user{1}"}

// TokenRoundTrip: a token saved by one replica loads, whole, on the other.
func TokenRoundTrip(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	// The writer reads first: a shared store's reader may keep a local
	// copy of the miss until the write's invalidation reaches it.
	if got, err := a.Load(ctx, key); err != nil || got.Token != nil {
		t.Fatalf("Load before Save: got %+v, %v; want a miss", got, err)
	}
	tok := Token("tok-1")
	if err := a.Save(ctx, key, token.Stored{Token: tok, Fence: 3}); err != nil {
		t.Fatalf("Save: %v", err)
	}
	got, err := b.Load(ctx, key)
	if err != nil || got.Token == nil || got.Fence != 3 || !equal(got.Token, tok) {
		t.Fatalf("Load on the other replica: got %+v (fence %d), %v; want %+v (fence 3)", got.Token, got.Fence, err, tok)
	}
	other := token.Key{Scope: key.Scope, Subject: "user{2}"}
	if got, err := b.Load(ctx, other); err != nil || got.Token != nil {
		t.Errorf("Load of another subject: got %+v, %v; want a miss", got.Token, err)
	}
}

// ExpiredTokenIsMiss: a token past its expiry is not loaded.
func ExpiredTokenIsMiss(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	tok := Token("old")
	tok.IssuedAt, tok.Expiry = tok.IssuedAt.Add(-2*time.Hour), tok.IssuedAt.Add(-time.Hour)
	if err := a.Save(ctx, key, token.Stored{Token: tok, Fence: 1}); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if got, err := b.Load(ctx, key); err != nil || got.Token != nil {
		t.Errorf("Load of an expired token: got %+v, %v; want a miss", got.Token, err)
	}
}

// FenceRefusesOlder: a write with an older fence than the stored token's
// is refused and changes nothing; the same or a newer fence is written.
func FenceRefusesOlder(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	if err := a.Save(ctx, key, token.Stored{Token: Token("new"), Fence: 5}); err != nil {
		t.Fatalf("Save fence 5: %v", err)
	}
	if err := b.Save(ctx, key, token.Stored{Token: Token("stale"), Fence: 4}); !errors.Is(err, token.ErrFenced) {
		t.Errorf("Save fence 4 over 5: got %v, want ErrFenced", err)
	}
	if got, _ := a.Load(ctx, key); got.Token == nil || got.Token.AccessToken != "new" {
		t.Errorf("Load after a refused write: got %+v, want the fence-5 token", got.Token)
	}
	for _, f := range []uint64{5, 6} {
		if err := b.Save(ctx, key, token.Stored{Token: Token(fmt.Sprint("f", f)), Fence: f}); err != nil {
			t.Errorf("Save fence %d: %v, want nil", f, err)
		}
	}
	// The lease reads what is stored with it, never a stale copy.
	l, err := a.Acquire(ctx, key)
	if err != nil || l == nil {
		t.Fatalf("Acquire: %v, %v", l, err)
	}
	defer l.Release()
	if got := l.Stored; got.Token == nil || got.Token.AccessToken != "f6" || got.Fence != 6 || got.Token.Headers["X-Session"] != "session-f6" {
		t.Errorf("Lease.Stored: got %+v, want the fence-6 token", got)
	}
	if l.Fence <= 6 {
		t.Errorf("Lease.Fence: got %d, want above the stored token's 6", l.Fence)
	}
}

// LeaseExclusive: one holder at a time; the next lease has a larger fence.
func LeaseExclusive(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	la, err := a.Acquire(ctx, key)
	if err != nil || la == nil {
		t.Fatalf("Acquire on a free key: got %v, %v; want a lease", la, err)
	}
	if lb, err := b.Acquire(ctx, key); err != nil || lb != nil {
		t.Fatalf("Acquire while held: got %v, %v; want nil, nil", lb, err)
	}
	other := token.Key{Scope: key.Scope}
	lo, err := b.Acquire(ctx, other)
	if err != nil || lo == nil {
		t.Fatalf("Acquire of another key: got %v, %v; want a lease", lo, err)
	}
	lo.Release()
	la.Release()
	la.Release() // twice is harmless
	select {
	case <-la.Context().Done():
	default:
		t.Errorf("lease context after Release: not done, want done")
	}
	lb, err := b.Acquire(ctx, key)
	if err != nil || lb == nil {
		t.Fatalf("Acquire after Release: got %v, %v; want a lease", lb, err)
	}
	defer lb.Release()
	if lb.Fence <= la.Fence {
		t.Errorf("fences: got %d then %d, want increasing", la.Fence, lb.Fence)
	}
}

// LeaseContention: 20 goroutines on two replicas contend; exactly one
// wins.
func LeaseContention(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	var won atomic.Int32
	var wg sync.WaitGroup
	leases := make(chan *token.Lease, 20)
	for i := range 20 {
		s := []Shared{a, b}[i%2]
		wg.Go(func() {
			l, err := s.Acquire(ctx, key)
			if err != nil {
				t.Errorf("Acquire: %v", err)
			}
			if l != nil {
				won.Add(1)
				leases <- l
			}
		})
	}
	wg.Wait()
	close(leases)
	for l := range leases {
		l.Release()
	}
	if n := won.Load(); n != 1 {
		t.Errorf("leases won: got %d, want 1", n)
	}
}

// StaleHolderIsFenced: a holder whose lease was taken over cannot
// overwrite the newer holder's token.
func StaleHolderIsFenced(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	old, err := a.Acquire(ctx, key)
	if err != nil || old == nil {
		t.Fatalf("Acquire: %v, %v", old, err)
	}
	old.Release() // stands for a lease lost while its login went on
	next, err := b.Acquire(ctx, key)
	if err != nil || next == nil {
		t.Fatalf("Acquire after the loss: %v, %v", next, err)
	}
	defer next.Release()
	if err := b.Save(ctx, key, token.Stored{Token: Token("new"), Fence: next.Fence}); err != nil {
		t.Fatalf("Save by the new holder: %v", err)
	}
	if err := a.Save(ctx, key, token.Stored{Token: Token("late"), Fence: old.Fence}); !errors.Is(err, token.ErrFenced) {
		t.Errorf("late Save by the old holder: got %v, want ErrFenced", err)
	}
	if got, _ := a.Load(ctx, key); got.Token == nil || got.Token.AccessToken != "new" {
		t.Errorf("Load: got %+v, want the new holder's token", got.Token)
	}
}

// waitAsync runs Wait in a goroutine; the channel gets its result.
func waitAsync(ctx context.Context, s Shared, seen uint64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Wait(ctx, key, seen) }()
	return ch
}

// notYet checks that a Wait has not returned: it must not return while
// nothing changed.
func notYet(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("Wait returned %v while the lease was held and the token unchanged", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func woken(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Errorf("Wait after %s: got %v, want nil", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Wait not woken by %s", what)
	}
}

// WaitWokenBySave: a replica waiting on a held key is woken when the
// holder writes the token.
func WaitWokenBySave(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	if err := b.Wait(ctx, key, 0); err != nil {
		t.Fatalf("Wait on a free key: got %v, want nil at once", err)
	}
	l, err := a.Acquire(ctx, key)
	if err != nil || l == nil {
		t.Fatalf("Acquire: %v, %v", l, err)
	}
	defer l.Release()
	ch := waitAsync(ctx, b, 0)
	notYet(t, ch)
	if err := a.Save(ctx, key, token.Stored{Token: Token("t"), Fence: l.Fence}); err != nil {
		t.Fatal(err)
	}
	woken(t, ch, "the holder's Save")
}

// WaitWokenByRelease: a waiter is woken when the holder gives up without
// a token (its login failed), so it can try itself.
func WaitWokenByRelease(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	l, err := a.Acquire(ctx, key)
	if err != nil || l == nil {
		t.Fatalf("Acquire: %v, %v", l, err)
	}
	ch := waitAsync(ctx, b, 0)
	notYet(t, ch)
	l.Release()
	woken(t, ch, "the holder's Release")
	wctx, cancel := context.WithCancel(ctx)
	l2, _ := a.Acquire(ctx, key)
	defer l2.Release()
	ch = waitAsync(wctx, b, 0)
	notYet(t, ch)
	cancel()
	select {
	case err := <-ch:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait with its context cancelled: got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not honour its context")
	}
}

var rejected = &token.Error{Kind: token.KindRejected, Reason: token.ReasonCredentialsRejected,
	Message: "the upstream refused the credentials", Upstream: "BAD_PASSWORD", Err: errors.New("cause with detail")}

// BudgetHold: rejections hold logins for a doubling backoff; after it
// one probe is admitted; a success clears the hold.
func BudgetHold(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	now := time.UnixMilli(1_800_000_000_000)
	at := func(s Shared, owner string, excl bool, when time.Time) token.Admission {
		t.Helper()
		adm, err := s.Admit(ctx, token.Attempt{Owner: owner, Exclusive: excl, Now: when, TTL: 30 * time.Second})
		if err != nil {
			t.Fatalf("Admit: %v", err)
		}
		return adm
	}
	if adm := at(a, "x", false, now); !adm.OK {
		t.Fatalf("Admit without hold: got %+v, want OK", adm)
	}
	settle := func(s Shared, owner string, err error, when time.Time) token.Hold {
		t.Helper()
		h, serr := s.Settle(ctx, token.Settlement{Owner: owner, Now: when, Err: err, Backoff: time.Minute, MaxBackoff: 5 * time.Minute})
		if serr != nil {
			t.Fatalf("Settle: %v", serr)
		}
		return h
	}
	for strike, want := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute, 4: 5 * time.Minute} {
		if got := token.HoldFor(strike, time.Minute, 5*time.Minute, 0); got != want {
			t.Errorf("HoldFor(%d): got %s, want %s", strike, got, want)
		}
	}
	h := settle(a, "x", rejected, now)
	if h.Err == nil || h.Err.Reason != rejected.Reason || h.Err.Message != rejected.Message || h.Err.Upstream != "BAD_PASSWORD" ||
		h.Err.Err != nil || h.Strikes != 1 || !h.Until.Equal(now.Add(time.Minute)) {
		t.Fatalf("Settle of a rejection: got %+v (err %+v), want the rejection without its cause, 1 strike, until now+1m", h, h.Err)
	}
	for _, excl := range []bool{false, true} {
		adm := at(b, "y", excl, now.Add(59*time.Second))
		if adm.OK || adm.Hold.Err == nil || adm.Hold.Err.Reason != rejected.Reason || !adm.Hold.Until.Equal(now.Add(time.Minute)) || adm.Hold.Busy {
			t.Errorf("Admit (exclusive %v) inside the hold: got %+v, want refused with the hold until now+1m", excl, adm)
		}
	}
	// The backoff is over: one probe, fleet-wide.
	later := now.Add(time.Minute)
	if adm := at(b, "probe", false, later); !adm.OK {
		t.Fatalf("Admit after the backoff: got %+v, want OK (the probe)", adm)
	}
	if adm := at(a, "other", false, later); adm.OK || !adm.Hold.Busy || adm.Hold.Err == nil {
		t.Errorf("second Admit during the probe: got %+v, want refused, busy, with the held rejection", adm)
	}
	h = settle(b, "probe", rejected, later)
	if h.Strikes != 2 || !h.Until.Equal(later.Add(2*time.Minute)) {
		t.Errorf("second rejection: got %+v, want 2 strikes until +2m", h)
	}
	// A transient failure of the next probe changes nothing but the slot.
	later = later.Add(2 * time.Minute)
	if adm := at(a, "p2", false, later); !adm.OK {
		t.Fatalf("Admit after the second backoff: got %+v, want OK", adm)
	}
	if h = settle(a, "p2", token.Unavailable("down", nil), later); h.Strikes != 2 || h.Err == nil {
		t.Errorf("Settle of a transient failure: got %+v, want the hold unchanged", h)
	}
	if adm := at(b, "p3", false, later); !adm.OK {
		t.Fatalf("Admit after a transient probe: got %+v, want OK (the slot is free)", adm)
	}
	if h = settle(b, "p3", nil, later); h.Err != nil || h.Strikes != 0 {
		t.Errorf("Settle of a success: got %+v, want no hold", h)
	}
	if adm := at(a, "z", false, later); !adm.OK {
		t.Errorf("Admit after a success: got %+v, want OK", adm)
	}
	// An upstream that asks for a longer hold gets it.
	long := *rejected
	long.Hold = time.Hour
	if h = settle(a, "z", &long, later); !h.Until.Equal(later.Add(time.Hour)) {
		t.Errorf("rejection asking for an hour: got until %s, want %s", h.Until, later.Add(time.Hour))
	}
}

// BudgetContention: 50 goroutines over two replicas ask at once for the
// one slot (the trial, or a probe): exactly one is admitted.
func BudgetContention(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	now := time.UnixMilli(1_800_000_000_000)
	run := func(excl bool, when time.Time) int32 {
		var admitted atomic.Int32
		var wg sync.WaitGroup
		for i := range 50 {
			s := []Shared{a, b}[i%2]
			wg.Go(func() {
				adm, err := s.Admit(ctx, token.Attempt{Owner: fmt.Sprint("o", i), Exclusive: excl, Now: when, TTL: time.Minute})
				if err != nil {
					t.Errorf("Admit: %v", err)
				}
				if adm.OK {
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		return admitted.Load()
	}
	if n := run(true, now); n != 1 {
		t.Errorf("exclusive attempts admitted at once: got %d, want 1", n)
	}
	if _, err := a.Settle(ctx, token.Settlement{Owner: "nobody", Now: now, Err: rejected, Backoff: time.Minute, MaxBackoff: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if n := run(false, now.Add(30*time.Second)); n != 0 {
		t.Errorf("attempts admitted inside the hold: got %d, want 0", n)
	}
	// Past the backoff and past the trial's slot: one probe.
	if n := run(false, now.Add(2*time.Minute)); n != 1 {
		t.Errorf("attempts admitted after the backoff: got %d, want 1 (the probe)", n)
	}
}

// BudgetSlotExpires: a slot whose owner never settles (it died) is free
// again after its TTL.
func BudgetSlotExpires(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	now := time.UnixMilli(1_800_000_000_000)
	if adm, _ := a.Admit(ctx, token.Attempt{Owner: "dead", Exclusive: true, Now: now, TTL: 30 * time.Second}); !adm.OK {
		t.Fatalf("Admit: got %+v, want OK", adm)
	}
	if adm, _ := b.Admit(ctx, token.Attempt{Owner: "b", Exclusive: true, Now: now.Add(29 * time.Second), TTL: 30 * time.Second}); adm.OK || !adm.Hold.Busy {
		t.Errorf("Admit inside the slot's TTL: got %+v, want refused, busy", adm)
	}
	if adm, _ := b.Admit(ctx, token.Attempt{Owner: "b", Exclusive: true, Now: now.Add(30 * time.Second), TTL: 30 * time.Second}); !adm.OK {
		t.Errorf("Admit after the slot's TTL: got %+v, want OK", adm)
	}
}

// Failures: charged before each attempt up to max, across replicas;
// refunded when no refusal came; cleared by a success; new credentials
// start again.
func Failures(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	charge := func(s Shared, creds string) (int, bool) {
		t.Helper()
		n, ok, err := s.ChargeFailure(ctx, creds, 3)
		if err != nil {
			t.Fatalf("ChargeFailure: %v", err)
		}
		return n, ok
	}
	for i, s := range []Shared{a, b, a} {
		if n, ok := charge(s, "c1"); !ok || n != i+1 {
			t.Fatalf("charge %d: got %d, %v; want %d, true", i+1, n, ok, i+1)
		}
	}
	if n, ok := charge(b, "c1"); ok || n != 3 {
		t.Fatalf("fourth charge with max 3: got %d, %v; want 3, false", n, ok)
	}
	if err := a.RefundFailure(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if n, ok := charge(b, "c1"); !ok || n != 3 {
		t.Errorf("charge after a refund: got %d, %v; want 3, true", n, ok)
	}
	if err := b.ClearFailures(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if n, ok := charge(a, "c1"); !ok || n != 1 {
		t.Errorf("charge after a success: got %d, %v; want 1, true", n, ok)
	}
	if n, ok := charge(a, "c2"); !ok || n != 1 {
		t.Errorf("charge with new credentials: got %d, %v; want 1, true", n, ok)
	}
	if err := a.ClearFailures(ctx, "c1"); err != nil { // stale: ignored
		t.Fatal(err)
	}
	if n, ok := charge(a, "c2"); !ok || n != 2 {
		t.Errorf("charge after clearing other credentials: got %d, %v; want 2, true", n, ok)
	}
}

// FailuresContention: 50 concurrent charges over two replicas with max 3:
// exactly 3 logins may be sent.
func FailuresContention(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	var sent atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		s := []Shared{a, b}[i%2]
		wg.Go(func() {
			_, ok, err := s.ChargeFailure(ctx, "c", 3)
			if err != nil {
				t.Errorf("ChargeFailure: %v", err)
			}
			if ok {
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	if n := sent.Load(); n != 3 {
		t.Errorf("logins allowed: got %d, want 3", n)
	}
}

// StepsExclusive: 50 goroutines over two replicas reserve one TOTP step:
// exactly one gets it; the next step is free.
func StepsExclusive(t *testing.T, newStores New) {
	ctx := t.Context()
	a, b := newStores(t)
	var got atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		s := []Shared{a, b}[i%2]
		wg.Go(func() {
			ok, err := s.ReserveStep(ctx, 1000, time.Minute)
			if err != nil {
				t.Errorf("ReserveStep: %v", err)
			}
			if ok {
				got.Add(1)
			}
		})
	}
	wg.Wait()
	if n := got.Load(); n != 1 {
		t.Errorf("reservations of one step: got %d, want 1", n)
	}
	if ok, err := b.ReserveStep(ctx, 1001, time.Minute); err != nil || !ok {
		t.Errorf("ReserveStep of the next step: got %v, %v; want true", ok, err)
	}
}
