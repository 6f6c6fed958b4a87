package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/tokenvend/tokenvend/internal/token"
)

// Lazy is a Client that a replica may start without: Connect returns at
// once, and connects in the background until Redis answers, so a replica
// that starts during an outage of the store serves (alone) instead of
// crash-looping. It then watches the connection, for the store_up gauge
// and a log line on each change.
type Lazy struct {
	o      Options
	onUp   func()
	c      atomic.Pointer[Client]
	up     atomic.Bool
	stop   context.CancelFunc
	done   chan struct{}
	closed sync.Once

	mu sync.Mutex
	// stores are the providers' stores handed out, held weakly: a reload
	// replaces them.
	stores []weak.Pointer[LazyStore]
}

// ErrNotConnected is every store call's answer until Redis was reached
// once.
var ErrNotConnected = errors.New("redisstore: not connected to Redis yet")

// Lazy's timings: how often it tries to connect, and pings once connected.
const (
	connectRetryFirst = 500 * time.Millisecond
	connectRetryMax   = 30 * time.Second
	pingEvery         = time.Second
	pingTimeout       = 500 * time.Millisecond
)

// Connect connects to Redis with o: once at once, so that a replica
// starting beside a healthy Redis joins the fleet before it serves, and
// then, if that failed, in the background until it succeeds. onUp, when
// set, is called each time Redis answers again after it did not, so that
// the replica can write its tokens back.
func Connect(o Options, onUp func()) *Lazy {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lazy{o: o, onUp: onUp, stop: cancel, done: make(chan struct{})}
	if l.o.Log == nil {
		l.o.Log = slog.New(slog.DiscardHandler)
	}
	if c, err := New(l.o); err == nil {
		l.c.Store(c)
		l.up.Store(true)
	} else {
		l.o.Log.Warn("the shared store cannot be reached: serving alone until it can", "error", err.Error())
	}
	go l.run(ctx)
	return l
}

// run connects, then pings, until ctx ends.
func (l *Lazy) run(ctx context.Context) {
	defer close(l.done)
	wait := connectRetryFirst
	for l.c.Load() == nil {
		if !sleepCtx(ctx, wait) {
			return
		}
		wait = min(wait*2, connectRetryMax)
		if c, err := New(l.o); err == nil {
			l.c.Store(c)
		}
	}
	for {
		c := l.c.Load()
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		err := c.rc.Do(pctx, c.rc.B().Ping().Build()).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		l.set(err == nil, err)
		if !sleepCtx(ctx, pingEvery) {
			return
		}
	}
}

