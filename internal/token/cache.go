package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Options tune a Cache. Zero durations and counts take the defaults noted.
type Options struct {
	// Provider and Kind label spans, metrics and messages.
	Provider, Kind string
	// RefreshBefore starts a background refresh this long before a cached
	// token expires (5m). A token so short that this would come before
	// it has been handed out for half the time it can be (its lifetime
	// less MinValid) is refreshed at that half-way point instead: see
	// refreshAt.
	RefreshBefore time.Duration
	// MinValid is the least validity a cached token needs to be handed out
	// (30s).
	MinValid time.Duration
	// RejectBackoff holds logins after a rejection (1m), doubling per
	// further rejection up to MaxRejectBackoff (30m).
	RejectBackoff, MaxRejectBackoff time.Duration
	// LoginTimeout bounds one shared login, retries included (30s).
	LoginTimeout time.Duration
	// LoginAttempts is how often a transient failure is tried (3).
	LoginAttempts int
	// MinReloginInterval is the least time between two logins for one key
	// that only a caller's min_valid_for asks for (30s). Inside it, a
	// request the cached token cannot satisfy is refused with the validity
	// that can be had, so no caller can make the cache hammer an upstream
	// account. It bounds the logins that reports (Invalidate) start too.
	MinReloginInterval time.Duration
	// RetryBase is the first wait between attempts (200ms); it doubles,
	// with jitter.
	RetryBase time.Duration
	// Now is the clock (time.Now).
	Now func() time.Time
	// Tracer records the cache lookup and login spans (no-op when nil).
	Tracer trace.Tracer
	// Metrics records lookups and logins (none when nil).
	Metrics *Metrics
	// Log receives login failures; never a token or a secret (discarded
	// when nil).
	Log *slog.Logger
	// Store is what the replicas of the provider share: tokens, the lease
	// that decides which replica logs in, and the login budget. Nil: the
	// process's own memory, and no store call at all (one replica, as
	// before there was a store). A Watchable store keeps the local
	// copies coherent with the fleet's (see watch.go).
	Store Store
	// OnHold, when set, is told when logins become held, after a
	// rejection or a pause (true), and when a login succeeds again
	// (false). It is called in order with the cache locked: it must be
	// quick and must not call the Cache.
	OnHold func(held bool)
}

