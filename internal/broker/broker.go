// Package broker answers token requests for the configured providers. It
// checks each request against the provider's rules, asks the provider's
// token.Cache (or, for single-use schemes, the Source itself on every call)
// and adds per-call parts such as a TOTP code after the cache.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenvend/tokenvend/internal/token"
)

// Provider is one configured upstream, as its kind built it.
type Provider struct {
	Name, Kind string
	Source     token.Source
	Scopes     Scopes
	// Subject is true for schemes that mint a token for an end user;
	// other providers refuse a request that names one.
	Subject bool
	// SingleUse sources are asked on every call and never cached.
	SingleUse bool
	// PerCall, when set, adds the parts that must be fresh on every call.
	PerCall PerCall
	// Keep makes Broker.Keep log in for the default scope at start-up and
	// keep that token refreshed and checked without waiting for callers
	// (see token.Cache.Keep), for credentials whose revocation must show
	// in health. Ignored for SingleUse providers.
	Keep bool
	// Store, when set, is the state the provider's cache shares with the
	// other replicas (token.Options.Store); nil keeps it in memory.
	Store token.Store
}

// Scopes are a provider's scope rules.
type Scopes struct {
	// Allowed lists the scopes a caller may ask for. Empty with an empty
	// Default means the provider takes no scope.
	Allowed []string
	// Default is used when a request names no scope. Empty with a
	// non-empty Allowed means a caller must name one.
	Default string
}

// PerCall adds per-call parts to a (possibly cached) token.
type PerCall interface {
	// Finish returns t with the per-call parts added, and its expiry
	// brought forward to theirs. It must not modify t.
	Finish(ctx context.Context, t *token.Token) (*token.Token, error)
}

// Request is a caller's request.
type Request struct {
	Provider, Scope, Subject string
	MinValidFor              time.Duration
}

// Answer is a credential ready for the caller.
type Answer struct {
	Token     *token.Token
	SingleUse bool
	Outcome   token.Outcome
}

// Reasons for request errors; stable API as google.rpc.ErrorInfo reasons.
const (
	ReasonInvalidProvider  = "INVALID_PROVIDER"
	ReasonProviderNotFound = "PROVIDER_NOT_FOUND"
	ReasonInvalidScope     = "INVALID_SCOPE"
	ReasonScopeNotAllowed  = "SCOPE_NOT_ALLOWED"
	ReasonInvalidSubject   = "INVALID_SUBJECT"
	ReasonInvalidMinValid  = "INVALID_MIN_VALID_FOR"
)

// maxMinValidFor bounds min_valid_for: no upstream here issues day-long
// tokens, so a larger value is a unit mistake.
const maxMinValidFor = 24 * time.Hour

// Broker serves the configured providers.
type Broker struct {
	byName map[string]*provider
	list   []*provider
	log    *slog.Logger
}

type provider struct {
	Provider
	// allowedSet holds Scopes.Allowed: a provider may list thousands of
	// scopes, and every request is checked against them.
	allowedSet map[string]struct{}
	cache      *token.Cache // nil for single-use providers
	// retired is set once a reload no longer serves this provider (see
	// Next): its cache's holds then no longer speak for the name.
	retired atomic.Bool
}

// New builds a Broker. Each cacheable provider gets a token.Cache with
// options o, labelled with its name and kind; onHold (optional) hears when
// a provider's logins become held after a rejection and when they resume.
func New(ps []Provider, o token.Options, onHold func(provider string, held bool)) *Broker {
	b := &Broker{byName: make(map[string]*provider, len(ps)), log: o.Log}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	for _, p := range ps {
		b.add(newProvider(p, o, onHold))
	}
	return b
}

// newProvider builds p with its cache, unless p is single-use.
func newProvider(p Provider, o token.Options, onHold func(provider string, held bool)) *provider {
	bp := &provider{Provider: p, allowedSet: make(map[string]struct{}, len(p.Scopes.Allowed))}
	for _, s := range p.Scopes.Allowed {
		bp.allowedSet[s] = struct{}{}
	}
	if !p.SingleUse {
		co := o
		co.Provider, co.Kind = p.Name, p.Kind
		if p.Store != nil {
			co.Store = p.Store
		}
		if onHold != nil {
			name := p.Name
			co.OnHold = func(held bool) {
				if !bp.retired.Load() {
					onHold(name, held)
				}
			}
		}
		bp.cache = token.NewCache(p.Source, co)
	}
	return bp
}

func (b *Broker) add(p *provider) {
	b.byName[p.Name] = p
	b.list = append(b.list, p)
}

// WriteBack stores every cached token that is still good in its
// provider's shared store (see token.Cache.WriteBack): the store came back
// after an outage.
func (b *Broker) WriteBack(ctx context.Context) {
	for _, p := range b.list {
		if p.cache != nil {
			p.cache.WriteBack(ctx)
		}
	}
}

