package token

import (
	"context"
	"errors"
	"time"
)

// Store is what the replicas of a Cache share. The Cache decides (hit,
// share, hold, refresh); a store only keeps, atomically. One Store serves
// one provider, so keys are the Cache's own. MemoryStore, the default, is
// one process's state and the reference behaviour; package redisstore
// shares it through Redis so that a fleet acts as one broker.
type Store interface {
	Tokens
	Leases
	Budget
}

// Stored is a token as a store keeps it, with the fence of the lease it
// was written under.
type Stored struct {
	// Token is nil when nothing is stored.
	Token *Token
	// Fence orders writes: a token is never replaced by one written under
	// an older lease.
	Fence uint64
}

// ErrFenced is Save's refusal: the stored token was written under a newer
// lease, so the writer lost its lease and its token must be dropped.
var ErrFenced = errors.New("token: the stored token was written under a newer lease")

// Tokens keeps the provider's tokens, each until it expires.
type Tokens interface {
	// Load returns the token stored for k: a zero Stored when there is
	// none, or when it cannot be opened (sealed by a key no longer
	// configured, or damaged), which is a miss, never an error. A shared
	// store may answer from a local copy that lags another replica's
	// write by the time its invalidation takes to arrive; Lease.Stored
	// does not.
	Load(ctx context.Context, k Key) (Stored, error)
	// Save stores s for k until s.Token expires. It stores nothing and
	// returns ErrFenced when the token stored for k has a newer fence.
	Save(ctx context.Context, k Key, s Stored) error
}

// Leases decide which replica logs in for a key: the holder of its lease.
type Leases interface {
	// Acquire takes k's lease, or returns nil (and no error) while
	// another holder has it. The lease is renewed while held; it ends
	// when released, when ctx ends, or when it is lost (a renewal
	// failed past its time to live), and its Context ends with it.
	Acquire(ctx context.Context, k Key) (*Lease, error)
	// Wait returns when the token stored for k has a fence other than
	// seen, or when k's lease is free (released, or its holder gone),
	// or when ctx ends (with its error). It is woken by the store (an
	// invalidation, a release), not by polling.
	Wait(ctx context.Context, k Key, seen uint64) error
}

// Lease is a held lease on one key. The login for the key runs on its
// Context, which ends the moment the lease is lost, and writes its token
// with its Fence.
type Lease struct {
	// Fence is larger than that of every earlier lease on the key.
	Fence uint64
	// Stored is the token stored for the key when the lease was taken,
	// read atomically with it: when another replica has just written a
	// good one, the holder uses it rather than logging in again.
	Stored  Stored
	ctx     context.Context
	release func()
}

// NewLease is for stores: a lease with fence and the token stored with
// it, whose context ends when it is lost, and release, which gives it up
// (and must end ctx).
func NewLease(ctx context.Context, fence uint64, stored Stored, release func()) *Lease {
	return &Lease{Fence: fence, Stored: stored, ctx: ctx, release: release}
}

// Context ends when the lease is released or lost.
func (l *Lease) Context() context.Context { return l.ctx }

// Release gives the lease up. It may be called more than once.
func (l *Lease) Release() { l.release() }

// Budget answers "may I send the provider's credentials now?" for every
// replica at once, so a wrong password costs one upstream attempt per
// backoff period for the fleet, and even two replicas that both believe
// they hold a key's lease cannot send more than the budget allows.
type Budget interface {
	// Admit decides, atomically and before the attempt is made, whether
	// a login may send the credentials: never while a rejection's hold
	// stands; once it has lapsed, or for an Exclusive attempt, only one
	// attempt at a time for the provider (the probe, or the trial of
	// unproven credentials), counted as it is admitted.
	Admit(ctx context.Context, a Attempt) (Admission, error)
	// Settle records the answer of an admitted attempt and frees its
	// slot: a success clears the hold, a rejection holds logins for a
	// backoff that doubles with each strike, anything else changes
	// nothing but the slot. It returns the hold now standing.
	Settle(ctx context.Context, s Settlement) (Hold, error)
}

