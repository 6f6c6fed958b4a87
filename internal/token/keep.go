package token

import (
	"context"
	"errors"
	"time"
)

// Keep logs in for k now and keeps its token fresh until ctx ends, without
// waiting for a caller to ask: for a credential that must be checked at
// start-up and then periodically (see Token.CheckEvery), so that a revoked
// one shows in State and OnHold even when nobody asks for it.
//
// It goes through Get, so it shares logins with callers and obeys the
// rejection hold. A transient failure is tried again after a backoff that
// starts at RetryBase and doubles up to a minute, so an upstream that is
// down at start-up is picked up once it comes back; a rejection is tried
// again when its hold ends. Once a token is cached, Keep sleeps until the
// token's refresh or check is due and then asks again. It returns when ctx
// ends, or when the cached token needs neither refresh nor check.
func (c *Cache) Keep(ctx context.Context, k Key) {
	wait := c.o.RetryBase
	for ctx.Err() == nil {
		_, _, err := c.Get(ctx, k, 0)
		var d time.Duration
		var e *Error
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			c.mu.Lock()
			en := c.entries[k]
			cl, due, cached := en.call, en.refreshAt, en.tok != nil
			c.mu.Unlock()
			if cl != nil {
				// Get started the due refresh: its outcome decides what
				// comes next. A failed one backs off below, rather than
				// asking again at once.
				select {
				case <-cl.done:
				case <-ctx.Done():
					return
				}
				if cl.err == nil {
					continue
				}
				break
			}
			if !cached {
				// The refresh Get started has already ended, and a
				// rejected check dropped the token: Get says how long
				// logins are held.
				continue
			}
			if due.IsZero() {
				return
			}
			d = due.Sub(c.o.Now())
		case errors.As(err, &e) && e.RetryAfter > 0:
			d = e.RetryAfter
		}
		if d > 0 {
			wait = c.o.RetryBase
		} else {
			// Failed, or due with no refresh started (another key's
			// probe holds logins): back off.
			d = wait
			wait = min(wait*2, refreshRetryMax)
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}
