package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
)

// generation is one config in force: what identifies callers, and what
// answers them. A reload builds a new one and stores it whole; a call in
// flight finishes with the one it started with. It is never modified once
// stored.
type generation struct {
	cfg    *config.Config
	broker *broker.Broker
	policy *auth.Policy
	// grpcAuth and restAuth identify callers by policy.
	grpcAuth grpc.UnaryServerInterceptor
	restAuth http.Handler
	// hosts is the HTTP port's handler behind the Host check, which
	// applies without callers only (see checkHost).
	hosts http.Handler
}

// newGeneration builds the generation of cfg; a.gw and a.mux must be set.
func (a *App) newGeneration(cfg *config.Config, b *broker.Broker, policy *auth.Policy) *generation {
	g := &generation{cfg: cfg, broker: b, policy: policy, grpcAuth: policy.Interceptor(), restAuth: policy.HTTP(a.gw), hosts: a.mux}
	if cfg.Callers == nil {
		g.hosts = checkHost(cfg.Server.AllowedHosts, a.mux)
	}
	return g
}

// newPolicy is the caller policy of cfg.
func newPolicy(cfg *config.Config) *auth.Policy {
	p := auth.New(cfg.Callers)
	if cfg.Server.TLSTerminatedByMesh {
		p = p.InMesh()
	}
	return p
}

// identify identifies a gRPC caller by the policy in force.
func (a *App) identify(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return a.gen.Load().grpcAuth(ctx, req, info, handler)
}

// identifyREST identifies a REST caller by the policy in force, then hands
// the request to the gateway.
func (a *App) identifyREST(w http.ResponseWriter, r *http.Request) {
	a.gen.Load().restAuth.ServeHTTP(w, r)
}

// serveHosts serves the HTTP port under the Host check in force.
func (a *App) serveHosts(w http.ResponseWriter, r *http.Request) {
	a.gen.Load().hosts.ServeHTTP(w, r)
}

// Reload reads the config again with load and applies it without a
// restart and without dropping a connection: providers added, removed or
// changed, callers and grants, cache settings. A config that fails
// validation is refused whole, naming every bad field in the error and
// the log: the running one goes on serving.
//
// A provider whose block and the cache section are both unchanged keeps
// its cache as it is (tokens, hold, logins in flight). With only the cache
// section changed, its new cache adopts the old one's tokens and hold. A
// provider whose block changed in any way starts afresh: its next request
// logs in with the new settings, and a hold of the old credentials is
// lifted. A removed provider's tokens are forgotten.
//
// The listeners' addresses and TLS settings are bound at start: a reload
// that changes them logs so and keeps the running ones (the TLS files
// themselves are read again when they change). Reloads run one at a time.
func (a *App) Reload(load func() (*config.Config, error)) error {
	a.reloads.mu.Lock()
	defer a.reloads.mu.Unlock()
	if err := a.reload(load); err != nil {
		a.reloads.ok.Store(false)
		a.log.Error("config reload refused: the running config goes on serving",
			"error", err.Error(), "fields", fieldPaths(err))
		return err
	}
	a.reloads.ok.Store(true)
	a.reloads.at.Store(a.now().UnixNano())
	return nil
}

