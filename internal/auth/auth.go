// Package auth decides who is asking and what they may get. A caller is
// identified by its client certificate (verified against the configured
// client CA: its URI SAN, a SPIFFE ID, else its subject CN), in a mesh by
// the certificate the sidecar verified (the x-forwarded-client-cert
// header), or by an API key, whose SHA-256 is compared in constant time
// with the configured hashes. A Policy then checks each request against
// the caller's grants.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"strings"

	"github.com/tokenvend/tokenvend/internal/config"
)

// Policy holds the configured callers and their grants.
type Policy struct {
	enforced bool
	// mesh: a sidecar terminates mutual TLS and names the caller in the
	// x-forwarded-client-cert header.
	mesh  bool
	byID  map[string]*caller
	keyed []*caller
}

type caller struct {
	id      string
	keyHash []byte
	grants  map[string]*grant // by provider
}

// grant is what a caller may get of one provider.
type grant struct {
	// defaultScope: a grant with no scope list allows the default scope.
	defaultScope bool
	patterns     []string
}

// New builds the policy for the configured callers. With none configured
// (nil), every caller may get every token: the config then only allows
// loopback addresses.
func New(callers []config.Caller) *Policy {
	p := &Policy{enforced: callers != nil, byID: map[string]*caller{}}
	for _, c := range callers {
		pc := &caller{id: c.ID, grants: map[string]*grant{}}
		if c.APIKeySHA256 != "" {
			pc.keyHash, _ = hex.DecodeString(c.APIKeySHA256) // validated with the config
			p.keyed = append(p.keyed, pc)
		}
		for _, g := range c.Allow {
			pg := pc.grants[g.Provider]
			if pg == nil {
				pg = &grant{}
				pc.grants[g.Provider] = pg
			}
			pg.defaultScope = pg.defaultScope || g.Scopes == nil
			pg.patterns = append(pg.patterns, g.Scopes...)
		}
		p.byID[c.ID] = pc
	}
	return p
}

// InMesh returns a copy of p that also identifies callers by the
// x-forwarded-client-cert header, for a pod whose mesh sidecar terminates
// mutual TLS (server.tls_terminated_by_mesh). Without it the header is
// ignored like any other: whoever sends it would otherwise pick an
// identity.
func (p *Policy) InMesh() *Policy {
	q := *p
	q.mesh = true
	return &q
}

// Enforced reports whether callers must be identified and allowed.
func (p *Policy) Enforced() bool { return p.enforced }

// Identify returns the identity of a caller that presented a verified
// certificate (nil if none), the values of an x-forwarded-client-cert
// header (nil if none) and an API key ("" if none). A certificate on the
// connection itself wins. Then, in a mesh only, the header's identity, if
// it names a caller configured to prove itself by certificate: every
// caller in a mesh comes with one, and an API-key caller must still be
// identified by its key. A key identifies only when it matches a
// configured caller. ok is false when the caller is not identified.
func (p *Policy) Identify(cert *x509.Certificate, xfcc []string, apiKey string) (id string, ok bool) {
	if cert != nil {
		// A certificate cannot claim the identity of a caller that is
		// configured to prove itself with an API key.
		if id := CertID(cert); id != "" && (p.byID[id] == nil || p.byID[id].keyHash == nil) {
			return id, true
		}
	}
	if p.mesh && len(xfcc) == 1 {
		// One header only: two would leave open which one the sidecar set.
		if id, err := xfccURI(xfcc[0]); err == nil && p.byID[id] != nil && p.byID[id].keyHash == nil {
			return id, true
		}
	}
	if apiKey != "" {
		sum := sha256.Sum256([]byte(apiKey))
		found := -1
		// Every hash is compared, so the time taken says nothing about
		// which one matched.
		for i, c := range p.keyed {
			if subtle.ConstantTimeCompare(sum[:], c.keyHash) == 1 {
				found = i
			}
		}
		if found >= 0 {
			return p.keyed[found].id, true
		}
	}
	return "", false
}

// CertID is a certificate's identity: its first URI SAN (a SPIFFE ID), else
// its subject common name.
func CertID(cert *x509.Certificate) string {
	if len(cert.URIs) > 0 {
		return cert.URIs[0].String()
	}
	return cert.Subject.CommonName
}

// Allowed reports whether caller id may get scope of provider; isDefault
// says the scope is the provider's default (or the provider takes none).
func (p *Policy) Allowed(id, provider, scope string, isDefault bool) bool {
	if !p.enforced {
		return true
	}
	c := p.byID[id]
	if c == nil {
		return false
	}
	g := c.grants[provider]
	if g == nil {
		return false
	}
	if isDefault && g.defaultScope {
		return true
	}
	for _, pat := range g.patterns {
		if match(pat, scope) {
			return true
		}
	}
	return false
}

// match reports whether scope matches a pattern: "*", a prefix ending in
// "*", or the exact scope.
func match(pattern, scope string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(scope, prefix)
	}
	return pattern == scope
}

type callerKey struct{}

// WithCaller returns ctx carrying an identified caller.
func WithCaller(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// CallerFrom returns the caller identified for ctx, if any.
func CallerFrom(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(callerKey{}).(string)
	return id, ok
}
