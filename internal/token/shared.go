package token

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The steps of a login that a fleet shares (Options.Store). The local
// singleflight comes first, so one goroutine per replica gets here; it
// then looks for another replica's token, takes the key's lease, asks the
// budget, logs in on the lease's context and writes the token with the
// lease's fence. With no store, a login is the Cache's alone, as before.

// storeTimeout bounds one store call: a Load waiting seconds on a dead
// Redis would stall every caller of a miss.
const storeTimeout = 500 * time.Millisecond

// fetched is what a login (or the fleet) produced.
type fetched struct {
	tok *Token
	err error
	// fence is the stored fence of tok, 0 when it is not stored.
	fence uint64
	// fleet: another replica logged in; this one adopted its token.
	fleet bool
	// hold is the fleet's hold after this login's answer, nil when the
	// store did not say (no store, or it failed): the Cache then holds
	// on its own count.
	hold *Hold
	// gone: the store had no token for the key when its lease was taken,
	// so a revocable token being checked was dropped by the replica
	// whose check the upstream rejected (see tombstone).
	gone bool
}

// fleetHeld is the budget's refusal: the fleet's hold stands.
type fleetHeld struct{ hold Hold }

func (f *fleetHeld) Error() string { return "logins are held for the fleet" }

// fetch gets k's token for call cl: from the fleet when a replica has a
// good one, else by logging in under k's lease. prev is the token being
// refreshed (nil on a miss), prevFence its stored fence.
func (c *Cache) fetch(ctx context.Context, k Key, cl *call, prev *Token, prevFence uint64) fetched {
	r := Request{Scope: k.Scope, Subject: k.Subject, Previous: prev}
	if c.o.Store == nil {
		tok, err := c.login(ctx, cl, r)
		return fetched{tok: tok, err: err}
	}
	var w waiting
	for {
		st, err := c.storeLoad(ctx, k)
		if err != nil {
			return c.alone(ctx, cl, r)
		}
		if c.adoptable(st, cl, prevFence) {
			c.o.Metrics.store(ctx, c.o.Provider, "adopted")
			return fetched{tok: st.Token, fence: st.Fence, fleet: true}
		}
		lease, err := c.storeAcquire(ctx, k)
		if err != nil {
			return c.alone(ctx, cl, r)
		}
		if lease == nil {
			// Another replica logs in: wait for its token, or for its
			// lease to end (released, or its holder gone).
			switch err := c.waitHolder(ctx, k, st.Fence, &w); {
			case err == nil:
				continue
			case ctx.Err() != nil:
				return fetched{err: Unavailable("another replica's login for this key did not finish in time", err)}
			default:
				return c.alone(ctx, cl, r)
			}
		}
		if w.waited && lease.Stored.Fence == st.Fence {
			// The lease ended without a new token: its holder failed or
			// died, and this replica takes over.
			c.o.Metrics.store(ctx, c.o.Provider, "takeover")
		}
		f := c.holding(ctx, k, cl, r, lease, prevFence)
		lease.Release()
		return f
	}
}

// holding is fetch with k's lease held: the token stored with the lease
// if another replica has just written a good one, else this replica's
// login.
func (c *Cache) holding(ctx context.Context, k Key, cl *call, r Request, lease *Lease, prevFence uint64) fetched {
	s := lease.Stored
	if s.Token != nil && cl.reported != "" && s.Token.AccessToken == cl.reported {
		// The refused token is the fleet's: no replica may take it up
		// while this login runs.
		c.tombstone(ctx, k, lease.Fence)
	}
	if c.adoptable(s, cl, prevFence) {
		c.o.Metrics.store(ctx, c.o.Provider, "adopted")
		return fetched{tok: s.Token, fence: s.Fence, fleet: true}
	}
	if s.Token != nil && s.Token.RefreshToken != "" && r.Previous != nil && s.Fence != prevFence {
		// Another replica refreshed last: its refresh token is the one
		// the upstream still honours.
		r.Previous = s.Token
	}
	f := c.leased(ctx, k, cl, r, lease)
	f.gone = s.Token == nil
	return f
}

// waiting is what fetch remembers of its waits for another replica.
type waiting struct {
	waited  bool
	seen    uint64 // the stored fence when it last waited
	backoff time.Duration
}

