package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// coldResult is one cold-start run.
type coldResult struct {
	callers int
	keys    int           // the distinct keys they asked for
	logins  float64       // upstream logins the burst caused
	failed  int           // callers that got an error
	last    time.Duration // from the burst to the last caller's answer
	warm    time.Duration // the same, for a second burst on the cached keys
	err     string        // the first error a caller got
}

// callersPerConn spreads a burst over several connections, as callers in
// separate processes would arrive.
const callersPerConn = 100

// coldStart starts a fresh server (so every key is cold), connects n
// callers, releases them at once, caller i on reqs[i%len(reqs)] (one
// provider, distinct keys), and counts the provider's upstream logins on
// /metrics before and after: one login per key is the goal (see
// coldResult.met).
func coldStart(ctx context.Context, start func() (*server, error), reqs []*tokenvendv1.GetTokenRequest, n int) (coldResult, error) {
	res := coldResult{callers: n, keys: min(n, len(reqs))}
	provider := reqs[0].GetProvider()
	srv, err := start()
	if err != nil {
		return res, err
	}
	defer srv.stop()

	conns := make([]*grpc.ClientConn, (n+callersPerConn-1)/callersPerConn)
	for i := range conns {
		if conns[i], err = grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return res, err
		}
		defer conns[i].Close()
		// Connect now (the health check touches no cache), so the burst
		// measures GetToken, not dialing.
		if _, err := healthpb.NewHealthClient(conns[i]).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			return res, fmt.Errorf("connecting: %w", err)
		}
	}
	before, err := srv.metrics(ctx)
	if err != nil {
		return res, err
	}

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res.last, res.failed, res.err = burst(ctx, conns, reqs, n)
	// The same burst again, now that every key is cached: what the
	// callers cost without the cold start.
	res.warm, _, _ = burst(ctx, conns, reqs, n)
	after, err := srv.metrics(ctx)
	if err != nil {
		return res, err
	}
	res.logins = after.sum("tokenvend_logins_total", "provider", provider) - before.sum("tokenvend_logins_total", "provider", provider)
	if before.sum("tokenvend_logins_total", "provider", provider) != 0 {
		return res, errors.New("the key was not cold: the fresh server had logged in before the burst")
	}
	return res, srv.alive()
}

// met reports whether the burst made exactly one upstream login per key
// and every caller got its token.
func (r coldResult) met() bool {
	return r.logins == float64(r.keys) && r.failed == 0
}

// burst releases n callers at once, caller i on reqs[i%len(reqs)] over
// conns[i/callersPerConn], and returns the time from the release to the
// last answer, the callers that failed and the first error.
func burst(ctx context.Context, conns []*grpc.ClientConn, reqs []*tokenvendv1.GetTokenRequest, n int) (last time.Duration, failed int, first string) {
	fire := make(chan struct{})
	done := make([]time.Time, n)
	errs := make([]error, n)
	var ready, finished sync.WaitGroup
	for i := range n {
		client := tokenvendv1.NewTokenServiceClient(conns[i/callersPerConn])
		ready.Add(1)
		finished.Go(func() {
			ready.Done()
			<-fire
			_, errs[i] = client.GetToken(ctx, reqs[i%len(reqs)])
			done[i] = time.Now()
		})
	}
	ready.Wait()
	t0 := time.Now()
	close(fire)
	finished.Wait()
	for i := range n {
		last = max(last, done[i].Sub(t0))
		if errs[i] != nil {
			failed++
			if first == "" {
				first = status.Convert(errs[i]).Message()
			}
		}
	}
	return last, failed, first
}