// Attempt is a login that asks the Budget to send the credentials.
type Attempt struct {
	// Owner names the attempt (unique per login): only it settles its
	// slot.
	Owner string
	// Exclusive asks for the provider's one slot even without a hold:
	// the trial of credentials not yet proven.
	Exclusive bool
	// Now is the Cache's clock.
	Now time.Time
	// TTL frees an exclusive slot whose owner never settles (it died):
	// the login timeout.
	TTL time.Duration
}

// Admission is the Budget's answer to an Attempt.
type Admission struct {
	// OK: the attempt may be made, and must then be settled.
	OK bool
	// Hold, when not OK, is why not.
	Hold Hold
}

// Hold is the provider-wide memory of a rejected login.
type Hold struct {
	// Err is the rejection held (Message safe for callers), nil when
	// logins are not held.
	Err *Error
	// Until is when the backoff ends.
	Until time.Time
	// Strikes counts the rejections in a row.
	Strikes int
	// Busy: another attempt (a probe, or the trial) holds the slot.
	Busy bool
}

// Settlement is the answer to an admitted attempt.
type Settlement struct {
	Owner string
	Now   time.Time
	// Err is the login's error: nil for a success; a KindRejected *Error
	// adds a strike and holds logins for Backoff doubled per earlier
	// strike, at most MaxBackoff, at least the Error's own Hold.
	Err                 error
	Backoff, MaxBackoff time.Duration
}

// HoldFor is how long a hold with strikes rejections in a row lasts:
// backoff doubled per strike after the first, at most limit, and at least
// floor (what the upstream asked for).
func HoldFor(strikes int, backoff, limit, floor time.Duration) time.Duration {
	d := backoff
	for i := 1; i < strikes && d < limit; i++ {
		d *= 2
	}
	return max(min(d, limit), floor)
}

// Failures counts, for a lockout-sensitive scheme (ibanera), the logins
// in a row that the upstream refused with the same credentials. Each
// login is charged BEFORE it is sent, so however many replicas try at
// once, no more than max can be in flight or failed.
type Failures interface {
	// ChargeFailure counts a login with the credentials creds (a
	// fingerprint, never the credentials themselves) as failed, unless
	// max are already counted for them: then ok is false, nothing is
	// counted and the login must not be sent. Other credentials than
	// the last counted start a new count.
	ChargeFailure(ctx context.Context, creds string, max int) (n int, ok bool, err error)
	// RefundFailure takes back one charge: the login was not sent, or
	// was answered with something other than a refusal of the
	// credentials.
	RefundFailure(ctx context.Context, creds string) error
	// ClearFailures resets the count after a successful login.
	ClearFailures(ctx context.Context, creds string) error
}

// Steps hands out TOTP steps (RFC 6238 §5.2: a code is used once), so no
// two logins anywhere use the same step.
type Steps interface {
	// ReserveStep reserves step for one login: false when another login
	// already has it. A reservation lasts ttl (two steps).
	ReserveStep(ctx context.Context, step int64, ttl time.Duration) (bool, error)
}

// Watcher is what a shared store tells a Cache when the tokens it keeps
// change under it, so that a replica's local copies follow the fleet's
// without a store call on the hot path.
type Watcher struct {
	// Changed: the token stored for k was written or removed (perhaps by
	// another replica) since this replica last read it.
	Changed func(k Key)
	// Lost: changes may have been missed (the connection to the store
	// was lost, or the store was flushed), so every local copy must be
	// checked once.
	Lost func()
}

// Watchable is a Store that tells a Cache when its tokens change. A Cache
// whose store is Watchable reads a key's stored token again after its
// Changed, and every key's after Lost, before it serves its own copy.
type Watchable interface {
	// Watch registers w. A store may hold w weakly, so that a Cache no
	// longer used is not kept alive by it: the Cache keeps w. The funcs
	// run on the store's reader: they must be quick and call no store.
	Watch(w *Watcher)
}