// waitHolder waits until the token stored for k has a fence other than
// seen or k's lease is free (see Leases.Wait). A Wait that returns while
// this replica still sees the same fence means Load's local copy lags the
// store (its invalidation is on the way): the next one backs off rather
// than spin.
func (c *Cache) waitHolder(ctx context.Context, k Key, seen uint64, w *waiting) error {
	c.o.Metrics.store(ctx, c.o.Provider, "lease_wait")
	if w.waited && seen == w.seen {
		w.backoff = min(max(2*w.backoff, c.o.RetryBase), time.Second)
		if !pause(ctx, w.backoff) {
			return ctx.Err()
		}
	}
	w.waited, w.seen = true, seen
	err := c.o.Store.Wait(ctx, k, seen)
	if err != nil && ctx.Err() == nil {
		c.o.Metrics.store(ctx, c.o.Provider, "error")
	}
	return err
}

// adoptable reports whether st, another replica's token, serves call cl:
// good for MinValid, not the token being replaced or reported, and, for
// a refresh, not itself due.
func (c *Cache) adoptable(st Stored, cl *call, prevFence uint64) bool {
	t := st.Token
	now := c.o.Now()
	switch {
	case t == nil || !t.ValidFor(now, c.o.MinValid):
		return false
	case cl.reported != "" && t.AccessToken == cl.reported:
		return false
	case cl.refresh && st.Fence == prevFence:
		return false
	case cl.refresh:
		at := c.refreshAt(t, now)
		return at.IsZero() || at.After(now)
	}
	return true
}

// leased logs in holding k's lease: the budget first, then the login on
// the lease's context, then the token written with the lease's fence.
func (c *Cache) leased(ctx context.Context, k Key, cl *call, r Request, lease *Lease) fetched {
	owner := c.owner()
	if h, err := c.admit(ctx, lease.Context(), owner); err != nil {
		return fetched{err: err}
	} else if h != nil {
		return fetched{err: &fleetHeld{hold: *h}, hold: h}
	}
	lctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lease.Context(), cancel)
	tok, err := c.login(lctx, cl, r)
	stop()
	cancel()
	f := fetched{tok: tok, err: err}
	if h, serr := c.storeSettle(ctx, Settlement{Owner: owner, Now: c.o.Now(), Err: err,
		Backoff: c.o.RejectBackoff, MaxBackoff: c.o.MaxRejectBackoff}); serr == nil {
		f.hold = &h
	}
	if err != nil {
		if r.Previous != nil && r.Previous.CheckEvery > 0 && KindOf(err) == KindRejected {
			c.tombstone(ctx, k, lease.Fence)
		}
		return f
	}
	switch err := c.storeSave(ctx, k, Stored{Token: tok, Fence: lease.Fence}); {
	case errors.Is(err, ErrFenced):
		// The lease was lost and a newer token stored meanwhile: it wins.
		c.o.Metrics.store(ctx, c.o.Provider, "fenced")
		if st, lerr := c.storeLoad(ctx, k); lerr == nil && st.Token != nil && st.Token.ValidFor(c.o.Now(), c.o.MinValid) {
			return fetched{tok: st.Token, fence: st.Fence, fleet: true, hold: f.hold}
		}
	case err == nil:
		f.fence = lease.Fence
	}
	return f
}

// tombstone removes k's stored token: the upstream rejected its check,
// or a caller reported it refused, so no replica may take it up again. It is written as an expired token
// under the lease's fence, which every store treats as a miss.
func (c *Cache) tombstone(ctx context.Context, k Key, fence uint64) {
	now := c.o.Now()
	_ = c.storeSave(ctx, k, Stored{Token: &Token{IssuedAt: now, Expiry: now}, Fence: fence})
}

// admit asks the budget whether the login may send the credentials, and
// returns the fleet's hold when not. A slot busy with another replica's
// trial (no hold yet) is waited for, briefly and with backoff, while the
// lease lasts; a failing store admits (the local hold still applies).
func (c *Cache) admit(ctx, leaseCtx context.Context, owner string) (*Hold, error) {
	wait := c.o.RetryBase
	for {
		a, err := c.storeAdmit(ctx, Attempt{Owner: owner, Exclusive: !c.isProven(), Now: c.o.Now(), TTL: c.o.LoginTimeout})
		switch {
		case err != nil || a.OK:
			return nil, nil
		case a.Hold.Err != nil:
			return &a.Hold, nil
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-t.C:
		case <-leaseCtx.Done():
			t.Stop()
			return nil, Unavailable("another replica's trial of the credentials did not finish in time", leaseCtx.Err())
		}
		wait = min(wait*2, refreshRetryFirst)
	}
}

