package token

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// MemoryStore is the Store of one process: the default when no shared
// store is configured, and the reference behaviour that a shared store
// reproduces for a fleet. It lives beside the Cache, rather than in a
// package of its own, so that a Cache always has a store to talk to
// without its constructor importing one. It also counts ibanera's failed
// logins and reserves TOTP steps, for that one process.
type MemoryStore struct {
	now func() time.Time

	mu     sync.Mutex
	keys   map[Key]*memKey
	hold   Hold
	slot   string // the owner of the exclusive slot, "" when free
	slotTo time.Time
	fails  struct {
		creds string
		n     int
	}
	steps map[int64]time.Time // reserved step -> end of its reservation
	// watchers are told of every Save, as Redis tells its replicas.
	watchers []*Watcher
}

// memKey is one key's token and lease.
type memKey struct {
	tok    Stored
	fence  uint64 // of the last lease taken
	leased bool
	// changed is closed, and replaced, whenever the token or the lease
	// changes: it wakes Wait.
	changed chan struct{}
}

// NewMemoryStore returns an empty MemoryStore on the clock now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, keys: map[Key]*memKey{}, steps: map[int64]time.Time{}}
}

// key returns k's state, created on first use. m.mu must be held.
func (m *MemoryStore) key(k Key) *memKey {
	e := m.keys[k]
	if e == nil {
		e = &memKey{changed: make(chan struct{})}
		m.keys[k] = e
	}
	return e
}

func (e *memKey) signal() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// Load returns k's token, a miss once it has expired.
func (m *MemoryStore) Load(_ context.Context, k Key) (Stored, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loadLocked(m.keys[k]), nil
}

// loadLocked returns e's token unless it has expired. m.mu must be held.
func (m *MemoryStore) loadLocked(e *memKey) Stored {
	if e == nil || e.tok.Token == nil {
		return Stored{}
	}
	if t := e.tok.Token; !t.Expiry.IsZero() && !m.now().Before(t.Expiry) {
		return Stored{}
	}
	return e.tok
}

// Save stores s for k unless k's token has a newer fence.
func (m *MemoryStore) Save(_ context.Context, k Key, s Stored) error {
	if s.Token == nil {
		return errors.New("token: Save of no token")
	}
	m.mu.Lock()
	e := m.key(k)
	if e.tok.Token != nil && e.tok.Fence > s.Fence {
		m.mu.Unlock()
		return ErrFenced
	}
	e.tok = s
	e.signal()
	ws := m.watchers
	m.mu.Unlock()
	for _, w := range ws {
		w.Changed(k)
	}
	return nil
}

// Watch tells w of every Save from now on, the saver's own included.
func (m *MemoryStore) Watch(w *Watcher) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watchers = append(slices.Clip(m.watchers), w)
}

// Acquire takes k's lease, nil while it is held. In one process a lease
// is never lost: it ends when released or when ctx ends.
func (m *MemoryStore) Acquire(ctx context.Context, k Key) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.key(k)
	if e.leased {
		return nil, nil
	}
	e.fence = max(e.fence, e.tok.Fence) + 1
	e.leased = true
	lctx, cancel := context.WithCancel(ctx)
	var once sync.Once
	release := func() {
		once.Do(func() {
			m.mu.Lock()
			e.leased = false
			e.signal()
			m.mu.Unlock()
			cancel()
		})
	}
	context.AfterFunc(lctx, release)
	return NewLease(lctx, e.fence, m.loadLocked(e), release), nil
}

// Wait returns when k's token has a fence other than seen or its lease is
// free.
func (m *MemoryStore) Wait(ctx context.Context, k Key, seen uint64) error {
	for {
		m.mu.Lock()
		e := m.key(k)
		if e.tok.Fence != seen || !e.leased {
			m.mu.Unlock()
			return nil
		}
		ch := e.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Admit admits an attempt unless a hold stands or the slot it needs is
// taken.
func (m *MemoryStore) Admit(_ context.Context, a Attempt) (Admission, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slot != "" && !a.Now.Before(m.slotTo) {
		m.slot = "" // its owner never settled
	}
	h := m.hold
	switch {
	case h.Err != nil && a.Now.Before(h.Until):
		return Admission{Hold: h}, nil
	case !a.Exclusive && h.Err == nil:
		return Admission{OK: true}, nil
	case m.slot != "":
		h.Busy = true
		return Admission{Hold: h}, nil
	}
	m.slot, m.slotTo = a.Owner, a.Now.Add(a.TTL)
	return Admission{OK: true}, nil
}

// Settle records an attempt's answer.
func (m *MemoryStore) Settle(_ context.Context, s Settlement) (Hold, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slot == s.Owner {
		m.slot = ""
	}
	var e *Error
	switch {
	case s.Err == nil:
		m.hold = Hold{}
	case errors.As(s.Err, &e) && e.Kind == KindRejected:
		m.hold.Strikes++
		m.hold.Err = heldError(e)
		m.hold.Until = s.Now.Add(HoldFor(m.hold.Strikes, s.Backoff, s.MaxBackoff, e.Hold))
	}
	return m.hold, nil
}

// heldError is what a hold keeps of a rejection: what callers may see,
// not its cause.
func heldError(e *Error) *Error {
	return &Error{Kind: e.Kind, Reason: e.Reason, Message: e.Message, Upstream: e.Upstream, Hold: e.Hold}
}

// ChargeFailure counts a login with creds as failed unless max are
// counted.
func (m *MemoryStore) ChargeFailure(_ context.Context, creds string, max int) (int, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := &m.fails
	if f.creds != creds {
		f.creds, f.n = creds, 0
	}
	if f.n >= max {
		return f.n, false, nil
	}
	f.n++
	return f.n, true, nil
}

// RefundFailure takes back one charge for creds.
func (m *MemoryStore) RefundFailure(_ context.Context, creds string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fails.creds == creds && m.fails.n > 0 {
		m.fails.n--
	}
	return nil
}

// ClearFailures resets the count for creds.
func (m *MemoryStore) ClearFailures(_ context.Context, creds string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fails.creds == creds {
		m.fails.n = 0
	}
	return nil
}

// ReserveStep reserves a TOTP step for ttl.
func (m *MemoryStore) ReserveStep(_ context.Context, step int64, ttl time.Duration) (bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for s, end := range m.steps {
		if !now.Before(end) {
			delete(m.steps, s)
		}
	}
	if _, taken := m.steps[step]; taken {
		return false, nil
	}
	m.steps[step] = now.Add(ttl)
	return true, nil
}

var (
	_ Store     = (*MemoryStore)(nil)
	_ Failures  = (*MemoryStore)(nil)
	_ Steps     = (*MemoryStore)(nil)
	_ Watchable = (*MemoryStore)(nil)
)
