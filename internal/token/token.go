// Package token defines what tokenvend vends: a Token that a Source obtains
// from an upstream, the classified errors a Source reports, and the Cache
// that stands in front of every cacheable Source. A Source knows one login
// scheme and nothing else; caching, coalescing, refresh-ahead, retries and
// the hold on rejected credentials all live in the Cache.
package token

import (
	"context"
	"time"
)

// Token is a credential obtained from (or minted for) an upstream. A Token
// is shared between callers once returned: never modify one, copy it.
type Token struct {
	// AccessToken is the credential itself.
	AccessToken string
	// Type is the Authorization scheme word, e.g. "Bearer".
	Type string
	// Headers holds every header an upstream call needs, Authorization
	// included.
	Headers map[string]string
	// IssuedAt is when the token was obtained or minted.
	IssuedAt time.Time
	// Expiry is when the token stops being valid; zero means never.
	Expiry time.Time
	// RefreshToken is kept for Sources that can refresh without a full
	// login. It is never returned to callers.
	RefreshToken string
	// CheckEvery is for credentials that never expire but can be revoked
	// (zero: never checked). The Cache asks the Source again this long
	// after IssuedAt (earlier if the token expires sooner), in the
	// background, serving this token meanwhile; if the Source rejects the
	// check, the Cache drops this token, so callers get the rejection
	// rather than a revoked credential.
	CheckEvery time.Duration
}

// ValidFor reports whether t is still valid for at least d after now.
func (t *Token) ValidFor(now time.Time, d time.Duration) bool {
	return t.Expiry.IsZero() || now.Add(d).Before(t.Expiry)
}

// WithHeaders returns a copy of t with extra headers added (per-call parts
// such as a TOTP code), leaving t untouched for the other callers.
func (t *Token) WithHeaders(extra map[string]string) *Token {
	c := *t
	c.Headers = make(map[string]string, len(t.Headers)+len(extra))
	for k, v := range t.Headers {
		c.Headers[k] = v
	}
	for k, v := range extra {
		c.Headers[k] = v
	}
	return &c
}

// Request says which credential a Source must produce.
type Request struct {
	// Scope is the effective scope, already checked against the
	// provider's rules and with its default applied.
	Scope string
	// Subject is the end user the token is for, where the scheme has one.
	Subject string
	// Previous is the cached token being replaced, if any, so a Source
	// that can refresh (with its RefreshToken) does so instead of logging
	// in again. Nil on a first login.
	Previous *Token
}

// Source obtains credentials from one upstream.
type Source interface {
	// Token logs in (or refreshes, or mints) and returns a new Token. It
	// must honour ctx and classify every failure as an *Error.
	Token(ctx context.Context, r Request) (*Token, error)
}
