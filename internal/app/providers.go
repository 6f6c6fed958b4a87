package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera"
	"github.com/tokenvend/tokenvend/internal/provider/identityx"
	"github.com/tokenvend/tokenvend/internal/provider/insly"
	"github.com/tokenvend/tokenvend/internal/provider/kyc"
	"github.com/tokenvend/tokenvend/internal/provider/loginid"
	"github.com/tokenvend/tokenvend/internal/token"
)

// deps are what a kind's client may need from the service.
type deps struct {
	http *http.Client
	now  func() time.Time
	// sleep waits d or until ctx ends; tests make it move their fake clock.
	sleep func(ctx context.Context, d time.Duration) error
	// store, when set, is each provider's share of the fleet's store.
	store func(name string) sharedStore
}

// sharedStore is what a provider shares with the other replicas: its
// cache's state, and ibanera's failed logins and TOTP steps.
type sharedStore interface {
	token.Store
	token.Failures
	token.Steps
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kinds builds each upstream scheme from its provider block. Adding a kind
// is adding its package and one entry here.
var kinds = map[string]func(p config.Provider, d deps) (broker.Provider, error){
	"ibanera": func(p config.Provider, d deps) (broker.Provider, error) {
		var c ibanera.Config
		if err := p.Load(&c); err != nil {
			return broker.Provider{}, err
		}
		cl := ibanera.New(c, d.http, d.now, d.sleep)
		if d.store != nil {
			st := d.store(p.Name)
			cl.Share(st, st)
		}
		return broker.Provider{Source: cl, PerCall: cl}, nil
	},
	"identityx": func(p config.Provider, d deps) (broker.Provider, error) {
		var c identityx.Config
		if err := p.Load(&c); err != nil {
			return broker.Provider{}, err
		}
		return broker.Provider{Source: identityx.New(c, d.http, d.now), Keep: true}, nil
	},
	"insly": func(p config.Provider, d deps) (broker.Provider, error) {
		var c insly.Config
		if err := p.Load(&c); err != nil {
			return broker.Provider{}, err
		}
		return broker.Provider{Source: insly.New(c, d.http, d.now), Scopes: broker.Scopes{Allowed: c.Scopes, Default: c.DefaultScope()}}, nil
	},
	"kyc": func(p config.Provider, d deps) (broker.Provider, error) {
		var c kyc.Config
		if err := p.Load(&c); err != nil {
			return broker.Provider{}, err
		}
		return broker.Provider{Source: kyc.New(c, d.http, d.now)}, nil
	},
	"loginid": func(p config.Provider, d deps) (broker.Provider, error) {
		var c loginid.Config
		if err := p.Load(&c); err != nil {
			return broker.Provider{}, err
		}
		cl, err := loginid.New(c, d.now)
		if err != nil {
			return broker.Provider{}, config.Nest(p.Path, err)
		}
		return broker.Provider{Source: cl, Scopes: broker.Scopes{Allowed: c.Scopes}, Subject: true, SingleUse: true}, nil
	},
}

// buildProviders builds every configured provider, naming every bad field
// of every provider in the error. It makes no network call, so it is also
// what `tokenvend check` runs.
func buildProviders(cfg *config.Config, d deps) ([]broker.Provider, error) {
	var out []broker.Provider
	var errs []error
	for _, p := range cfg.Providers {
		build, ok := kinds[p.Kind]
		if !ok {
			if p.Kind != "" {
				errs = append(errs, config.Errorf(config.Join(p.Path, "kind"), "unknown kind %q (known: %s)", p.Kind, strings.Join(kindNames(), ", ")))
			}
			continue
		}
		bp, err := build(p, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bp.Name, bp.Kind = p.Name, p.Kind
		if d.store != nil {
			bp.Store = d.store(p.Name)
		}
		out = append(out, bp)
	}
	errs = append(errs, subjectGrants(cfg, out)...)
	return out, errors.Join(errs...)
}

// subjectGrants refuses subjects on a grant for a provider whose kind
// mints nothing per user: such a grant would promise what the provider
// refuses. Only the kind knows, so this is checked here, not in config.
func subjectGrants(cfg *config.Config, built []broker.Provider) []error {
	byName := map[string]broker.Provider{}
	for _, p := range built {
		byName[p.Name] = p
	}
	var errs []error
	for i, c := range cfg.Callers {
		for j, g := range c.Allow {
			// An unknown provider is already reported by the config.
			if p, ok := byName[g.Provider]; ok && g.Subjects != nil && !p.Subject {
				errs = append(errs, config.Errorf(fmt.Sprintf("callers[%d].allow[%d].subjects", i, j),
					"provider %q is of kind %s, which mints no token per user: leave subjects out", p.Name, p.Kind))
			}
		}
	}
	return errs
}

func kindNames() []string {
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}