// Keep keeps the token of every provider marked Keep (see Provider.Keep)
// until ctx ends, and returns when all of them have stopped.
func (b *Broker) Keep(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range b.list {
		if p.Keep && p.cache != nil {
			wg.Go(func() { p.cache.Keep(ctx, token.Key{Scope: p.Scopes.Default}) })
		}
	}
	wg.Wait()
}

// Token answers one request.
func (b *Broker) Token(ctx context.Context, r Request) (Answer, error) {
	p, scope, err := b.check(r)
	if err != nil {
		return Answer{}, err
	}
	var a Answer
	if p.SingleUse {
		a.SingleUse = true
		a.Token, err = p.Source.Token(ctx, token.Request{Scope: scope, Subject: r.Subject})
		switch {
		case err != nil:
			b.logFailure(ctx, p, "mint failed", err)
		case a.Token == nil:
			err = errors.New("provider returned no token")
		case r.MinValidFor > 0 && !a.Token.Expiry.IsZero() && a.Token.Expiry.Sub(a.Token.IssuedAt) < r.MinValidFor:
			// A minted token is as fresh as it gets: asking for more than
			// its lifetime is a request that cannot be met.
			a.Token, err = nil, &token.Error{Kind: token.KindInvalid, Reason: token.ReasonMinValidTooLong,
				Message: fmt.Sprintf("provider %q mints tokens valid for %s; min_valid_for %s cannot be met", p.Name, a.Token.Expiry.Sub(a.Token.IssuedAt), r.MinValidFor)}
		}
	} else {
		a.Token, a.Outcome, err = p.cache.Get(ctx, token.Key{Scope: scope, Subject: r.Subject}, r.MinValidFor)
	}
	if err == nil && p.PerCall != nil {
		if a.Token, err = p.PerCall.Finish(ctx, a.Token); err != nil {
			b.logFailure(ctx, p, "per-call part failed", err)
		}
	}
	return a, err
}

// logFailure logs what a mint or a per-call part failed of, with its cause:
// no cache sees these (the cache logs its own logins), and the caller is
// told only the Message. A caller's own mistake (invalid, denied) is not
// logged: callers must not be able to fill the log.
func (b *Broker) logFailure(ctx context.Context, p *provider, msg string, err error) {
	if k := token.KindOf(err); k == token.KindRejected || k == token.KindUnavailable {
		b.log.WarnContext(ctx, msg, "provider", p.Name, "kind", p.Kind, "error", err.Error())
	}
}

// Scope validates r and returns the scope it resolves to, and whether that
// is the provider's default (or the provider takes none): what a caller
// policy decides on before any token is fetched.
func (b *Broker) Scope(r Request) (scope string, isDefault bool, err error) {
	p, scope, err := b.check(r)
	if err != nil {
		return "", false, err
	}
	return scope, scope == p.Scopes.Default, nil
}

// Limits of a request's fields, checked before anything else reads them.
const (
	MaxProvider = 63
	MaxScope    = 256
	MaxSubject  = 256
)

// Validate checks the form of r's fields (length, characters, range),
// knowing nothing of the configured providers: what must hold before a
// field reaches an audit line, a span or an error detail.
func Validate(r Request) error {
	switch {
	case r.Provider == "":
		return invalid(ReasonInvalidProvider, "provider is required: name one of the configured providers (ListProviders lists them)")
	case !validProvider(r.Provider):
		return invalid(ReasonInvalidProvider, fmt.Sprintf("provider is malformed: a provider name is at most %d printable characters", MaxProvider))
	case !validScope(r.Scope):
		return invalid(ReasonInvalidScope, fmt.Sprintf("scope is malformed: at most %d printable characters, no spaces", MaxScope))
	case !validSubject(r.Subject):
		return invalid(ReasonInvalidSubject, fmt.Sprintf("subject is malformed: at most %d characters, no control characters", MaxSubject))
	case r.MinValidFor < 0 || r.MinValidFor > maxMinValidFor:
		return invalid(ReasonInvalidMinValid, fmt.Sprintf("min_valid_for must be between 0 and %s", maxMinValidFor))
	}
	return nil
}

func validProvider(s string) bool { return len(s) <= MaxProvider && printable(s) }
func validScope(s string) bool    { return len(s) <= MaxScope && printable(s) }
func validSubject(s string) bool {
	return len(s) <= MaxSubject && !strings.ContainsFunc(s, func(c rune) bool { return c < 0x20 || c == 0x7f })
}

// Shown returns r with each field that fails Validate replaced by a short
// printable excerpt that gives its length: safe for a log line, a span or
// an error detail whatever a caller sent. Valid fields are kept as sent.
func Shown(r Request) Request {
	if !validProvider(r.Provider) {
		r.Provider = excerpt(r.Provider)
	}
	if !validScope(r.Scope) {
		r.Scope = excerpt(r.Scope)
	}
	if !validSubject(r.Subject) {
		r.Subject = excerpt(r.Subject)
	}
	return r
}

