package broker

import "github.com/tokenvend/tokenvend/internal/token"

// Carry says what a Broker built by Next takes over from the one it
// replaces, for one provider.
type Carry int

const (
	// Fresh builds the provider anew: its new Source and an empty cache,
	// so its next request logs in with the new settings, and no hold of
	// the old credentials applies. For a provider that is new, or whose
	// settings changed.
	Fresh Carry = iota
	// Tokens keeps the old Source and builds a cache with the new cache
	// options that adopts the old one's tokens and hold (token.Cache.Adopt):
	// for a provider whose own settings are unchanged when the cache's
	// have changed. The old Source is kept because a Source may remember
	// what a new one would not (the TOTP step it last used, a signing
	// key's rotation).
	Tokens
	// All keeps the provider as it is: its Source, and its cache with its
	// tokens, hold and logins in flight.
	All
)

// Next returns a Broker serving ps in b's place; o and onHold are as for
// New, for the caches it builds. For each provider of ps that b also
// serves, carry says what the new Broker takes over (any other is Fresh).
//
// The providers of b that are not carried over whole are retired at once:
// their caches' holds are no longer reported to onHold, since the name
// now belongs to another cache (or to none). Their caches are returned,
// for the caller to Close once no new request can reach b; requests
// already in b finish normally. b itself is unchanged.
func (b *Broker) Next(ps []Provider, o token.Options, onHold func(provider string, held bool), carry func(name string) Carry) (next *Broker, retired []*token.Cache) {
	next = &Broker{byName: make(map[string]*provider, len(ps)), log: b.log}
	kept := map[*provider]bool{}
	for _, p := range ps {
		old, how := b.byName[p.Name], Fresh
		if old != nil {
			how = carry(p.Name)
		}
		switch how {
		case All:
			kept[old] = true
			next.add(old)
		case Tokens:
			np := newProvider(old.Provider, o, onHold)
			if np.cache != nil {
				np.cache.Adopt(old.cache)
			}
			next.add(np)
		default:
			next.add(newProvider(p, o, onHold))
		}
	}
	for _, old := range b.list {
		if kept[old] {
			continue
		}
		old.retired.Store(true)
		if old.cache != nil {
			retired = append(retired, old.cache)
		}
	}
	return next, retired
}