func (o *Options) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.RefreshBefore, 5*time.Minute)
	def(&o.RejectBackoff, time.Minute)
	def(&o.MaxRejectBackoff, 30*time.Minute)
	def(&o.LoginTimeout, 30*time.Second)
	def(&o.RetryBase, 200*time.Millisecond)
	def(&o.MinReloginInterval, 30*time.Second)
	if o.MinValid < 0 {
		o.MinValid = 0
	}
	if o.LoginAttempts <= 0 {
		o.LoginAttempts = 3
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Key identifies one cached credential of a provider.
type Key struct {
	Scope, Subject string
}

// Outcome says how a Get was answered, for traces and audit.
type Outcome struct {
	// Hit is true when a cached token was returned without waiting.
	Hit bool
	// Shared is true when the caller waited on a login another caller
	// had already started.
	Shared bool
	// Held is true when the answer came from a hold, without asking the
	// upstream: on a rejected login, a pause, or the relogin interval.
	Held bool
	// Fleet is true when the login waited on was another replica's: its
	// token came from the shared store.
	Fleet bool
}

// outcomeNames name outcomes, by Outcome.index, for logs and metrics.
var outcomeNames = [...]string{"hit", "login", "shared", "held", "fleet", "shared_fleet"}

func (o Outcome) index() int {
	switch {
	case o.Hit:
		return 0
	case o.Held:
		return 3
	case o.Fleet && o.Shared:
		return 5
	case o.Fleet:
		return 4
	case o.Shared:
		return 2
	default:
		return 1
	}
}

// String names the outcome for logs and metrics: hit, login, shared,
// held, or, with a shared store, fleet (this caller's lookup found
// another replica's login) and shared_fleet (it waited on a caller who
// did).
func (o Outcome) String() string { return outcomeNames[o.index()] }

// Background refreshes that fail are retried this often, doubling, while
// the cached token is still good. The pause after a token that arrives
// unusable backs off the same way.
const (
	refreshRetryFirst = 5 * time.Second
	refreshRetryMax   = time.Minute
)

// secretRetry is how long logins pause after a secret could not be read:
// reading it again costs nothing upstream, and the fix (a remount, the end
// of a rotation) should take effect within seconds.
const secretRetry = 5 * time.Second

// Cache caches one provider's tokens. Concurrent misses for a key share
// one login; a token nearing expiry is refreshed in the background while
// callers keep getting it; transient failures are retried with backoff;
// and a rejection of the configured credentials holds every login of the
// provider for a backoff period, so a wrong password costs one upstream
// attempt per period however many callers ask.
type Cache struct {
	src Source
	o   Options

	// Attribute sets are built once: Get is the hot path.
	spanAttrs   []trace.SpanStartOption
	lookupAttrs [len(outcomeNames)]metric.ObserveOption

	// lookups count Gets by outcome, and waiting the callers blocked on a
	// login, for the metrics callback: an atomic add is all a Get pays.
	lookups [len(outcomeNames)]atomic.Int64
	waiting atomic.Int64

	mu      sync.Mutex
	entries map[Key]*entry
	hold    hold
	// Until a login of this provider has succeeded, its credentials are
	// unproven, and a login for one key at a time (the trial) tries them:
	// callers of other keys wait for its answer. Otherwise callers of K
	// scopes at a cold start would send wrong credentials K times at once,
	// before the first rejection could form the hold.
	proven bool
	trial  *call
	// reports remember, per key, the invalidation reports that started a
	// login (see Invalidate).
	reports map[Key]*reports
	// lifetime is how long the upstream's last token lived, so a
	// min_valid_for no token can meet is refused without a login.
	lifetime time.Duration

	// id and logins name this cache's logins to a shared budget.
	id     string
	logins atomic.Uint64

	// watcher is registered with a Watchable store, which may hold it
	// weakly: the Cache keeps it alive. recheckPause is the real time
	// before which marked copies are served unread (see recheckRetry).
	watcher      *Watcher
	recheckPause time.Time
}

type entry struct {
	tok             *Token
	call            *call // the login or refresh in flight, if any
	refreshAt       time.Time
	refreshFailures int
	// loginAt is when the key's last login or refresh started, to space
	// the logins that only a caller's min_valid_for asks for.
	loginAt time.Time
	// fence is tok's fence in the shared store (0: not stored).
	fence uint64
	// recheck marks tok to be read again from the store before it is
	// served (see watch.go); changes counts the marks, so a recheck
	// overtaken by a later change leaves the mark; rechecking is closed
	// when the recheck in flight ends.
	recheck    recheck
	changes    uint64
	rechecking chan struct{}
}

// call is one login shared by every caller that waits on it. It runs on a
// context of its own, bounded by LoginTimeout, so a caller that gives up
// fails no one else. Nor is it cancelled when every caller has given up:
// an attempt the upstream has already received may count against the
// account, so its answer (a token, or a rejection to hold) must land. An
// abandoned login only starts no further retries.
type call struct {
	done       chan struct{}
	tok        *Token
	err        error
	waiters    int
	abandoned  bool // every waiter left; guarded by Cache.mu
	cancel     context.CancelFunc
	background bool
	// refresh: the call replaces a token (a refresh or a check).
	refresh bool
	// reported is the access token an invalidation report refused: the
	// fleet's copy of it must not be adopted.
	reported string
	// fleet: the token came from another replica's login.
	fleet bool
}

// hold is the provider-wide memory of a rejected login. After the
// backoff, one login (the probe) checks whether the credentials are still
// rejected; other keys keep getting the rejection until it answers, so a
// wrong password costs one upstream attempt per period however many keys
// are asked for.
//
// A pause is a short hold for a failure that is not the upstream's verdict
// on the credentials, and that the next login would meet again at once: a
// secret that cannot be read (no login was attempted), tokens that arrive
// expired or with absurd times (each costs the upstream a login). It
// counts no strike, so it never lengthens the rejection backoff.
type hold struct {
	err     *Error
	until   time.Time
	strikes int
	pauses  int // pauses since the last success, for their backoff
	probe   *call
}

// NewCache returns a Cache in front of src.
func NewCache(src Source, o Options) *Cache {
	o.setDefaults()
	c := &Cache{src: src, o: o, entries: map[Key]*entry{}, id: newID()}
	c.spanAttrs = []trace.SpanStartOption{trace.WithAttributes(
		attribute.String("tokenvend.provider", o.Provider),
		attribute.String("tokenvend.kind", o.Kind),
	)}
	for i, r := range outcomeNames {
		c.lookupAttrs[i] = metric.WithAttributeSet(attribute.NewSet(
			attribute.String("provider", o.Provider), attribute.String("result", r)))
	}
	o.Metrics.add(c)
	c.watch()
	return c
}

// Get returns a token for k with at least minValidFor (and the cache's
// MinValid) validity left, logging in when there is none.
func (c *Cache) Get(ctx context.Context, k Key, minValidFor time.Duration) (*Token, Outcome, error) {
	ctx, span := c.o.Tracer.Start(ctx, "tokenvend.cache.Get", c.spanAttrs...)
	defer span.End()
	tok, out, err := c.get(ctx, k, minValidFor, false)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.Bool("tokenvend.cache_hit", out.Hit),
			attribute.Bool("tokenvend.shared_login", out.Shared),
		)
		if err != nil {
			span.SetStatus(codes.Error, safeMessage(err))
		}
	}
	c.lookups[out.index()].Add(1)
	return tok, out, err
}