// excerpt is a malformed field with anything but visible ASCII replaced
// by "?", cut to its first bytes (then followed by its length in bytes).
func excerpt(s string) string {
	const keep = 32
	b := []byte(s[:min(len(s), keep)])
	for i, c := range b {
		if c <= ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	if len(s) > keep {
		return fmt.Sprintf("%s...[%d bytes]", b, len(s))
	}
	return string(b)
}

// check validates r and returns its provider and effective scope.
func (b *Broker) check(r Request) (*provider, string, error) {
	if err := Validate(r); err != nil {
		return nil, "", err
	}
	p := b.byName[r.Provider]
	if p == nil {
		return nil, "", &token.Error{Kind: token.KindNotFound, Reason: ReasonProviderNotFound,
			Message: fmt.Sprintf("no provider named %q is configured (ListProviders lists them)", r.Provider)}
	}
	if r.Subject != "" && !p.Subject {
		return nil, "", invalid(ReasonInvalidSubject, fmt.Sprintf("provider %q does not mint tokens for a subject: leave subject empty", p.Name))
	}
	scope := r.Scope
	if scope == "" {
		scope = p.Scopes.Default
	}
	switch {
	case scope == "" && len(p.Scopes.Allowed) == 0:
		return p, "", nil
	case scope == "":
		return nil, "", invalid(ReasonInvalidScope, fmt.Sprintf("provider %q needs a scope: one of %s", p.Name, listed(p.Scopes.Allowed)))
	case scope == p.Scopes.Default || p.allows(scope):
		return p, scope, nil
	case len(p.Scopes.Allowed) == 0 && p.Scopes.Default == "":
		return nil, "", denied(fmt.Sprintf("provider %q takes no scope: leave scope empty", p.Name))
	default:
		return nil, "", denied(fmt.Sprintf("provider %q does not allow scope %q; allowed: %s", p.Name, scope, listed(p.allowed())))
	}
}

func (p *provider) allows(scope string) bool {
	_, ok := p.allowedSet[scope]
	return ok
}

// maxListed bounds the scopes an error message lists: a provider may have
// thousands, and a refused request must not cost a long answer.
const maxListed = 20

// listed joins scopes for a message, the first maxListed of them.
func listed(scopes []string) string {
	if len(scopes) <= maxListed {
		return strings.Join(scopes, ", ")
	}
	return fmt.Sprintf("%s and %d more (ListProviders lists them)", strings.Join(scopes[:maxListed], ", "), len(scopes)-maxListed)
}

func invalid(reason, msg string) error {
	return &token.Error{Kind: token.KindInvalid, Reason: reason, Message: msg}
}

func denied(msg string) error {
	return &token.Error{Kind: token.KindDenied, Reason: ReasonScopeNotAllowed, Message: msg}
}

// printable reports whether s holds only visible ASCII (no spaces).
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// allowed lists every scope a caller may name, the default first.
func (p *provider) allowed() []string {
	var out []string
	if p.Scopes.Default != "" {
		out = append(out, p.Scopes.Default)
	}
	for _, s := range p.Scopes.Allowed {
		if s != p.Scopes.Default {
			out = append(out, s)
		}
	}
	return out
}

// Info describes a provider for listings and health; it holds no secret.
type Info struct {
	Name, Kind   string
	Scopes       []string
	DefaultScope string
	// Valid is true when a cached credential with enough validity is held.
	Valid bool
	// Held is the rejection the provider's logins are held for, if any.
	Held *token.Error
}

// Providers describes every provider, in configuration order.
func (b *Broker) Providers() []Info {
	out := make([]Info, 0, len(b.list))
	for _, p := range b.list {
		i := Info{Name: p.Name, Kind: p.Kind, Scopes: p.allowed(), DefaultScope: p.Scopes.Default}
		if p.cache != nil {
			s := p.cache.State()
			i.Valid, i.Held = s.Valid, s.Held
		}
		out = append(out, i)
	}
	return out
}

// Invalidate handles a caller's report that the upstream refused
// accessToken, a credential vended for r. Single-use providers have nothing
// to drop.
func (b *Broker) Invalidate(ctx context.Context, r Request, accessToken string) (token.Invalidation, error) {
	p, scope, err := b.check(r)
	if err != nil {
		return "", err
	}
	if p.SingleUse {
		return SingleUse, nil
	}
	return p.cache.Invalidate(ctx, token.Key{Scope: scope, Subject: r.Subject}, accessToken), nil
}

// SingleUse is the result of a report of a single-use provider's token:
// every call gets a fresh one, so there is nothing to drop.
const SingleUse token.Invalidation = "single_use"
