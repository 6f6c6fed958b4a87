package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// scaleOptions are the sizes of the scaling runs (7-10, `make
// bench-scale`): how the cost grows with callers, connections and keys.
type scaleOptions struct {
	callers     []int // run 7: concurrent callers at each step
	idleConns   int   // run 8: idle gRPC connections
	keys        int   // run 9: cached keys
	coldCallers int   // run 10: callers at once ...
	coldKeys    int   // ... spread over this many cold keys
}

// sliceCost is what a slice of a pair costs beyond its measured time in
// the scaling runs (ghz's start and end, the harness's GC before it):
// run 7 took 182 s on 2 shared CPUs where its slices add up to 88 s.
const sliceCost = time.Second

// estimate is how long the scaling runs take, roughly.
func (s scaleOptions) estimate(o options) time.Duration {
	var d time.Duration
	pair := 2*o.warm + 2*o.duration + 2*time.Duration(o.rounds)*sliceCost
	if o.runs[7] {
		d += time.Duration(len(s.callers)) * pair
	}
	if o.runs[8] { // twice: as deployed and with leanGC
		d += 2 * (5*time.Second + time.Duration(s.idleConns)*time.Millisecond)
	}
	if o.runs[9] {
		d += pair + 2*time.Duration(s.keys)*time.Millisecond
	}
	if o.runs[10] {
		d += 5 * time.Second
	}
	return d
}

// scaling does the runs 7-10 that were asked for.
func (o options) scaling(ctx context.Context, stderr io.Writer, t *table, demo func() (*server, error)) error {
	s := o.scale
	if o.runs[7] {
		if err := o.callersRun(ctx, stderr, t, demo); err != nil {
			return fmt.Errorf("run 7: %w", err)
		}
	}
	if o.runs[8] {
		progress(stderr, fmt.Sprintf("8. %s idle gRPC connections", thousands(s.idleConns)))
		deployed, err := idleConnections(ctx, demo, s.idleConns)
		if err != nil {
			return fmt.Errorf("run 8: %w", err)
		}
		progress(stderr, fmt.Sprintf("8. %s idle gRPC connections, %s", thousands(s.idleConns), leanGC))
		lean, err := idleConnections(ctx, func() (*server, error) { return startServerEnv([]string{leanGC}, o.bin, demoArgs...) }, s.idleConns)
		if err != nil {
			return fmt.Errorf("run 8 (%s): %w", leanGC, err)
		}
		t.idle(deployed, lean)
	}
	if o.runs[9] || o.runs[10] {
		// One stub upstream serves runs 9 and 10, until the runs end.
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stub, err := startInslyStub(sctx, stubLoginDelay)
		if err != nil {
			return err
		}
		if o.runs[9] {
			progress(stderr, fmt.Sprintf("9. %s cached keys", thousands(s.keys)))
			deployed, err := o.cachedKeys(ctx, stub, s.keys, true)
			if err != nil {
				return fmt.Errorf("run 9: %w", err)
			}
			progress(stderr, fmt.Sprintf("9. %s cached keys, %s", thousands(s.keys), leanGC))
			lean, err := o.cachedKeys(ctx, stub, s.keys, false, leanGC)
			if err != nil {
				return fmt.Errorf("run 9 (%s): %w", leanGC, err)
			}
			t.keys(deployed, lean)
		}
		if o.runs[10] {
			progress(stderr, fmt.Sprintf("10. cold start, %s callers across %s keys", thousands(s.coldCallers), thousands(s.coldKeys)))
			scopes := benchScopes(s.coldKeys)
			reqs := make([]*tokenvendv1.GetTokenRequest, len(scopes))
			for i, sc := range scopes {
				reqs[i] = &tokenvendv1.GetTokenRequest{Provider: inslyProvider, Scope: sc}
			}
			start := func() (*server, error) { return serveInsly(o.bin, stub.url, scopes) }
			r, err := coldStart(ctx, start, reqs, s.coldCallers)
			if err != nil {
				return fmt.Errorf("run 10: %w", err)
			}
			t.cold("10", r)
			t.note("10: on a fresh `tokenvend serve` with one insly client_credentials provider whose upstream (a stub in the harness) takes %s per login; caller i asks for scope i mod %d; %d callers per connection; the baseline is the same burst again, on the cached keys.",
				stubLoginDelay, s.coldKeys, callersPerConn)
		}
	}
	return nil
}