func (a *App) reload(load func() (*config.Config, error)) error {
	cfg, err := load()
	if cfg == nil {
		return err
	}
	cur := a.gen.Load()
	cfg = a.keepListeners(cur.cfg, cfg)
	// Validated again with the running listeners: without callers, say,
	// they must be on loopback.
	if err == nil {
		err = cfg.Validate()
	}
	providers, perr := buildProviders(cfg, a.deps)
	if err := errors.Join(err, perr); err != nil {
		return err
	}

	old := map[string]config.Provider{}
	for _, p := range cur.cfg.Providers {
		old[p.Name] = p
	}
	sameCache := cur.cfg.Cache == cfg.Cache
	var added, changed, kept []string
	carry := map[string]broker.Carry{}
	for _, p := range cfg.Providers {
		o, ok := old[p.Name]
		switch {
		case !ok:
			added = append(added, p.Name)
		case !o.Same(p):
			changed = append(changed, p.Name)
		case sameCache:
			carry[p.Name] = broker.All
			kept = append(kept, p.Name)
		default:
			carry[p.Name] = broker.Tokens
			kept = append(kept, p.Name)
		}
		delete(old, p.Name)
	}
	next, retired := cur.broker.Next(providers, a.cacheOptions(cfg.Cache), a.providerHeld,
		func(name string) broker.Carry { return carry[name] })

	// Health first: no request reaches the new caches before the swap, and
	// the retired ones report no more holds, so nothing races these.
	for _, name := range slices.Concat(added, changed) {
		a.setHealth(name, healthpb.HealthCheckResponse_SERVING)
	}
	var removed []string
	for _, p := range cur.cfg.Providers {
		if _, gone := old[p.Name]; gone {
			removed = append(removed, p.Name)
			a.setHealth(p.Name, healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
		}
	}

	policy := newPolicy(cfg)
	a.srv.Swap(next, policy)
	a.gen.Store(a.newGeneration(cfg, next, policy))
	a.keeper.restart()
	// Only now: the old Keep loops have stopped. Calls in flight on the old
	// broker finish normally.
	for _, c := range retired {
		c.Close()
	}
	a.log.Info("config reloaded",
		"providers_added", added, "providers_removed", removed, "providers_changed", changed,
		"providers_unchanged", kept, "cache_changed", !sameCache,
		"callers_changed", !reflect.DeepEqual(cur.cfg.Callers, cfg.Callers))
	return nil
}

// keepListeners returns next with the running listeners' addresses and
// TLS settings, which only a restart changes, logging each that next
// would have changed.
func (a *App) keepListeners(running, next *config.Config) *config.Config {
	eff := *next
	s, r := &eff.Server, running.Server
	for _, f := range []struct {
		key       string
		now, want any
		keep      func()
	}{
		{"server.grpc_addr", r.GRPCAddr, s.GRPCAddr, func() { s.GRPCAddr = r.GRPCAddr }},
		{"server.http_addr", r.HTTPAddr, s.HTTPAddr, func() { s.HTTPAddr = r.HTTPAddr }},
		{"server.tls", r.TLS, s.TLS, func() { s.TLS = r.TLS }},
		{"server.tls_terminated_by_mesh", r.TLSTerminatedByMesh, s.TLSTerminatedByMesh, func() { s.TLSTerminatedByMesh = r.TLSTerminatedByMesh }},
		{"server.proxy_addr", r.ProxyAddr, s.ProxyAddr, func() { s.ProxyAddr = r.ProxyAddr }},
		// The store is connected once, at start.
		{"store", running.Store, next.Store, func() { eff.Store = running.Store }},
	} {
		if !reflect.DeepEqual(f.now, f.want) {
			a.log.Warn("config reload: "+f.key+" changed; only a restart applies it, the running value stays",
				"setting", f.key, "running", fmt.Sprint(f.now), "config", fmt.Sprint(f.want))
			f.keep()
		}
	}
	return &eff
}

// setHealth sets a provider's gRPC health, unless the service is stopping
// (then every name is NOT_SERVING).
func (a *App) setHealth(provider string, st healthpb.HealthCheckResponse_ServingStatus) {
	a.serving.record(provider, st)
	if !a.stopping.Load() {
		a.health.SetServingStatus(provider, st)
	}
}

// fieldPaths lists the config fields err names.
func fieldPaths(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var fe *config.FieldError
		if errors.As(e, &fe) {
			out = append(out, fe.Path)
		}
	}
	walk(err)
	return out
}

// reloads serializes reloads and keeps their outcome for the metrics.
type reloads struct {
	mu sync.Mutex
	ok atomic.Bool
	at atomic.Int64 // Unix nanoseconds of the last successful load
}

// register creates the reload gauges on m, Prometheus' own names for them
// (tokenvend_config_last_reload_successful,
// tokenvend_config_last_reload_success_timestamp_seconds), the load at
// start counting as the first success.
func (r *reloads) register(m metric.Meter, start time.Time) error {
	r.ok.Store(true)
	r.at.Store(start.UnixNano())
	ok, err := m.Int64ObservableGauge("tokenvend.config.last_reload_successful",
		metric.WithDescription("1 if the last config reload succeeded (or none was tried since start), 0 if it was refused."))
	if err != nil {
		return err
	}
	at, err := m.Float64ObservableGauge("tokenvend.config.last_reload_success_timestamp_seconds",
		metric.WithDescription("When the config in force was loaded, in seconds since the Unix epoch."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		var v int64
		if r.ok.Load() {
			v = 1
		}
		o.ObserveInt64(ok, v)
		o.ObserveFloat64(at, float64(r.at.Load())/1e9)
		return nil
	}, ok, at)
	return err
}

// keeper runs the Keep loops (broker.Broker.Keep) of the broker in force,
// from Serve until the service stops; a reload restarts them for its new
// broker. Restarting costs no login: a loop's first look is at the cache,
// and an unchanged provider keeps its cache.
type keeper struct {
	mu      sync.Mutex
	ctx     context.Context // Serve's; nil before Serve and after stop
	current func() *broker.Broker
	cancel  context.CancelFunc
	done    chan struct{}
}

// start runs the loops of current() until ctx ends or stop.
func (k *keeper) start(ctx context.Context, current func() *broker.Broker) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ctx, k.current = ctx, current
	k.run()
}

// restart stops the running loops, waits for them, and starts those of
// current(); before Serve and after stop it does nothing.
func (k *keeper) restart() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return
	}
	k.halt()
	k.run()
}

// stop ends the loops and waits for them.
func (k *keeper) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.halt()
	k.ctx = nil
}

func (k *keeper) run() {
	ctx, cancel := context.WithCancel(k.ctx)
	done := make(chan struct{})
	b := k.current()
	go func() { b.Keep(ctx); close(done) }()
	k.cancel, k.done = cancel, done
}

func (k *keeper) halt() {
	if k.cancel != nil {
		k.cancel()
		<-k.done
		k.cancel = nil
	}
}
