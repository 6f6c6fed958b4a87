// Package app wires the service together: it builds the providers from
// the config, and serves the TokenService over gRPC (with health and
// reflection) and over REST through grpc-gateway, with health, readiness,
// the OpenAPI document and Prometheus metrics on the HTTP port. The gateway
// calls the same Server in process, so caller policy, audit and tracing
// apply to REST callers alike.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/server"
	"github.com/tokenvend/tokenvend/internal/store/redisstore"
	"github.com/tokenvend/tokenvend/internal/telemetry"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Options are what tests and the demo may change; zero values are right
// for production.
type Options struct {
	// Log receives the service's log (JSON to stderr when nil).
	Log *slog.Logger
	// Audit receives the audit lines, JSON like Log's, in group commit:
	// each Write call carries whole lines, and a GetToken answers only
	// once its line is written (stderr when nil).
	Audit io.Writer
	// Now is the clock of caches and providers, and spaces the looks at
	// the TLS files (time.Now when nil).
	Now func() time.Time
	// SpanExporter, when set, receives every span (tests).
	SpanExporter sdktrace.SpanExporter
	// RetryBase is the first wait between login attempts (200ms when 0).
	RetryBase time.Duration
	// Sleep is how providers wait (for a TOTP step to end, say); tests
	// with a fake clock advance it here. Nil means real time.
	Sleep func(ctx context.Context, d time.Duration) error
	// DrainDelay is how long a stopping service keeps serving, answering
	// with Connection: close, before it stops accepting. Zero means a third
	// of server.shutdown_timeout, at most 5s; negative means none (tests
	// that stop many services).
	DrainDelay time.Duration
	// StoreLeaseTTL is the redis store's lease time to live (10s when 0):
	// tests that kill a lease holder shorten it.
	StoreLeaseTTL time.Duration
}

// Check validates cfg completely, every provider's keys included, without
// touching the network. The error names every bad field.
func Check(cfg *config.Config) error {
	_, err := buildProviders(cfg, deps{http: http.DefaultClient, now: time.Now, sleep: sleep})
	return err
}

// App is a configured service, listening but not yet serving.
type App struct {
	// cfg is the config the service started with, whose listeners it
	// serves; gen holds the config in force.
	cfg      *config.Config
	log      *slog.Logger
	now      func() time.Time
	tel      *telemetry.Telemetry
	grpcLn   net.Listener
	httpLn   net.Listener
	grpcSrv  *grpc.Server
	httpSrv  *http.Server
	proxy    *proxyPort // nil unless server.proxy_addr is set
	health   *health.Server
	drainOpt time.Duration // Options.DrainDelay
	serving  *serving      // tokenvend_provider_serving
	stopping atomic.Bool

	// What a config reload (see Reload) needs, and what it replaces.
	gen       atomic.Pointer[generation]
	srv       *server.Server
	gw        http.Handler
	mux       *http.ServeMux
	deps      deps
	cacheBase token.Options // cacheOptions adds the config's cache section
	keeper    keeper
	reloads   reloads
	// store is the shared store, nil with the memory store.
	store *redisstore.Lazy
}