// get is Get; rechecked says this Get has read the stored token once
// already (see recheck), so it serves what it finds now.
func (c *Cache) get(ctx context.Context, k Key, minValidFor time.Duration, rechecked bool) (*Token, Outcome, error) {
	need := max(c.o.MinValid, minValidFor)
	now := c.o.Now()

	c.mu.Lock()
	e := c.entries[k]
	if e == nil {
		e = &entry{}
		c.entries[k] = e
	}
	if e.tok != nil && e.tok.ValidFor(now, need) {
		if !rechecked && c.recheckDue(e) {
			// The fleet's token changed since this copy was read.
			c.mu.Unlock()
			replaced, err := c.recheck(ctx, k, e)
			if err != nil {
				return nil, Outcome{}, err
			}
			tok, out, err := c.get(ctx, k, minValidFor, true)
			if replaced && out.Hit {
				out = Outcome{Fleet: true}
			}
			return tok, out, err
		}
		tok := e.tok
		if e.call == nil && !e.refreshAt.IsZero() && !now.Before(e.refreshAt) && c.heldLocked(now, e) == nil {
			c.startLocked(ctx, k, e, true)
		}
		c.mu.Unlock()
		return tok, Outcome{Hit: true}, nil
	}
	if err := c.heldLocked(now, e); err != nil {
		c.mu.Unlock()
		return nil, Outcome{Held: true}, err
	}
	if minValidFor > 0 && c.lifetime > 0 && minValidFor >= c.lifetime {
		c.mu.Unlock()
		return nil, Outcome{}, c.tooLong(minValidFor, c.lifetime)
	}
	if e.call == nil && e.tok != nil && e.tok.ValidFor(now, c.o.MinValid) {
		// The cached token is good for everyone but this caller: only its
		// min_valid_for asks for a login, and those are spaced.
		if since := now.Sub(e.loginAt); since < c.o.MinReloginInterval {
			tok := e.tok
			c.mu.Unlock()
			return nil, Outcome{Held: true}, c.tooSoon(now, tok, minValidFor, c.o.MinReloginInterval-since)
		}
	}
	cl, shared := e.call, e.call != nil
	if cl == nil && !c.proven && c.trial != nil {
		// Another key's login is trying the credentials: its answer
		// decides whether this key may try them too.
		trial := c.trial
		c.mu.Unlock()
		if err := c.await(ctx, trial); err != nil {
			return nil, Outcome{}, err
		}
		if KindOf(trial.err) == KindUnavailable {
			// The upstream failed the trial, retries included: the next
			// key would only fail the same way, a whole login later, and
			// the one after it later still. Everyone waiting hears now.
			return nil, Outcome{Shared: true}, trial.err
		}
		return c.get(ctx, k, minValidFor, rechecked)
	}
	if cl == nil {
		cl = c.startLocked(ctx, k, e, false)
	}
	cl.waiters++
	cl.abandoned = false
	c.mu.Unlock()

	out := Outcome{Shared: shared}
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	select {
	case <-cl.done:
	case <-ctx.Done():
		c.mu.Lock()
		cl.waiters--
		cl.abandoned = cl.waiters == 0 && !cl.background
		c.mu.Unlock()
		return nil, out, ctx.Err()
	}
	out.Fleet = cl.fleet
	if cl.err != nil {
		return nil, out, cl.err
	}
	if minValidFor > 0 && !cl.tok.ValidFor(c.o.Now(), minValidFor) {
		return nil, out, c.tooLong(minValidFor, cl.tok.Expiry.Sub(cl.tok.IssuedAt))
	}
	return cl.tok, out, nil
}

