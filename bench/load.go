package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bojand/ghz/runner"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// sample is what one load run measured.
type sample struct {
	latencies []time.Duration // of the calls that succeeded
	calls     int             // every call, failed ones included
	failures  map[string]int  // failed calls by error
	elapsed   time.Duration
	serverCPU time.Duration // CPU time the server process spent meanwhile
	loadCPU   time.Duration // and this process, the load generator
}

// add merges o into s.
func (s *sample) add(o sample) {
	s.latencies = append(s.latencies, o.latencies...)
	s.calls += o.calls
	s.elapsed += o.elapsed
	s.serverCPU += o.serverCPU
	s.loadCPU += o.loadCPU
	if len(o.failures) > 0 && s.failures == nil {
		s.failures = map[string]int{}
	}
	for k, v := range o.failures {
		s.failures[k] += v
	}
}

// result is a sample summed up.
type result struct {
	rps            float64
	p50, p99, max  time.Duration
	calls, failed  int
	firstFailure   string
	measuredWindow time.Duration
	// cpuPerCall is the server's CPU time (user and system) per call:
	// unlike throughput and latency, it does not depend on how much of
	// the machine the load generator and other processes take.
	cpuPerCall time.Duration
	// loadCPUPerCall is the load generator's: on a small machine it
	// competes with the server for the same CPUs.
	loadCPUPerCall time.Duration
}

func (s sample) result() result {
	lat := slices.Clone(s.latencies)
	slices.Sort(lat)
	r := result{calls: s.calls, measuredWindow: s.elapsed}
	if s.elapsed > 0 {
		r.rps = float64(s.calls) / s.elapsed.Seconds()
	}
	if s.calls > 0 {
		r.cpuPerCall = s.serverCPU / time.Duration(s.calls)
		r.loadCPUPerCall = s.loadCPU / time.Duration(s.calls)
	}
	if len(lat) > 0 {
		r.p50, r.p99, r.max = percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	}
	keys := make([]string, 0, len(s.failures))
	for k, v := range s.failures {
		r.failed += v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		r.firstFailure = keys[0]
	}
	return r
}

// percentile is the nearest-rank p-th percentile of sorted latencies.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

// settle collects the load generator's garbage before a run rather than
// during it: each ghz run preallocates room for a million results (64 MB),
// and a collection of earlier runs' heaps inside a measured window would
// show as latency that is the generator's, not the server's.
func settle() { runtime.GC() }

// load is one kind of call driven at a concurrency for a duration.
type load func(ctx context.Context, concurrency int, d time.Duration) (sample, error)

// grpcLoad drives a unary gRPC method with ghz, as a library: call is
// "package.Service.Method", req the request. ghz reads the method's schema
// through the server's reflection service. ghz's per-call templating is
// off (the request is parsed once), so that the load generator, on the
// same machine, spends as little CPU per call as it can.
func grpcLoad(addr, call string, req proto.Message, connections int) load {
	return func(_ context.Context, concurrency int, d time.Duration) (sample, error) {
		data, err := protojson.Marshal(req)
		if err != nil {
			return sample{}, err
		}
		settle()
		rep, err := runner.Run(call, addr,
			runner.WithInsecure(true),
			runner.WithDataFromJSON(string(data)),
			runner.WithDisableTemplateFuncs(true),
			runner.WithDisableTemplateData(true),
			runner.WithConcurrency(uint(concurrency)),
			runner.WithConnections(uint(min(connections, concurrency))),
			runner.WithRunDuration(d),
			// Calls still in flight when the time is up are not counted
			// (the default cancels them, which would count as errors).
			runner.WithDurationStopAction("ignore"),
			runner.WithTimeout(10*time.Second),
			runner.WithDefaultCallOptions([]grpc.CallOption{grpc.ForceCodecV2(newGeneratedCodec())}),
		)
		if err != nil {
			return sample{}, fmt.Errorf("ghz %s: %.300s", call, err)
		}
		s := sample{calls: int(rep.Count), elapsed: rep.Total}
		if len(rep.Details) < int(rep.Count) {
			return sample{}, fmt.Errorf("ghz %s: %d calls but only %d details kept: shorten the run", call, rep.Count, len(rep.Details))
		}
		s.latencies = make([]time.Duration, 0, len(rep.Details))
		for _, det := range rep.Details {
			if det.Error == "" {
				s.latencies = append(s.latencies, det.Latency)
				continue
			}
			if s.failures == nil {
				s.failures = map[string]int{}
			}
			s.failures[det.Error]++
		}
		return s, nil
	}
}