// callersRun is run 7: cached GetToken(kyc) and the health check at each
// number of concurrent callers, side by side as in run 1. Callers share a
// connection by callersPerConn, as callers in separate processes would
// not all share one.
func (o options) callersRun(ctx context.Context, stderr io.Writer, t *table, demo func() (*server, error)) error {
	progress(stderr, "7. starting the demo")
	srv, err := demo()
	if err != nil {
		return err
	}
	defer srv.stop()
	conn, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	kycReq := &tokenvendv1.GetTokenRequest{Provider: "kyc"}
	if _, err := tokenvendv1.NewTokenServiceClient(conn).GetToken(ctx, kycReq); err != nil {
		return fmt.Errorf("first GetToken(kyc) on the demo: %w", err)
	}
	for _, n := range o.scale.callers {
		progress(stderr, fmt.Sprintf("7. %s concurrent callers", thousands(n)))
		conns := max(o.connections, (n+callersPerConn-1)/callersPerConn)
		call := grpcLoad(srv.grpcAddr, "tokenvend.v1.TokenService.GetToken", kycReq, conns)
		floor := grpcLoad(srv.grpcAddr, "grpc.health.v1.Health.Check", &healthpb.HealthCheckRequest{}, conns)
		c, f, err := pair(ctx, srv.pid(), call, floor, n, o.warm, o.duration, o.rounds)
		if err != nil {
			return fmt.Errorf("%d callers: %w", n, err)
		}
		t.step(n, c, f)
	}
	t.note("7: cached gRPC GetToken(kyc) vs Health/Check on one demo process, each side %s in %d alternating slices per step; %d callers per connection (at least %d connection(s)).",
		o.duration, o.rounds, callersPerConn, o.connections)
	return srv.alive()
}

// footprint is what a server holds at one moment.
type footprint struct {
	rss        int64   // VmRSS, bytes
	heap       float64 // Go heap in use, bytes (garbage not yet collected included)
	stacks     float64 // goroutine stacks in use, bytes
	goroutines float64
}

// footprint reads the server's VmRSS from /proc and its Go runtime
// figures from /metrics.
func (s *server) footprint(ctx context.Context) (footprint, error) {
	m, err := s.metrics(ctx)
	if err != nil {
		return footprint{}, err
	}
	rss, _, err := memory(s.pid())
	if err != nil {
		return footprint{}, err
	}
	f := footprint{
		rss:        rss,
		heap:       m.sum("go_memstats_heap_inuse_bytes"),
		stacks:     m.sum("go_memstats_stack_inuse_bytes"),
		goroutines: m.sum("go_goroutines"),
	}
	if f.goroutines == 0 || f.heap == 0 || f.stacks == 0 {
		return f, errors.New("/metrics lacks go_goroutines, go_memstats_heap_inuse_bytes or go_memstats_stack_inuse_bytes")
	}
	return f, nil
}

// growth is what each of n things (connections, keys) added between two
// footprints.
type growth struct {
	rss, heap, stacks, goroutines float64
}

func (after footprint) since(before footprint, n int) growth {
	return growth{
		rss:        float64(after.rss-before.rss) / float64(n),
		heap:       (after.heap - before.heap) / float64(n),
		stacks:     (after.stacks - before.stacks) / float64(n),
		goroutines: (after.goroutines - before.goroutines) / float64(n),
	}
}

// idleResult is run 8 on one server.
type idleResult struct {
	conns                 int
	before, after, closed footprint
	dialled               time.Duration // to open them all
	settled               bool          // goroutines back to before once they closed
}

// dialWorkers open connections in parallel: enough to keep the server's
// accept loop busy, few enough not to be a burst of their own.
const dialWorkers = 64

// leanGC is the GOGC of the second server of runs 8 and 9, on which the
// Go heap in use is at most 10% garbage: what the connections or keys
// keep alive, which tokenvend's own GOGC (400, for CPU) would hide
// under up to 4x as much garbage not yet collected.
const leanGC = "GOGC=10"