// await waits for another key's login to end, counted among the waiters.
func (c *Cache) await(ctx context.Context, cl *call) error {
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	select {
	case <-cl.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tooSoon refuses a login that only minValidFor asks for, inside
// MinReloginInterval of the key's last one: it says what validity can be
// had now, and what after wait.
func (c *Cache) tooSoon(now time.Time, tok *Token, minValidFor, wait time.Duration) *Error {
	return &Error{
		Kind:       KindInvalid,
		Reason:     ReasonMinValidTooLong,
		RetryAfter: wait,
		Message: fmt.Sprintf("provider %q: the cached token is valid for %s more, less than min_valid_for %s, and tokenvend logged in for it less than %s ago (cache.min_relogin_interval): ask for less, or retry in %s for a new token valid for %s",
			c.o.Provider, tok.Expiry.Sub(now).Truncate(time.Second), minValidFor, c.o.MinReloginInterval,
			wait.Round(time.Second), tok.Expiry.Sub(tok.IssuedAt).Round(time.Second)),
	}
}

func (c *Cache) tooLong(minValidFor, lifetime time.Duration) *Error {
	return &Error{
		Kind:    KindInvalid,
		Reason:  ReasonMinValidTooLong,
		Message: fmt.Sprintf("provider %q issues tokens valid for %s; min_valid_for %s cannot be met", c.o.Provider, lifetime.Round(time.Second), minValidFor),
	}
}

// startLocked begins a login (or, with background, a refresh nobody waits
// for) for k. c.mu must be held.
func (c *Cache) startLocked(ctx context.Context, k Key, e *entry, background bool) *call {
	return c.startReportedLocked(ctx, k, e, background, "")
}

// startReportedLocked is startLocked for a login that replaces reported,
// a token an invalidation report refused. c.mu must be held.
func (c *Cache) startReportedLocked(ctx context.Context, k Key, e *entry, background bool, reported string) *call {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.LoginTimeout)
	cl := &call{done: make(chan struct{}), cancel: cancel, background: background, refresh: e.tok != nil, reported: reported}
	e.call = cl
	e.loginAt = c.o.Now()
	if c.hold.err != nil {
		c.hold.probe = cl
	}
	if !c.proven && c.trial == nil {
		c.trial = cl
	}
	go c.run(lctx, k, e, cl, e.tok, e.fence)
	return cl
}

func (c *Cache) run(ctx context.Context, k Key, e *entry, cl *call, prev *Token, prevFence uint64) {
	defer cl.cancel()
	opts := append(c.spanAttrs, trace.WithAttributes(
		attribute.Bool("tokenvend.refresh", prev != nil),
		attribute.Bool("tokenvend.background", cl.background),
	))
	if cl.background {
		// The caller that noticed the refresh point has long returned: the
		// refresh is a trace of its own, linked to that caller's.
		opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.LinkFromContext(ctx)))
	}
	ctx, span := c.o.Tracer.Start(ctx, "tokenvend.login", opts...)
	start := time.Now()
	f := c.fetch(ctx, k, cl, prev, prevFence)
	tok, err := f.tok, f.err
	var fh *fleetHeld
	if !f.fleet && !errors.As(err, &fh) {
		c.o.Metrics.login(ctx, c.o.Provider, time.Since(start), err)
	}
	if err != nil && fh == nil {
		span.SetStatus(codes.Error, safeMessage(err))
		c.o.Log.WarnContext(ctx, "login failed", "provider", c.o.Provider, "kind", c.o.Kind,
			"background", cl.background, "error", err.Error())
	}
	span.End()

	now := c.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.call == cl {
		e.call = nil
	}
	if c.hold.probe == cl {
		c.hold.probe = nil
	}
	if c.trial == cl {
		c.trial = nil
	}
	switch {
	case fh != nil:
		if f.gone && prev != nil && prev.CheckEvery > 0 && e.tok == prev {
			// Another replica's check of this token was rejected and it
			// dropped the fleet's copy: this one is revoked too.
			e.tok, e.refreshAt, e.refreshFailures = nil, time.Time{}, 0
		}
		err = c.fleetHoldLocked(now, fh.hold)
	case err == nil:
		c.proven = true
		e.tok, e.fence = tok, f.fence
		e.refreshAt = c.refreshAt(tok, now)
		e.refreshFailures = 0
		if !tok.Expiry.IsZero() {
			c.lifetime = tok.Expiry.Sub(tok.IssuedAt)
		}
		if c.hold.err != nil || c.hold.strikes > 0 || c.hold.pauses > 0 {
			c.hold = hold{}
			c.notify(false)
		}
	case c.pauseFor(err) > 0:
		// Before the rejection case: a secret that cannot be read is no
		// verdict on the credentials, nor on a revocable token.
		err = c.pauseLocked(now, err)
	case KindOf(err) == KindRejected:
		if prev != nil && prev.CheckEvery > 0 && e.tok == prev {
			// The check of a revocable token was rejected: the token
			// itself is refused now, so it must not be served any more.
			e.tok, e.refreshAt, e.refreshFailures = nil, time.Time{}, 0
		}
		if f.hold != nil && f.hold.Err != nil {
			err = c.fleetHoldLocked(now, *f.hold)
		} else {
			err = c.holdLocked(now, err)
		}
	}
	if err != nil && cl.background && e.tok != nil {
		e.refreshFailures++
		// The shift is capped: after a long outage it would overflow.
		e.refreshAt = now.Add(min(refreshRetryFirst<<min(e.refreshFailures-1, 8), refreshRetryMax))
	}
	cl.tok, cl.err, cl.fleet = tok, err, f.fleet
	close(cl.done)
}

