// Command bench measures what tokenvend costs its callers, as ratios to
// the floor of the same server measured side by side in the same run, so
// that the figures mean something on a busy shared machine. It drives the
// built binary as a separate process on its demo (simulated upstreams,
// loopback), with ghz for gRPC load and a keep-alive Go HTTP loop for REST,
// and prints one table. `make bench` builds the server and runs it.
//
// It lives in a module of its own so that ghz and its dependencies stay out
// of the service's go.mod.
package main

import (
	"context"
	"debug/buildinfo"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

type options struct {
	bin            string
	concurrency    int
	connections    int
	duration       time.Duration
	rounds         int
	warm           time.Duration
	cold           []int
	expiryLifetime time.Duration
	expiryWindow   time.Duration
	runs           map[int]bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.bin, "bin", "../bin/tokenvend", "the tokenvend binary to measure")
	fs.IntVar(&o.concurrency, "c", 50, "concurrent callers in the load runs")
	fs.IntVar(&o.connections, "connections", 1, "gRPC connections the load runs' callers share (ghz)")
	fs.DurationVar(&o.duration, "d", 10*time.Second, "measured time of each side of a pair (call and floor)")
	fs.IntVar(&o.rounds, "rounds", 10, "each side's time is split into this many slices, alternating call and floor")
	fs.DurationVar(&o.warm, "warm", time.Second, "warm-up of each side before it is measured")
	cold := fs.String("cold", "1,100,1000", "cold-start burst sizes: concurrent callers on a cold key")
	fs.DurationVar(&o.expiryLifetime, "expiry-lifetime", 20*time.Second, "token lifetime in the expiry run (refreshed at half of it)")
	fs.DurationVar(&o.expiryWindow, "expiry-window", 3*time.Second, "length of each window of the expiry run")
	runs := fs.String("runs", "1,2,3,4,5,6,7", "which of the runs to do")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.runs = map[int]bool{}
	for _, f := range strings.Split(*runs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 7 {
			return fmt.Errorf("-runs: %q is not a run (1 to 7)", f)
		}
		o.runs[n] = true
	}
	for _, f := range strings.Split(*cold, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-cold: %q is not a number of callers", f)
		}
		o.cold = append(o.cold, n)
	}
	if o.rounds < 1 || o.concurrency < 1 || o.connections < 1 {
		return errors.New("-rounds, -c and -connections must be at least 1")
	}

	began := time.Now()
	bi, err := buildinfo.ReadFile(o.bin)
	if err != nil {
		return fmt.Errorf("%s: %w (run `make build` first, or pass -bin)", o.bin, err)
	}
	loadBefore := loadAvg()
	fmt.Fprintf(stderr, "bench: measuring %s (%s) on %d CPUs; this takes about %s\n", o.bin, bi.GoVersion, runtime.NumCPU(), o.estimate().Round(10*time.Second))

	t := &table{}
	demo := func() (*server, error) {
		return startServer(o.bin, "demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	}

	logins := -1.0
	if o.runs[1] || o.runs[2] || o.runs[3] || o.runs[6] {
		if logins, err = o.steady(ctx, stderr, t, demo); err != nil {
			return err
		}
	}
	if o.runs[4] {
		for _, n := range o.cold {
			progress(stderr, fmt.Sprintf("4. cold start, %d callers", n))
			r, err := coldStart(ctx, demo, "kyc", n)
			if err != nil {
				return fmt.Errorf("run 4 (%d callers): %w", n, err)
			}
			t.cold(r)
		}
		t.note("4: each burst on a fresh demo process; logins read from tokenvend_logins_total before and after; the time runs from the burst's release to the last answer.")
	}
	if o.runs[5] {
		progress(stderr, "5. across an expiry")
		e, err := expiry(ctx, o.bin, o.expiryLifetime, o.expiryWindow, o.warm, o.concurrency, o.connections)
		if err != nil {
			return fmt.Errorf("run 5: %w", err)
		}
		t.expiry(e)
	}
	if o.runs[7] {
		progress(stderr, "7. gRPC GetToken(kyc), cached: redis store vs memory store")
		if err := o.store(ctx, t, demo); err != nil {
			return fmt.Errorf("run 7: %w", err)
		}
	}
	t.sort()

	fmt.Fprintf(stdout, "## tokenvend bench\n\n")
	fmt.Fprintf(stdout, "- machine: %d CPUs (%s), %s/%s; load average %s before, %s after\n", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, loadBefore, loadAvg())
	fmt.Fprintf(stdout, "- server: %s built with %s; harness %s", o.bin, bi.GoVersion, runtime.Version())
	if logins >= 0 {
		fmt.Fprintf(stdout, "; the demo's kyc upstream logged in %.0f time(s) during runs 1-3", logins)
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "- load: %d concurrent callers; gRPC with ghz %s over %d connection(s), REST with a Go keep-alive HTTP loop; each side %s in %d alternating slices after a %s warm-up\n\n",
		o.concurrency, ghzVersion(), o.connections, o.duration, o.rounds, o.warm)
	t.write(stdout)
	fmt.Fprintf(stdout, "\nwhole run: %s\n", time.Since(began).Round(100*time.Millisecond))
	return nil
}

// steady runs 1-3 and 6 on one demo server, warmed by a first GetToken
// (the login), and returns how many upstream logins it made.
func (o options) steady(ctx context.Context, stderr io.Writer, t *table, demo func() (*server, error)) (float64, error) {
	progress(stderr, "starting the demo")
	srv, err := demo()
	if err != nil {
		return 0, err
	}
	defer srv.stop()
	conn, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	tokens := tokenvendv1.NewTokenServiceClient(conn)
	kycReq := &tokenvendv1.GetTokenRequest{Provider: "kyc"}
	if _, err := tokens.GetToken(ctx, kycReq); err != nil {
		return 0, fmt.Errorf("first GetToken(kyc) on the demo: %w", err)
	}
	health := grpcLoad(srv.grpcAddr, "grpc.health.v1.Health.Check", &healthpb.HealthCheckRequest{}, o.connections)
	getToken := func(req *tokenvendv1.GetTokenRequest) load {
		return grpcLoad(srv.grpcAddr, "tokenvend.v1.TokenService.GetToken", req, o.connections)
	}

	if o.runs[1] {
		progress(stderr, "1. gRPC GetToken(kyc) vs Health/Check")
		call, floor, err := pair(ctx, srv.pid(), getToken(kycReq), health, o.concurrency, o.warm, o.duration, o.rounds)
		if err != nil {
			return 0, fmt.Errorf("run 1: %w", err)
		}
		t.pair("1", "gRPC GetToken(kyc), cached, vs Health/Check", call, floor, true, 0.9, 1.2)
	}
	if o.runs[2] {
		progress(stderr, "2. REST GetToken(kyc) vs /healthz")
		base := "http://" + srv.httpAddr
		call, floor, err := pair(ctx, srv.pid(), httpLoad(base+"/v1/providers/kyc/token"), httpLoad(base+"/healthz"), o.concurrency, o.warm, o.duration, o.rounds)
		if err != nil {
			return 0, fmt.Errorf("run 2: %w", err)
		}
		t.pair("2", "REST GET /v1/providers/kyc/token vs GET /healthz", call, floor, false, 0.6, 0)
	}
	if o.runs[3] {
		progress(stderr, "3. gRPC GetToken(loginid) vs Health/Check")
		const title = "gRPC GetToken(loginid), minted per call, vs Health/Check"
		switch req, why, err := loginIDRequest(ctx, tokens); {
		case err != nil:
			return 0, fmt.Errorf("run 3: %w", err)
		case req == nil:
			t.row("3", title, "n/a ("+why+")", "", "", "")
		default:
			call, floor, err := pair(ctx, srv.pid(), getToken(req), health, o.concurrency, o.warm, o.duration, o.rounds)
			if err != nil {
				return 0, fmt.Errorf("run 3: %w", err)
			}
			t.pair("3", title, call, floor, true, 0, 0)
			t.note("3: provider %q, scope %q: a fresh ES256 token per call.", req.GetProvider(), req.GetScope())
		}
	}

	if o.runs[1] || o.runs[2] || o.runs[3] {
		t.note("1-3: the load generator shares the machine's %d CPUs with the server, and its cost per call grows with the answer (GetToken ~600 bytes, health 2): on a small machine it weighs on the requests/s ratio; the server CPU per call is the server's alone.", runtime.NumCPU())
		t.note("1, 3: ghz decodes each reply into its generated Go type, as a caller with generated stubs does, rather than into a message built by reflection (see codec.go).")
	}
	m, err := srv.metrics(ctx)
	if err != nil {
		return 0, err
	}
	rss, peak, err := memory(srv.pid())
	if err != nil {
		return 0, err
	}
	if err := srv.alive(); err != nil {
		return 0, err
	}
	if o.runs[6] {
		t.row("6", "server memory after the runs above: VmRSS (peak VmHWM)", fmt.Sprintf("%s (%s)", mib(rss), mib(peak)), "", "", "")
	}
	return m.sum("tokenvend_logins_total", "provider", "kyc"), srv.stop()
}

// estimate is how long a run takes, roughly.
func (o options) estimate() time.Duration {
	d := 2 * time.Second
	for _, n := range []int{1, 2, 3} {
		if o.runs[n] {
			d += 2*o.warm + 2*o.duration
		}
	}
	if o.runs[4] {
		d += time.Duration(len(o.cold)) * time.Second
	}
	if o.runs[5] {
		d += o.expiryLifetime/2 + 2*o.expiryWindow + o.warm
	}
	if o.runs[7] {
		d += 2*o.warm + 2*o.duration
	}
	return d
}

// loginIDRequest finds the loginid provider through ListProviders and
// returns a GetToken request for it, or nil and why there is none.
func loginIDRequest(ctx context.Context, c tokenvendv1.TokenServiceClient) (*tokenvendv1.GetTokenRequest, string, error) {
	list, err := c.ListProviders(ctx, &tokenvendv1.ListProvidersRequest{})
	if err != nil {
		return nil, "", fmt.Errorf("ListProviders: %w", err)
	}
	for _, p := range list.GetProviders() {
		if p.GetKind() != "loginid" && p.GetName() != "loginid" {
			continue
		}
		req := &tokenvendv1.GetTokenRequest{Provider: p.GetName(), Scope: p.GetDefaultScope()}
		if req.Scope == "" && len(p.GetScopes()) > 0 {
			req.Scope = p.GetScopes()[0]
		}
		if _, err := c.GetToken(ctx, req); err != nil {
			return nil, fmt.Sprintf("GetToken(%s, scope %q) failed: %v", req.Provider, req.Scope, err), nil
		}
		return req, "", nil
	}
	return nil, "no loginid provider", nil
}

func progress(w io.Writer, what string) {
	fmt.Fprintf(w, "bench: %s\n", what)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func ghzVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/bojand/ghz" {
				return d.Version
			}
		}
	}
	return "?"
}