// idleConnections is run 8 on one server: a fresh demo, measured before
// and after n gRPC connections, each opened with one Health/Check (so it
// is really established, HTTP/2 settings exchanged) and then left idle;
// then again once they have closed, to see the server let go of them.
func idleConnections(ctx context.Context, start func() (*server, error), n int) (idleResult, error) {
	res := idleResult{conns: n}
	// Both ends are on this machine: each process holds n sockets.
	if err := raiseFileLimit(uint64(n) + 1024); err != nil {
		return res, err
	}
	srv, err := start()
	if err != nil {
		return res, err
	}
	defer srv.stop()
	if res.before, err = srv.footprint(ctx); err != nil {
		return res, err
	}

	conns := make([]*grpc.ClientConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	t0 := time.Now()
	err = parallel(n, dialWorkers, func(i int) error {
		c, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		conns[i] = c
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(c).Check(cctx, &healthpb.HealthCheckRequest{}); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.dialled = time.Since(t0)
	if res.after, err = srv.footprint(ctx); err != nil {
		return res, err
	}

	_ = parallel(n, dialWorkers, func(i int) error {
		err := conns[i].Close()
		conns[i] = nil
		return err
	})
	// The server notices each close when it reads the connection's EOF:
	// wait (a bounded time) for its goroutines to end.
	for deadline := time.Now().Add(15 * time.Second); ; {
		if res.closed, err = srv.footprint(ctx); err != nil {
			return res, err
		}
		if res.settled = res.closed.goroutines <= res.before.goroutines+settleSlack; res.settled || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return res, srv.alive()
}

// settleSlack is how many goroutines above the starting count still
// count as back to it: a timer or a scrape's connection may come and go.
const settleSlack = 5

// raiseFileLimit makes sure this process, and the server it starts
// (which inherits the limit), may hold need open files.
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("open files are limited to %d (ulimit -Hn) and the run needs %d: raise the limit or pass a smaller -idle-conns", lim.Max, need)
	}
	lim.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// parallel calls f(0) ... f(n-1) on workers goroutines and returns the
// first error; after one, the calls not yet started are skipped.
func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var failed atomic.Bool
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	return first
}

// keysResult is run 9 on one server.
type keysResult struct {
	keys          int
	before, after footprint
	// fillLogins are the upstream logins while every key was asked for
	// once (keys expected), againLogins while they were all asked for a
	// second time (0 expected: all cached).
	fillLogins, againLogins float64
	fill, again             time.Duration
	// upstreamConns are the connections tokenvend opened to the
	// upstream for the fill's logins.
	upstreamConns int64
	// last and first are cached GetToken measured side by side for the
	// scope listed last and the one listed first (on the deployed
	// server only).
	last, first result
}

// met reports whether each key cost one login and a second round none.
func (r keysResult) met() bool {
	return r.fillLogins == float64(r.keys) && r.againLogins == 0
}

// keyWorkers ask for the keys in parallel when filling the cache.
const keyWorkers = 64

// cachedKeys is run 9 on one server: `tokenvend serve` with one insly
// client_credentials provider allowing keys scopes, measured before and
// after a GetToken of every scope (each a login, then a cached key), then
// each scope asked for again (cache hits only). With hits, it then
// measures cached GetToken for the last listed scope against the first.
func (o options) cachedKeys(ctx context.Context, stub *inslyStub, keys int, hits bool, env ...string) (keysResult, error) {
	res := keysResult{keys: keys}
	scopes := benchScopes(keys)
	srv, err := serveInsly(o.bin, stub.url, scopes, env...)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	conn, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	client := tokenvendv1.NewTokenServiceClient(conn)
	// The default scope first: the provider's first login proves its
	// credentials, and the connection is up before the measurements.
	if _, err := client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: inslyProvider}); err != nil {
		return res, fmt.Errorf("first GetToken(%s): %w", inslyProvider, err)
	}

	logins := func() (float64, error) {
		m, err := srv.metrics(ctx)
		return m.sum("tokenvend_logins_total", "provider", inslyProvider), err
	}
	everyScope := func() (time.Duration, float64, error) {
		before, err := logins()
		if err != nil {
			return 0, 0, err
		}
		t0 := time.Now()
		err = parallel(len(scopes), keyWorkers, func(i int) error {
			if _, err := client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: inslyProvider, Scope: scopes[i]}); err != nil {
				return fmt.Errorf("GetToken(%s, %s): %s", inslyProvider, scopes[i], status.Convert(err).Message())
			}
			return nil
		})
		took := time.Since(t0)
		if err != nil {
			return 0, 0, err
		}
		after, err := logins()
		return took, after - before, err
	}

	if res.before, err = srv.footprint(ctx); err != nil {
		return res, err
	}
	conns := stub.conns.Load()
	if res.fill, res.fillLogins, err = everyScope(); err != nil {
		return res, err
	}
	res.upstreamConns = stub.conns.Load() - conns
	if res.after, err = srv.footprint(ctx); err != nil {
		return res, err
	}
	if res.again, res.againLogins, err = everyScope(); err != nil {
		return res, err
	}
	if !hits {
		return res, srv.alive()
	}

	getToken := func(scope string) load {
		return grpcLoad(srv.grpcAddr, "tokenvend.v1.TokenService.GetToken", &tokenvendv1.GetTokenRequest{Provider: inslyProvider, Scope: scope}, o.connections)
	}
	if res.last, res.first, err = pair(ctx, srv.pid(), getToken(scopes[len(scopes)-1]), getToken(scopes[0]), o.concurrency, o.warm, o.duration, o.rounds); err != nil {
		return res, err
	}
	return res, srv.alive()
}
