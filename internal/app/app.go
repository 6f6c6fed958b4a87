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
	"log/slog"
	"net"
	"net/http"
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
	"google.golang.org/grpc/reflection"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/server"
	"github.com/tokenvend/tokenvend/internal/telemetry"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Options are what tests and the demo may change; zero values are right
// for production.
type Options struct {
	// Log receives the service's log (JSON to stderr when nil).
	Log *slog.Logger
	// Now is the clock of caches and providers (time.Now when nil).
	Now func() time.Time
	// SpanExporter, when set, receives every span (tests).
	SpanExporter sdktrace.SpanExporter
	// RetryBase is the first wait between login attempts (200ms when 0).
	RetryBase time.Duration
	// Sleep is how providers wait (for a TOTP step to end, say); tests
	// with a fake clock advance it here. Nil means real time.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Check validates cfg completely, every provider's keys included, without
// touching the network. The error names every bad field.
func Check(cfg *config.Config) error {
	_, err := buildProviders(cfg, deps{http: http.DefaultClient, now: time.Now, sleep: sleep})
	return err
}

// App is a configured service, listening but not yet serving.
type App struct {
	cfg      *config.Config
	log      *slog.Logger
	tel      *telemetry.Telemetry
	grpcLn   net.Listener
	httpLn   net.Listener
	grpcSrv  *grpc.Server
	httpSrv  *http.Server
	health   *health.Server
	serving  *serving
	broker   *broker.Broker
	stopping atomic.Bool
}

// New builds the service for cfg and binds its listeners, so the addresses
// are known (and port 0 resolved) before Serve.
func New(ctx context.Context, cfg *config.Config, o Options) (_ *App, err error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	// a is not the named result: every failure returns nil, and the
	// deferred close must still see what was acquired.
	a := &App{cfg: cfg, log: o.Log}
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
		Transport: otelhttp.NewTransport(http.DefaultTransport,
			otelhttp.WithTracerProvider(a.tel.Tracer), otelhttp.WithMeterProvider(a.tel.Meter),
			otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator())),
		// A login is never followed elsewhere: a 307 would re-post the
		// password (and a TOTP code) to whatever host it names. The 3xx
		// reaches the provider, which reports it as unavailable.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	providers, err := buildProviders(cfg, deps{http: hc, now: o.Now, sleep: o.Sleep})
	if err != nil {
		return nil, err
	}
	metrics, err := token.NewMetrics(a.tel.Meter.Meter("tokenvend"))
	if err != nil {
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
	a.broker = broker.New(providers, token.Options{
		RefreshBefore:    cfg.Cache.RefreshBefore,
		MinValid:         cfg.Cache.MinValid,
		RejectBackoff:    cfg.Cache.RejectBackoff,
		MaxRejectBackoff: cfg.Cache.MaxRejectBackoff,
		LoginTimeout:     cfg.Cache.LoginTimeout,
		LoginAttempts:    cfg.Cache.LoginAttempts,
		RetryBase:        o.RetryBase,
		Now:              o.Now,
		Tracer:           a.tel.Tracer.Tracer("tokenvend"),
		Metrics:          metrics,
		Log:              o.Log,
	}, a.providerHeld)
	policy := auth.New(cfg.Callers)
	srv, err := server.New(a.broker, policy, o.Log, a.tel.Meter.Meter("tokenvend"))
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if cfg.Server.TLS.Enabled() {
		if tlsCfg, err = cfg.Server.TLS.LoadTLS(); err != nil {
			return nil, err
		}
	}

	opts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(a.tel.Tracer), otelgrpc.WithMeterProvider(a.tel.Meter),
			otelgrpc.WithPropagators(a.tel.Propagators))),
		grpc.UnaryInterceptor(policy.Interceptor()),
		// Calls run on a pool of long-lived goroutines whose stacks have
		// already grown to what a GetToken needs. A fresh goroutine per call
		// (gRPC's default, and its fallback when every worker is busy) starts
		// small and copies its stack twice on the way down: that was a sixth
		// of the server's CPU under load. The pool covers the calls a
		// replica can have in flight before it queues anyway; past 256
		// idle goroutines (2 MiB of stacks) gRPC's fallback is cheap enough.
		grpc.NumStreamWorkers(uint32(min(32*runtime.GOMAXPROCS(0), 256))),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	a.grpcSrv = grpc.NewServer(opts...)
	tokenvendv1.RegisterTokenServiceServer(a.grpcSrv, srv)
	healthpb.RegisterHealthServer(a.grpcSrv, a.health)
	reflection.Register(a.grpcSrv)

	gw, err := newGateway(ctx, srv)
	if err != nil {
		return nil, err
	}
	a.httpSrv = &http.Server{
		Handler:           a.httpHandler(policy.HTTP(gw)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}

	if a.grpcLn, err = net.Listen("tcp", cfg.Server.GRPCAddr); err != nil {
		return nil, fmt.Errorf("server.grpc_addr: %w", err)
	}
	if a.httpLn, err = net.Listen("tcp", cfg.Server.HTTPAddr); err != nil {
		return nil, fmt.Errorf("server.http_addr: %w", err)
	}
	if tlsCfg != nil {
		a.httpLn = tls.NewListener(a.httpLn, tlsCfg)
	}
	return a, nil
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
	a.serving.set(provider, !held)
	if !a.stopping.Load() {
		a.health.SetServingStatus(provider, st)
	}
}

// Serve serves until ctx ends, then stops gracefully: health turns
// NOT_SERVING, no new calls are accepted, in-flight ones finish (within
// server.shutdown_timeout). It returns nil after a clean stop.
func (a *App) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- a.grpcSrv.Serve(a.grpcLn) }()
	go func() { errc <- a.httpSrv.Serve(a.httpLn) }()
	// Providers marked Keep log in now and are checked periodically, so a
	// revoked credential shows in health without waiting for a caller.
	kctx, stopKeeping := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() { a.broker.Keep(kctx); close(kept) }()
	a.log.InfoContext(ctx, "tokenvend serving", "grpc_addr", a.GRPCAddr(), "http_addr", a.HTTPAddr(),
		"providers", len(a.cfg.Providers))

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("server stopped: %w", err)
	}
	a.log.Info("tokenvend stopping")
	a.stopping.Store(true)
	stopKeeping()
	<-kept
	a.health.Shutdown()

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.Server.ShutdownTimeout)
	defer cancel()
	// Both ports drain at once: neither keeps taking new calls while the
	// other finishes.
	httpDone := make(chan error, 1)
	go func() { httpDone <- a.httpSrv.Shutdown(sctx) }()
	stopped := make(chan struct{})
	go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		a.grpcSrv.Stop()
		err = errors.Join(err, errors.New("in-flight calls did not finish within server.shutdown_timeout"))
	}
	if e := <-httpDone; e != nil {
		err = errors.Join(err, fmt.Errorf("http shutdown: %w", e))
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
	if a.grpcLn != nil {
		_ = a.grpcLn.Close()
	}
	if a.httpLn != nil {
		_ = a.httpLn.Close()
	}
}