// httpLoad is a closed loop of GETs on keep-alive connections, one per
// caller: each caller sends its next request when the last one answered.
func httpLoad(url string) load { return httpLoadHeaders(url, nil) }

// httpLoadHeaders is httpLoad with header on every request.
func httpLoadHeaders(url string, header http.Header) load {
	return func(ctx context.Context, concurrency int, d time.Duration) (sample, error) {
		tr := &http.Transport{MaxIdleConnsPerHost: concurrency, DisableCompression: true}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		per := make([]sample, concurrency)
		settle()
		var stop atomic.Bool
		var wg sync.WaitGroup
		start := time.Now()
		timer := time.AfterFunc(d, func() { stop.Store(true) })
		defer timer.Stop()
		for i := range per {
			wg.Go(func() {
				s := &per[i]
				s.latencies = make([]time.Duration, 0, 1<<14)
				for !stop.Load() && ctx.Err() == nil {
					t := time.Now()
					err := get(ctx, hc, url, header)
					if stop.Load() {
						return // finished after the time was up: not counted
					}
					s.calls++
					if err != nil {
						if s.failures == nil {
							s.failures = map[string]int{}
						}
						s.failures[err.Error()]++
						continue
					}
					s.latencies = append(s.latencies, time.Since(t))
				}
			})
		}
		wg.Wait()
		var all sample
		for _, s := range per {
			all.add(s)
		}
		all.elapsed = min(time.Since(start), d)
		if all.calls == 0 {
			return all, errors.New("no request completed")
		}
		return all, ctx.Err()
	}
}

func get(ctx context.Context, hc *http.Client, url string, header http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// pair measures a call and its floor on the same server (process pid),
// alternating (floor, call, floor, call, ...) in rounds so that a change in
// the machine's load falls on both, after warming each up.
func pair(ctx context.Context, pid int, call, floor load, concurrency int, warm, d time.Duration, rounds int) (callRes, floorRes result, err error) {
	return pairOn(ctx, pid, pid, call, floor, concurrency, warm, d, rounds)
}

// pairOn is pair for a call and a floor served by two processes, callPID
// and floorPID: each side's server CPU is its own server's.
func pairOn(ctx context.Context, callPID, floorPID int, call, floor load, concurrency int, warm, d time.Duration, rounds int) (callRes, floorRes result, err error) {
	if warm > 0 {
		for _, l := range []load{floor, call} {
			if _, err := l(ctx, concurrency, warm); err != nil {
				return result{}, result{}, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	var c, f sample
	slice := d / time.Duration(rounds)
	for range rounds {
		for _, side := range []struct {
			l   load
			sum *sample
			pid int
		}{{floor, &f, floorPID}, {call, &c, callPID}} {
			pid := side.pid
			cpu0, err := cpuTime(pid)
			if err != nil {
				return result{}, result{}, err
			}
			self0 := selfCPU()
			s, err := side.l(ctx, concurrency, slice)
			if err != nil {
				return result{}, result{}, err
			}
			self1 := selfCPU()
			cpu1, err := cpuTime(pid)
			if err != nil {
				return result{}, result{}, err
			}
			s.serverCPU, s.loadCPU = cpu1-cpu0, self1-self0
			side.sum.add(s)
		}
	}
	return c.result(), f.result(), nil
}