// login asks the source, retrying transient failures with exponential
// backoff and jitter while the login's context allows and someone still
// waits for it.
func (c *Cache) login(ctx context.Context, cl *call, r Request) (*Token, error) {
	wait := c.o.RetryBase
	for attempt := 1; ; attempt++ {
		tok, err := c.src.Token(ctx, r)
		if err == nil && tok == nil {
			err = &Error{Kind: KindInternal, Reason: "INTERNAL", Message: "provider returned no token"}
		}
		if err == nil {
			now := c.o.Now()
			if tok.IssuedAt.IsZero() {
				tok.IssuedAt = now
			}
			if err = c.arrived(tok, now); err == nil {
				return tok, nil
			}
		}
		err = classify(ctx, err)
		c.mu.Lock()
		abandoned := cl.abandoned
		c.mu.Unlock()
		if KindOf(err) != KindUnavailable || attempt >= c.o.LoginAttempts || abandoned {
			return nil, err
		}
		d := wait/2 + rand.N(wait/2+1)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return nil, err
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		wait *= 2
	}
}

// Bounds on the times a token may carry. Outside them a time is garbage
// from the upstream: google.protobuf.Timestamp ends with the year 9999, so
// such a time could not even be sent to a caller, and no upstream issues
// tokens for a decade.
var earliestTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

