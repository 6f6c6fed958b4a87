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
	grants  map[string][]grant // by provider, in config order
}

// grant is one configured grant: scopes of one provider, for the end
// users it lists. Grants are never merged: a caller granted scope A for
// subjects X and scope B for subjects Y must not get A for Y.
type grant struct {
	// defaultScope: a grant with no scope list allows the default scope.
	defaultScope bool
	scopes       []string
	// subjects are the end users a token may be minted for; none means a
	// request naming a subject is not covered.
	subjects []string
}

// New builds the policy for the configured callers. With none configured
// (nil), every caller may get every token: the config then only allows
// loopback addresses.
func New(callers []config.Caller) *Policy {
	p := &Policy{enforced: callers != nil, byID: map[string]*caller{}}
	for _, c := range callers {
		pc := &caller{id: c.ID, grants: map[string][]grant{}}
		if c.APIKeySHA256 != "" {
			pc.keyHash, _ = hex.DecodeString(c.APIKeySHA256) // validated with the config
			p.keyed = append(p.keyed, pc)
		}
		for _, g := range c.Allow {
			pc.grants[g.Provider] = append(pc.grants[g.Provider],
				grant{defaultScope: g.Scopes == nil, scopes: g.Scopes, subjects: g.Subjects})
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

// Decision is a Policy's answer to one request.
type Decision int

const (
	// Allow: a grant covers the provider, the scope and the subject.
	Allow Decision = iota
	// DenyProvider: the caller has no grant for the provider (or is not
	// configured at all).
	DenyProvider
	// DenyScope: no grant for the provider covers the scope.
	DenyScope
	// DenySubject: grants cover the scope, but none of them the subject.
	DenySubject
)

// MayUse reports whether caller id has any grant for provider: what may be
// said before anything about the provider itself (whether it exists, its
// scopes) is said.
func (p *Policy) MayUse(id, provider string) bool {
	if !p.enforced {
		return true
	}
	c := p.byID[id]
	return c != nil && len(c.grants[provider]) > 0
}

// Decide judges a request of caller id for scope of provider, minted for
// subject ("" for none); isDefault says the scope is the provider's
// default (or the provider takes none). One grant must cover both the
// scope and the subject. A request without a subject is judged on its
// scope alone.
func (p *Policy) Decide(id, provider, scope string, isDefault bool, subject string) Decision {
	if !p.enforced {
		return Allow
	}
	c := p.byID[id]
	if c == nil || len(c.grants[provider]) == 0 {
		return DenyProvider
	}
	d := DenyScope
	for _, g := range c.grants[provider] {
		if !g.coversScope(scope, isDefault) {
			continue
		}
		if g.coversSubject(subject) {
			return Allow
		}
		d = DenySubject
	}
	return d
}

func (g grant) coversScope(scope string, isDefault bool) bool {
	if isDefault && g.defaultScope {
		return true
	}
	for _, pat := range g.scopes {
		if match(pat, scope) {
			return true
		}
	}
	return false
}

func (g grant) coversSubject(subject string) bool {
	if subject == "" {
		return true
	}
	for _, pat := range g.subjects {
		if matchSubject(pat, subject) {
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

// matchSubject reports whether subject matches a pattern: the exact
// subject, or a pattern with one "*" standing for any run of characters
// ("*", "*@billing.example.com", "svc-*"). Matching is case-sensitive: a
// subject spelled otherwise is refused, never let through.
func matchSubject(pattern, subject string) bool {
	prefix, suffix, wild := strings.Cut(pattern, "*")
	if !wild {
		return pattern == subject
	}
	return len(subject) >= len(prefix)+len(suffix) &&
		strings.HasPrefix(subject, prefix) && strings.HasSuffix(subject, suffix)
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