func (c *Cache) isProven() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proven
}

// alone logs in without the fleet: the store failed. The local
// singleflight and holds still apply, so a replica cut off from Redis
// costs one login of its own, never one per caller.
func (c *Cache) alone(ctx context.Context, cl *call, r Request) fetched {
	tok, err := c.login(ctx, cl, r)
	return fetched{tok: tok, err: err}
}

// owner names one login to the budget.
func (c *Cache) owner() string {
	return c.id + "-" + strconv.FormatUint(c.logins.Add(1), 10)
}

func newID() string {
	b := make([]byte, 8)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// The store calls of the login path, each bounded by storeTimeout, traced
// and counted when they fail. The hot path makes none.

func (c *Cache) storeLoad(ctx context.Context, k Key) (Stored, error) {
	ctx, end := c.storeCall(ctx, "load")
	st, err := c.o.Store.Load(ctx, k)
	end(err)
	return st, err
}

func (c *Cache) storeAcquire(ctx context.Context, k Key) (*Lease, error) {
	// The lease lives on the context it is taken with, so this call is
	// bounded by the login's own timeout, not storeTimeout; the Load just
	// before it has already found the store answering.
	_, end := c.storeCall(ctx, "acquire")
	l, err := c.o.Store.Acquire(ctx, k)
	end(err)
	return l, err
}

func (c *Cache) storeSave(ctx context.Context, k Key, s Stored) error {
	ctx, end := c.storeCall(context.WithoutCancel(ctx), "save")
	err := c.o.Store.Save(ctx, k, s)
	if errors.Is(err, ErrFenced) {
		end(nil)
	} else {
		end(err)
	}
	return err
}

func (c *Cache) storeAdmit(ctx context.Context, a Attempt) (Admission, error) {
	ctx, end := c.storeCall(ctx, "admit")
	ad, err := c.o.Store.Admit(ctx, a)
	end(err)
	return ad, err
}

func (c *Cache) storeSettle(ctx context.Context, s Settlement) (Hold, error) {
	// An admitted attempt is settled even when its login ran out of time.
	ctx, end := c.storeCall(context.WithoutCancel(ctx), "settle")
	h, err := c.o.Store.Settle(ctx, s)
	end(err)
	return h, err
}

// storeCall starts the span of one store call on the login path, bounded
// by storeTimeout; end records its error.
func (c *Cache) storeCall(ctx context.Context, op string) (context.Context, func(error)) {
	ctx, span := c.o.Tracer.Start(ctx, "tokenvend.store."+op, append(c.spanAttrs, trace.WithSpanKind(trace.SpanKindClient))...)
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	return ctx, func(err error) {
		cancel()
		if err != nil {
			c.o.Metrics.store(ctx, c.o.Provider, "error")
			span.SetStatus(codes.Error, fmt.Sprintf("store %s failed", op))
			c.o.Log.WarnContext(ctx, "store call failed", "provider", c.o.Provider, "op", op, "error", err.Error())
		}
		span.End()
	}
}

// WriteBack stores every token this cache holds that is still good, under
// the fence it was stored with (0 for one logged in alone): after the
// shared store came back, perhaps empty, so that the fleet finds them
// again. The fence decides, so a token another replica wrote meanwhile
// under a newer lease is never replaced. It does nothing without a store.
func (c *Cache) WriteBack(ctx context.Context) {
	if c.o.Store == nil {
		return
	}
	now := c.o.Now()
	type item struct {
		k Key
		s Stored
	}
	var items []item
	c.mu.Lock()
	for k, e := range c.entries {
		if e.tok != nil && e.call == nil && e.tok.ValidFor(now, c.o.MinValid) {
			items = append(items, item{k, Stored{Token: e.tok, Fence: e.fence}})
		}
	}
	c.mu.Unlock()
	for _, it := range items {
		if err := c.storeSave(ctx, it.k, it.s); err == nil {
			c.o.Metrics.store(ctx, c.o.Provider, "written_back")
		}
	}
}

// pause waits d or until ctx ends (false).
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