const maxLifetime = 10 * 365 * 24 * time.Hour

// errUnusable is the cause of every failure of arrived: the upstream did
// log in, so asking again at once would cost another login for the same
// answer, and logins pause instead (see pauseFor).
var errUnusable = errors.New("the upstream logged in but its token cannot be used")

// arrived checks a Source's token where it enters the cache: its times
// must be sane (garbage otherwise, UPSTREAM_UNAVAILABLE), and it must be
// good for MinValid (TOKEN_EXPIRED_ON_ARRIVAL), since a token that is not
// would never be handed out again and every later call would log in. Both
// are transient (KindUnavailable): retried with backoff, never cached.
func (c *Cache) arrived(tok *Token, now time.Time) error {
	latest := now.Add(maxLifetime)
	if tok.IssuedAt.Before(earliestTime) || tok.IssuedAt.After(latest) {
		return Unavailable(fmt.Sprintf("the upstream's answer has an absurd issue time (%s)", year(tok.IssuedAt)), errUnusable)
	}
	switch left := tok.Expiry.Sub(now); {
	case tok.Expiry.IsZero():
		return nil
	case tok.Expiry.Before(earliestTime) || tok.Expiry.After(latest):
		return Unavailable(fmt.Sprintf("the upstream's token has an absurd expiry (%s)", year(tok.Expiry)), errUnusable)
	case left <= 0:
		return expiredOnArrival(fmt.Sprintf("had expired %s before it arrived", (-left).Round(time.Second)))
	case left <= c.o.MinValid:
		return expiredOnArrival(fmt.Sprintf("was valid for only %s when it arrived, no more than cache.min_valid (%s)",
			left.Round(time.Second), c.o.MinValid))
	}
	return nil
}

func expiredOnArrival(what string) *Error {
	return &Error{
		Kind: KindUnavailable, Reason: ReasonTokenExpiredOnArrival, Err: errUnusable,
		Message: "the upstream's token " + what + ": the upstream's clock or this host's is likely wrong (see \"Clock skew\" in the README); tokenvend will try again",
	}
}

// year names an absurd time briefly: the year is what is wrong with it.
func year(t time.Time) string { return fmt.Sprintf("year %d", t.Year()) }

// classify makes sure every error leaving the cache is an *Error.
func classify(ctx context.Context, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if ctx.Err() != nil {
		return Unavailable("the upstream did not answer in time", err)
	}
	return Unavailable("the upstream login failed", err)
}

// refreshAt is when a background refresh of tok should start: zero for a
// token that never expires and is never checked.
func (c *Cache) refreshAt(tok *Token, now time.Time) time.Time {
	issued := tok.IssuedAt
	if issued.IsZero() || issued.After(now) {
		issued = now
	}
	var at time.Time
	if !tok.Expiry.IsZero() {
		// Callers get the token until MinValid before it expires. The
		// refresh starts RefreshBefore before expiry, but not before the
		// token has been handed out for half the time it can be: so the
		// refresh has min(RefreshBefore-MinValid, half that time) to
		// finish before anyone must wait, which changes smoothly with the
		// lifetime, and a short token is not refreshed the moment it
		// arrives.
		handout := max(tok.Expiry.Sub(issued)-c.o.MinValid, 0)
		at = tok.Expiry.Add(-c.o.RefreshBefore)
		if half := issued.Add(handout / 2); half.After(at) {
			at = half
		}
	}
	if tok.CheckEvery > 0 {
		if check := issued.Add(tok.CheckEvery); at.IsZero() || check.Before(at) {
			at = check
		}
	}
	return at
}