// set records whether Redis answers, logging each change.
func (l *Lazy) set(up bool, err error) {
	if l.up.Swap(up) == up {
		return
	}
	if up {
		l.o.Log.Info("the shared store answers: replicas act as one broker")
		// Whatever changed meanwhile went unheard, and tokens logged in
		// alone were never read from Redis, so Redis would not tell of
		// their changes either: every Cache checks its copies once.
		if c := l.c.Load(); c != nil {
			for _, st := range l.liveStores() {
				_, _ = st.get() // registers its Cache's watcher
			}
			c.invalidated(nil)
		}
		if l.onUp != nil {
			l.onUp()
		}
		return
	}
	l.o.Log.Warn("the shared store does not answer: serving valid tokens, logging in alone", "error", err.Error())
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Up reports whether Redis answered the last ping.
func (l *Lazy) Up() bool { return l.up.Load() }

// Close stops connecting and closes the connection.
func (l *Lazy) Close() {
	l.closed.Do(func() {
		l.stop()
		<-l.done
		if c := l.c.Load(); c != nil {
			c.Close()
		}
	})
}

// Provider returns one provider's store, which answers ErrNotConnected
// until Redis has been reached.
func (l *Lazy) Provider(name string) *LazyStore {
	s := &LazyStore{l: l, name: name}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stores = append(l.stores, weak.Make(s))
	return s
}

// liveStores returns the stores still in use, forgetting the others.
func (l *Lazy) liveStores() []*LazyStore {
	l.mu.Lock()
	defer l.mu.Unlock()
	var live []*LazyStore
	kept := l.stores[:0]
	for _, p := range l.stores {
		if s := p.Value(); s != nil {
			live = append(live, s)
			kept = append(kept, p)
		}
	}
	clear(l.stores[len(kept):])
	l.stores = kept
	return live
}

// LazyStore is a Store once its Lazy is connected.
type LazyStore struct {
	l    *Lazy
	name string
	s    atomic.Pointer[Store]
	w    atomic.Pointer[token.Watcher]
}

var (
	_ token.Store     = (*LazyStore)(nil)
	_ token.Failures  = (*LazyStore)(nil)
	_ token.Steps     = (*LazyStore)(nil)
	_ token.Watchable = (*LazyStore)(nil)
)

func (s *LazyStore) get() (*Store, error) {
	if st := s.s.Load(); st != nil {
		return st, nil
	}
	c := s.l.c.Load()
	if c == nil {
		return nil, ErrNotConnected
	}
	st := c.Provider(s.name)
	if w := s.w.Load(); w != nil {
		// Before the first read: Redis tells of changes to keys read.
		st.Watch(w)
	}
	s.s.Store(st)
	return st, nil
}

// Watch is Store.Watch, from when Redis is reached. Only the Cache holds
// its LazyStore, so keeping w here keeps nothing alive.
func (s *LazyStore) Watch(w *token.Watcher) {
	s.w.Store(w)
	if st := s.s.Load(); st != nil {
		st.Watch(w)
	}
}

// Load is Store.Load once connected.
func (s *LazyStore) Load(ctx context.Context, k token.Key) (token.Stored, error) {
	st, err := s.get()
	if err != nil {
		return token.Stored{}, err
	}
	return st.Load(ctx, k)
}

// Save is Store.Save once connected.
func (s *LazyStore) Save(ctx context.Context, k token.Key, v token.Stored) error {
	st, err := s.get()
	if err != nil {
		return err
	}
	return st.Save(ctx, k, v)
}

// Acquire is Store.Acquire once connected.
func (s *LazyStore) Acquire(ctx context.Context, k token.Key) (*token.Lease, error) {
	st, err := s.get()
	if err != nil {
		return nil, err
	}
	return st.Acquire(ctx, k)
}

// Wait is Store.Wait once connected.
func (s *LazyStore) Wait(ctx context.Context, k token.Key, seen uint64) error {
	st, err := s.get()
	if err != nil {
		return err
	}
	return st.Wait(ctx, k, seen)
}

// Admit is Store.Admit once connected.
func (s *LazyStore) Admit(ctx context.Context, a token.Attempt) (token.Admission, error) {
	st, err := s.get()
	if err != nil {
		return token.Admission{}, err
	}
	return st.Admit(ctx, a)
}

// Settle is Store.Settle once connected.
func (s *LazyStore) Settle(ctx context.Context, v token.Settlement) (token.Hold, error) {
	st, err := s.get()
	if err != nil {
		return token.Hold{}, err
	}
	return st.Settle(ctx, v)
}

// ChargeFailure is Store.ChargeFailure once connected.
func (s *LazyStore) ChargeFailure(ctx context.Context, creds string, max int) (int, bool, error) {
	st, err := s.get()
	if err != nil {
		return 0, false, err
	}
	return st.ChargeFailure(ctx, creds, max)
}

// RefundFailure is Store.RefundFailure once connected.
func (s *LazyStore) RefundFailure(ctx context.Context, creds string) error {
	st, err := s.get()
	if err != nil {
		return err
	}
	return st.RefundFailure(ctx, creds)
}

// ClearFailures is Store.ClearFailures once connected.
func (s *LazyStore) ClearFailures(ctx context.Context, creds string) error {
	st, err := s.get()
	if err != nil {
		return err
	}
	return st.ClearFailures(ctx, creds)
}

// ReserveStep is Store.ReserveStep once connected.
func (s *LazyStore) ReserveStep(ctx context.Context, step int64, ttl time.Duration) (bool, error) {
	st, err := s.get()
	if err != nil {
		return false, err
	}
	return st.ReserveStep(ctx, step, ttl)
}