// New builds the service for cfg and binds its listeners, so the addresses
// are known (and port 0 resolved) before Serve.
func New(ctx context.Context, cfg *config.Config, o Options) (_ *App, err error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = os.Stderr
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	// a is not the named result: every failure returns nil, and the
	// deferred close must still see what was acquired.
	a := &App{cfg: cfg, log: o.Log, now: o.Now, drainOpt: o.DrainDelay}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if a.tel, err = telemetry.New(ctx, telemetry.Options{SpanExporter: o.SpanExporter}); err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	// Upstream calls are traced as client spans under the login span.
	hc := &http.Client{
		// Upstreams are third parties: they get no trace context and no
		// caller's baggage (an empty propagator injects nothing).
		Transport: otelhttp.NewTransport(upstreamTransport(),
			otelhttp.WithTracerProvider(a.tel.Tracer), otelhttp.WithMeterProvider(a.tel.Meter),
			otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator())),
		// A login is never followed elsewhere: a 307 would re-post the
		// password (and a TOTP code) to whatever host it names. The 3xx
		// reaches the provider, which reports it as unavailable.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		// One exchange that hangs is cut, so the cache can try again
		// within login_timeout. It bounds each upstream request, not a
		// whole Source.Token: a scheme may wait on purpose between its
		// requests (Ibanera for a fresh TOTP step).
		Timeout: cfg.Cache.AttemptTimeout,
	}
	a.deps = deps{http: hc, now: o.Now, sleep: o.Sleep}
	if cfg.Store.Redis.Enabled() {
		if a.deps.store, err = a.connectStore(cfg.Store, o); err != nil {
			return nil, err
		}
	}
	providers, err := buildProviders(cfg, a.deps)
	if err != nil {
		return nil, err
	}
	metrics, err := token.NewMetrics(a.tel.Meter.Meter("tokenvend"))
	if err != nil {
		return nil, err
	}
	if err := a.reloads.register(a.tel.Meter.Meter("tokenvend"), o.Now()); err != nil {
		return nil, err
	}

	a.health = health.NewServer()
	a.health.SetServingStatus(tokenvendv1.TokenService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	for _, p := range providers {
		a.health.SetServingStatus(p.Name, healthpb.HealthCheckResponse_SERVING)
	}
	if a.serving, err = newServing(a.tel.Meter.Meter("tokenvend"), providers); err != nil {
		return nil, err
	}
	a.cacheBase = token.Options{
		RetryBase: o.RetryBase,
		Now:       o.Now,
		Tracer:    a.tel.Tracer.Tracer("tokenvend"),
		Metrics:   metrics,
		Log:       o.Log,
	}
	b := broker.New(providers, a.cacheOptions(cfg.Cache), a.providerHeld)
	if a.store != nil {
		if err := a.storeGauge(); err != nil {
			return nil, err
		}
	}
	policy := newPolicy(cfg)
	auditLog := audit.New(o.Audit) // GetToken's lines and the proxy's, in one stream
	if a.srv, err = server.New(b, policy, o.Log, auditLog, a.tel.Meter.Meter("tokenvend")); err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if cfg.Server.TLS.Enabled() {
		// The certificate, key and client CA are read again when their
		// files change (cert-manager, SPIFFE helpers rotate them in place).
		r, err := cfg.Server.TLS.Reloading(o.Log, o.Now)
		if err != nil {
			return nil, err
		}
		tlsCfg = r.Config()
	}

	opts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(a.tel.Tracer), otelgrpc.WithMeterProvider(a.tel.Meter),
			otelgrpc.WithPropagators(a.tel.Propagators))),
		// Callers are identified by the policy of the config in force.
		grpc.UnaryInterceptor(a.identify),
		grpc.ForceServerCodecV2(newAnswerCodec()),
		// Calls run on a pool of long-lived goroutines whose stacks have
		// already grown to what a GetToken needs. A fresh goroutine per call
		// (gRPC's default, and its fallback when every worker is busy) starts
		// small and copies its stack twice on the way down: that was a sixth
		// of the server's CPU under load. The pool covers the calls a
		// replica can have in flight before it queues anyway; past 256
		// idle goroutines (2 MiB of stacks) gRPC's fallback is cheap enough.
		grpc.NumStreamWorkers(uint32(min(32*runtime.GOMAXPROCS(0), 256))),
		// One connection may carry this many calls at once; beyond it the
		// client queues them, which bounds what one caller can make the
		// server hold without limiting a healthy one (a replica serves a
		// few hundred concurrent calls before it queues anyway).
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		// gRPC's default refuses keepalive pings more often than every 5
		// minutes and any ping on a connection without calls, and closes
		// the connection of a client that sends them: common client
		// settings (30s, pinging while idle) would be cut. 10s still tells
		// a client that floods pings to stop (GOAWAY too_many_pings).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// A connection without calls for this long is closed (with a
		// GOAWAY, so the client reconnects when it next needs one): idle
		// connections must not pile up.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 15 * time.Minute}),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	a.grpcSrv = grpc.NewServer(opts...)
	tokenvendv1.RegisterTokenServiceServer(a.grpcSrv, a.srv)
	healthpb.RegisterHealthServer(a.grpcSrv, a.health)
	reflection.Register(a.grpcSrv)

	if a.gw, err = newGateway(ctx, a.srv); err != nil {
		return nil, err
	}
	// The header timeout cuts a client that dribbles its headers (or its
	// TLS handshake), ReadTimeout one that dribbles its body (a few hundred
	// bytes): net/http lifts the read deadline once the body is read, so a
	// slow call is not cut by it. WriteTimeout, though, runs from the end
	// of the headers until the answer is written, and a call that outlasts
	// it gets no answer at all: it must outlast the longest healthy call,
	// a shared login (cache.login_timeout) and then a wait for a fresh TOTP
	// step (Ibanera, up to 30s).
	a.httpSrv = &http.Server{
		Handler:           a.httpHandler(http.HandlerFunc(a.identifyREST)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      cfg.Cache.LoginTimeout + time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	a.gen.Store(a.newGeneration(cfg, b, policy))

	if a.grpcLn, err = net.Listen("tcp", cfg.Server.GRPCAddr); err != nil {
		return nil, fmt.Errorf("server.grpc_addr: %w", err)
	}
	if a.httpLn, err = net.Listen("tcp", cfg.Server.HTTPAddr); err != nil {
		return nil, fmt.Errorf("server.http_addr: %w", err)
	}
	if tlsCfg != nil {
		a.httpLn = tls.NewListener(a.httpLn, tlsCfg)
	}
	if cfg.Server.ProxyAddr != "" {
		// Proxy mode keeps the start config's callers and proxy blocks
		// until a restart.
		if a.proxy, err = a.newProxyPort(a.srv, policy, o.Log, auditLog, tlsCfg); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Limits on what one caller may make the server hold.
const (
	maxConcurrentStreams = 1000
	// maxHeaderBytes bounds a REST request's headers: an API key and a
	// traceparent are well under 1 KiB.
	maxHeaderBytes = 64 << 10
)

// cacheOptions are the options of the caches built for the cache section c.
func (a *App) cacheOptions(c config.Cache) token.Options {
	o := a.cacheBase
	o.RefreshBefore = c.RefreshBefore
	o.MinValid = c.MinValid
	o.RejectBackoff = c.RejectBackoff
	o.MaxRejectBackoff = c.MaxRejectBackoff
	o.LoginTimeout = c.LoginTimeout
	o.LoginAttempts = c.LoginAttempts
	o.MinReloginInterval = c.MinReloginInterval
	return o
}

// drain is the drain delay under the config in force.
func (a *App) drain() time.Duration {
	return drainDelay(a.drainOpt, a.gen.Load().cfg.Server.ShutdownTimeout)
}

// drainDelay is how long shutdown keeps serving before it stops
// accepting: o if set (negative: none), else a third of the shutdown
// timeout, at most 5s (what a load balancer takes to stop sending).
func drainDelay(o, shutdownTimeout time.Duration) time.Duration {
	switch {
	case o < 0:
		return 0
	case o > 0:
		return o
	}
	return min(shutdownTimeout/3, 5*time.Second)
}

// GRPCAddr is the address the gRPC port listens on.
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// HTTPAddr is the address the HTTP port listens on.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// providerHeld reflects a provider's rejected credentials in its health.
func (a *App) providerHeld(provider string, held bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if held {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	a.setHealth(provider, st)
}

// Serve serves until ctx ends, then stops gracefully: readiness turns 503
// and health NOT_SERVING; for the drain delay both ports go on serving,
// REST answers saying Connection: close, so that a keep-alive caller
// learns to reconnect (elsewhere) before its connection is closed rather
// than by having a request cut; then no new calls are accepted, idle
// connections close, and in-flight calls finish. All of it within
// server.shutdown_timeout. It returns nil after a clean stop.
func (a *App) Serve(ctx context.Context) error {
	errc := make(chan error, 3)
	go func() { errc <- a.grpcSrv.Serve(a.grpcLn) }()
	go func() { errc <- a.httpSrv.Serve(a.httpLn) }()
	if a.proxy != nil {
		go func() { errc <- a.proxy.srv.Serve(a.proxy.ln) }()
	}
	// Providers marked Keep log in now and are checked periodically, so a
	// revoked credential shows in health without waiting for a caller.
	// A reload restarts it for the providers then configured.
	a.keeper.start(ctx, func() *broker.Broker { return a.gen.Load().broker })
	a.log.InfoContext(ctx, "tokenvend serving", "grpc_addr", a.GRPCAddr(), "http_addr", a.HTTPAddr(),
		"proxy_addr", a.ProxyAddr(), "providers", len(a.gen.Load().cfg.Providers))

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("server stopped: %w", err)
	}
	// The config in force now: a reload may have changed the timeout.
	drain := a.drain()
	a.log.Info("tokenvend stopping", "drain", drain.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.gen.Load().cfg.Server.ShutdownTimeout)
	defer cancel()
	a.stopping.Store(true)
	a.keeper.stop()
	a.health.Shutdown()
	if err == nil {
		// Not when a server failed: the service is exiting on an error,
		// not handing its callers over.
		_ = sleep(sctx, drain)
	}

	// The ports stop at once: none keeps taking new calls while another
	// finishes.
	httpDone := make(chan error, 2)
	go func() { httpDone <- a.httpSrv.Shutdown(sctx) }()
	if a.proxy != nil {
		go func() { httpDone <- a.proxy.srv.Shutdown(sctx) }()
	} else {
		httpDone <- nil
	}
	stopped := make(chan struct{})
	go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		a.grpcSrv.Stop()
		err = errors.Join(err, errors.New("in-flight calls did not finish within server.shutdown_timeout"))
	}
	for range 2 {
		if e := <-httpDone; e != nil {
			err = errors.Join(err, fmt.Errorf("http shutdown: %w", e))
		}
	}
	a.close()
	if e := a.tel.Shutdown(sctx); e != nil {
		a.log.Warn("telemetry shutdown", "error", e.Error())
	}
	a.log.Info("tokenvend stopped")
	return err
}

// close releases what New acquired. Serve's servers close the listeners
// too; closing twice is harmless.
func (a *App) close() {
	if a.store != nil {
		a.store.Close()
	}
	if a.grpcLn != nil {
		_ = a.grpcLn.Close()
	}
	if a.httpLn != nil {
		_ = a.httpLn.Close()
	}
	if a.proxy != nil {
		_ = a.proxy.ln.Close()
	}
}

// upstreamTransport is the transport of upstream logins: Go's default,
// keeping more idle connections per upstream than its 2, so that logins of
// many keys at once (a cold start, a wave of refreshes) reuse connections
// instead of each paying a new TCP and TLS handshake.
func upstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}