// pauseFor is how long logins pause after err, or 0 when err calls for no
// pause (see hold).
func (c *Cache) pauseFor(err error) time.Duration {
	var e *Error
	if !errors.As(err, &e) {
		return 0
	}
	switch {
	case e.Reason == ReasonSecretUnreadable:
		return secretRetry
	case errors.Is(err, errUnusable):
		// The shift is capped: after a long outage it would overflow.
		return min(refreshRetryFirst<<min(c.hold.pauses, 8), refreshRetryMax)
	default:
		return 0
	}
}

// pauseLocked pauses logins after err (see hold) and returns the error
// callers get. A rejection hold still running is not cut short.
func (c *Cache) pauseLocked(now time.Time, err error) error {
	var e *Error
	errors.As(err, &e)
	until := now.Add(c.pauseFor(err))
	c.hold.pauses++
	wasHeld := c.hold.err != nil
	c.hold.err = e
	if until.After(c.hold.until) {
		c.hold.until = until
	}
	if !wasHeld {
		c.notify(true)
	}
	return c.heldLocked(now, nil)
}

// holdLocked remembers a rejection and returns the error callers get.
func (c *Cache) holdLocked(now time.Time, err error) error {
	var e *Error
	errors.As(err, &e)
	c.hold.strikes++
	d := c.o.RejectBackoff
	for i := 1; i < c.hold.strikes && d < c.o.MaxRejectBackoff; i++ {
		d *= 2
	}
	d = max(min(d, c.o.MaxRejectBackoff), e.Hold)
	wasHeld := c.hold.err != nil
	c.hold.err, c.hold.until = e, now.Add(d)
	if !wasHeld {
		c.notify(true)
	}
	return c.heldLocked(now, nil)
}

// fleetHoldLocked takes the fleet's hold h (another replica's rejection,
// or this one's as the budget counted it) as this cache's, so callers here
// are answered from memory until it ends, and returns the error callers
// get. A hold whose backoff has lapsed while another replica probes is
// kept for a moment (fleetBusyHold): the probe's answer is for everyone.
func (c *Cache) fleetHoldLocked(now time.Time, h Hold) error {
	wasHeld := c.hold.err != nil
	c.hold.err, c.hold.strikes, c.hold.until = h.Err, h.Strikes, h.Until
	if !now.Before(c.hold.until) {
		c.hold.until = now.Add(fleetBusyHold)
	}
	if !wasHeld {
		c.notify(true)
	}
	return c.heldLocked(now, nil)
}

// fleetBusyHold is how long callers are answered from a lapsed hold while
// another replica's probe runs, before this replica asks the budget again.
const fleetBusyHold = time.Second

// heldLocked returns the error for callers of entry e (nil: any) while
// logins are held: during the backoff, and after it while another key's
// login probes whether the credentials are still rejected. It returns nil
// when e may log in.
func (c *Cache) heldLocked(now time.Time, e *entry) *Error {
	h := c.hold
	switch {
	case h.err == nil:
		return nil
	case now.Before(h.until):
		left := h.until.Sub(now)
		held := *h.err
		held.RetryAfter = left
		held.Message = fmt.Sprintf("%s (tokenvend will not try this login again for %s)", held.Message, left.Round(time.Second))
		return &held
	case h.probe != nil && (e == nil || e.call != h.probe):
		held := *h.err
		held.Message += " (tokenvend is trying this login again now)"
		return &held
	default:
		return nil
	}
}

// notify tells OnHold, in order: it runs with c.mu held.
func (c *Cache) notify(held bool) {
	if c.o.OnHold != nil {
		c.o.OnHold(held)
	}
}

// State is a snapshot of a Cache for listings and health.
type State struct {
	// Valid is true when some cached token has at least MinValid left.
	Valid bool
	// Held is the rejection (or the pause) logins are held for, nil when
	// none.
	Held *Error
}

// State reports whether the cache holds a usable token and whether logins
// are held.
func (c *Cache) State() State {
	now := c.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := State{Held: c.heldLocked(now, nil)}
	for _, e := range c.entries {
		if e.tok != nil && e.tok.ValidFor(now, c.o.MinValid) {
			s.Valid = true
			break
		}
	}
	return s
}

// safeMessage is what may go into a span status: the caller-facing
// message, never the cause.
func safeMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
