package token

import (
	"slices"
	"time"
)

// What a config reload needs of a Cache: a Cache's options are fixed when
// it is built (they are read without its lock on the hot path), so a
// reload that changes them builds a new Cache, which adopts the old one's
// state, and closes the old one.

// Adopt takes over old's tokens and rejection hold, for c built to replace
// old with other options but the same Source and credentials: an
// unchanged provider keeps its tokens across a change of cache settings,
// and credentials that were rejected stay held. Each token's refresh is
// rescheduled under c's options. Logins in flight in old are not taken
// over: they finish for the callers waiting on them, and their tokens stay
// in old. c must not be in use yet.
func (c *Cache) Adopt(old *Cache) {
	now := c.o.Now()
	old.mu.Lock()
	defer old.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range old.entries {
		if e.tok == nil || !e.tok.ValidFor(now, 0) {
			continue
		}
		ne := *e // every field the entry remembers about its key
		ne.call, ne.refreshFailures = nil, 0
		ne.refreshAt = c.refreshAt(e.tok, now)
		c.entries[k] = &ne
	}
	c.hold = old.hold
	c.hold.probe = nil
	c.proven, c.lifetime = old.proven, old.lifetime
	for k, r := range old.reports {
		if c.reports == nil {
			c.reports = map[Key]*reports{}
		}
		c.reports[k] = &reports{at: r.at, interval: r.interval, doubled: r.doubled}
	}
}

// Close forgets every token c holds and takes c out of the metrics, for a
// Cache a reload no longer serves (its provider was removed, or another
// Cache adopted it). A login still in flight finishes for the callers
// waiting on it, but its token is not kept.
func (c *Cache) Close() {
	c.mu.Lock()
	for _, e := range c.entries {
		// The entries themselves stay: a Keep loop or a Get in flight may
		// still look its key up.
		e.tok, e.refreshAt, e.refreshFailures = nil, time.Time{}, 0
	}
	c.reports = nil
	c.mu.Unlock()
	c.o.Metrics.remove(c)
}

// remove takes c out of the metrics callback.
func (m *Metrics) remove(c *Cache) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.caches = slices.DeleteFunc(m.caches, func(x *Cache) bool { return x == c })
}
