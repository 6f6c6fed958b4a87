package token

import (
	"context"
	"time"
)

// A replica serves its local copy of a token without asking the store (a
// hit reads nothing shared), so when another replica replaces or removes
// the stored token, the store says so (Watchable) and the Cache marks the
// local copy: the next Get of the key reads the stored token once, before
// serving, and takes it up when it is newer. A removed one (reported
// refused, or its check rejected) is dropped, so that Get waits on the
// fleet's one login for the key.

// recheck says why a local copy must be read again before it is served.
type recheck uint8

const (
	recheckNone recheck = iota
	// recheckLost: invalidations may have been missed (a reconnect). A
	// store found empty then (Redis restarted without its data) says
	// nothing about the token: the local copy is kept (and WriteBack
	// stores it again).
	recheckLost
	// recheckChanged: the stored token was written or removed. Found
	// empty, it was removed: the local copy is dropped.
	recheckChanged
)

// recheckRetry is how long Gets serve their marked copies without a store
// call after a recheck failed (the store is down): a dead Redis must not
// cost every Get a storeTimeout.
const recheckRetry = time.Second

// watch registers the Cache with its store when the store tells of
// changes.
func (c *Cache) watch() {
	w, ok := c.o.Store.(Watchable)
	if !ok {
		return
	}
	c.watcher = &Watcher{Changed: c.changed, Lost: c.lost}
	w.Watch(c.watcher)
}

// changed marks k's local copy: the stored token changed. A login in
// flight is marked too: its token may predate the change, and the store
// tracks the key again only once it is read again.
func (c *Cache) changed(k Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil || (e.tok == nil && e.call == nil) {
		return
	}
	e.changes++
	e.recheck = recheckChanged
}

// lost marks every local copy: changes may have been missed.
func (c *Cache) lost() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.tok == nil && e.call == nil {
			continue
		}
		e.changes++
		e.recheck = max(e.recheck, recheckLost)
	}
}

// recheckDue reports whether a Get that found e's token must read the
// stored one first. c.mu must be held.
func (c *Cache) recheckDue(e *entry) bool {
	return e.recheck != recheckNone && e.call == nil && !time.Now().Before(c.recheckPause)
}

// recheck reads k's stored token for a marked local copy, once for all
// the Gets that find it marked, and replaces the copy with a newer stored
// one, drops it when it was removed, or keeps it. It reports whether the
// copy was replaced; its error is only ctx's.
func (c *Cache) recheck(ctx context.Context, k Key, e *entry) (bool, error) {
	c.mu.Lock()
	if ch := e.rechecking; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if e.recheck == recheckNone || e.tok == nil {
		c.mu.Unlock()
		return false, nil
	}
	done := make(chan struct{})
	e.rechecking = done
	why, changes, local, fence := e.recheck, e.changes, e.tok, e.fence
	c.mu.Unlock()

	// Not the caller's context: a caller giving up is no store failure.
	st, err := c.storeLoad(context.WithoutCancel(ctx), k)

	now := c.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e.rechecking = nil
	close(done)
	switch {
	case err != nil:
		// Serve the local copy, marked still, and try again later.
		c.recheckPause = time.Now().Add(recheckRetry)
		return false, nil
	case e.tok != local:
		// A login replaced the copy meanwhile.
		return false, nil
	}
	replaced := false
	good := st.Token != nil && st.Token.ValidFor(now, c.o.MinValid)
	switch {
	case good && st.Fence > fence:
		// Another replica's newer token (a refresh, or the login after a
		// report).
		e.tok, e.fence = st.Token, st.Fence
		e.refreshAt, e.refreshFailures = c.refreshAt(st.Token, now), 0
		replaced = true
		c.o.Metrics.store(ctx, c.o.Provider, "replaced")
	case good || why == recheckLost:
		// This copy, or an older one: this copy stays.
	default:
		// Removed: a report or a rejected check on another replica. No
		// replica serves it any more.
		e.tok, e.refreshAt, e.refreshFailures = nil, time.Time{}, 0
		c.o.Metrics.store(ctx, c.o.Provider, "dropped")
	}
	if e.changes == changes {
		e.recheck = recheckNone
	}
	return replaced, nil
}
