package token

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"time"
)

// Invalidation says what a report of a refused token did.
type Invalidation string

// The results of Cache.Invalidate, used as metric labels and in the audit
// line.
const (
	// Invalidated: it was the current token; it was dropped and a login
	// started.
	Invalidated Invalidation = "invalidated"
	// NotCurrent: no cached token of the key is the reported one (an
	// older token, a made-up one, another key's): nothing changed.
	NotCurrent Invalidation = "not_current"
	// Limited: a report already started a login for the key within the
	// interval; the current token keeps being served.
	Limited Invalidation = "rate_limited"
	// Held: logins are held after a rejection; a new login would only
	// repeat it.
	Held Invalidation = "held"
)

// reports is the memory of invalidation reports for one key: when one last
// started a login, the interval in force, and that login.
type reports struct {
	at       time.Time
	interval time.Duration
	call     *call
	doubled  bool // the interval doubled for call's token already
}

// Invalidate handles a report that the upstream refused accessToken, a
// token of k. Only the current cached token counts, compared in constant
// time on a hash. Its first report drops it and starts one login, which
// every Get of k waits on. At most one report-started login per key per
// Options.MinReloginInterval: a report inside it changes nothing. When the token
// of a report-started login is itself reported within the interval, the
// interval doubles (up to MaxRejectBackoff); a quiet interval restores it.
func (c *Cache) Invalidate(ctx context.Context, k Key, accessToken string) Invalidation {
	reported := sha256.Sum256([]byte(accessToken))
	now := c.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil || e.tok == nil {
		return NotCurrent
	}
	current := sha256.Sum256([]byte(e.tok.AccessToken))
	if subtle.ConstantTimeCompare(reported[:], current[:]) != 1 {
		return NotCurrent
	}
	if c.reports == nil {
		c.reports = map[Key]*reports{}
	}
	r := c.reports[k]
	if r == nil {
		r = &reports{}
		c.reports[k] = r
	}
	if r.interval == 0 {
		r.interval = c.o.MinReloginInterval
	}
	if !r.at.IsZero() {
		since := now.Sub(r.at)
		if since < r.interval {
			if r.call != nil && r.call.tok == e.tok && !r.doubled {
				// The fresh token was refused too: logging in again soon
				// would likely be refused again.
				r.interval = min(2*r.interval, c.o.MaxRejectBackoff)
				r.doubled = true
			}
			return Limited
		}
		if since >= 2*r.interval {
			r.interval = c.o.MinReloginInterval
		}
	}
	if c.heldLocked(now, e) != nil {
		return Held
	}
	e.tok, e.refreshAt, e.refreshFailures = nil, time.Time{}, 0
	cl := e.call
	if cl == nil {
		// With a shared store, the login first looks for another
		// replica's token: any but the reported one will do.
		cl = c.startReportedLocked(ctx, k, e, false, accessToken)
	}
	r.at, r.call, r.doubled = now, cl, false
	return Invalidated
}
