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
	"net/http"
	"net/url"
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
	scale          scaleOptions
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

// demoArgs start the demo on ports of its own.
var demoArgs = []string{"demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}

// lastRun is the number of the last run: 1-6, 11 and 12 are `make
// bench`, 7-10 the scaling runs of `make bench-scale`.
const lastRun = 12

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}

	began := time.Now()
	bi, err := buildinfo.ReadFile(o.bin)
	if err != nil {
		return fmt.Errorf("%s: %w (run `make build` first, or pass -bin)", o.bin, err)
	}
	loadBefore := loadAvg()
	fmt.Fprintf(stderr, "bench: measuring %s (%s) on %d CPUs; this takes about %s\n", o.bin, bi.GoVersion, runtime.NumCPU(), o.estimate().Round(10*time.Second))

	t := &table{}
	demo := func() (*server, error) { return startServer(o.bin, demoArgs...) }

	logins := -1.0
	if o.runs[1] || o.runs[2] || o.runs[3] || o.runs[6] || o.runs[11] {
		if logins, err = o.steady(ctx, stderr, t, demo); err != nil {
			return err
		}
	}
	if o.runs[4] {
		for _, n := range o.cold {
			progress(stderr, fmt.Sprintf("4. cold start, %d callers", n))
			r, err := coldStart(ctx, demo, []*tokenvendv1.GetTokenRequest{{Provider: "kyc"}}, n)
			if err != nil {
				return fmt.Errorf("run 4 (%d callers): %w", n, err)
			}
			t.cold("4", r)
		}
		t.note("4: each burst on a fresh demo process; logins read from tokenvend_logins_total before and after; the time runs from the burst's release to the last answer; the baseline is the same burst again, on the cached key.")
	}
	if o.runs[5] {
		progress(stderr, "5. across an expiry")
		e, err := expiry(ctx, o.bin, o.expiryLifetime, o.expiryWindow, o.warm, o.concurrency, o.connections)
		if err != nil {
			return fmt.Errorf("run 5: %w", err)
		}
		t.expiry(e)
	}
	if o.runs[12] {
		progress(stderr, "12. gRPC GetToken(kyc), cached: redis store vs memory store")
		if err := o.store(ctx, t, demo); err != nil {
			return fmt.Errorf("run 12: %w", err)
		}
	}
	if err := o.scaling(ctx, stderr, t, demo); err != nil {
		return err
	}
	t.sort()

	fmt.Fprintf(stdout, "## tokenvend bench\n\n")
	fmt.Fprintf(stdout, "- machine: %d CPUs (%s), %s/%s; load average %s before, %s after\n", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, loadBefore, loadAvg())
	fmt.Fprintf(stdout, "- server: %s built with %s; harness %s", o.bin, bi.GoVersion, runtime.Version())
	if logins >= 0 {
		fmt.Fprintf(stdout, "; the demo's kyc upstream logged in %.0f time(s) during runs 1-3", logins)
	}
	fmt.Fprintln(stdout)
	if o.runs[1] || o.runs[2] || o.runs[3] || o.runs[5] || o.runs[11] {
		fmt.Fprintf(stdout, "- load: %d concurrent callers; gRPC with ghz %s over %d connection(s), REST with a Go keep-alive HTTP loop; each side %s in %d alternating slices after a %s warm-up\n\n",
			o.concurrency, ghzVersion(), o.connections, o.duration, o.rounds, o.warm)
	} else {
		fmt.Fprintf(stdout, "- load: gRPC with ghz %s; each side of a pair %s in %d alternating slices after a %s warm-up\n\n", ghzVersion(), o.duration, o.rounds, o.warm)
	}
	t.write(stdout)
	fmt.Fprintf(stdout, "\nwhole run: %s\n", time.Since(began).Round(100*time.Millisecond))
	return nil
}

// parseFlags reads the command line into options.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var err error
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
	runs := fs.String("runs", "1,2,3,4,5,6,11,12", "which of the runs to do (7 to 10: the scaling runs)")
	scale := fs.Bool("scale", false, "do the scaling runs (7 to 10) instead: the same as -runs 7,8,9,10")
	scaleCallers := fs.String("scale-callers", "1,10,100,1000", "run 7: concurrent callers at each step")
	fs.IntVar(&o.scale.idleConns, "idle-conns", 10000, "run 8: idle gRPC connections held open")
	fs.IntVar(&o.scale.keys, "keys", 10000, "run 9: cached keys (scopes of one insly provider)")
	fs.IntVar(&o.scale.coldCallers, "cold-callers", 10000, "run 10: callers at once on cold keys")
	fs.IntVar(&o.scale.coldKeys, "cold-keys", 100, "run 10: the cold keys those callers spread over")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *scale {
		*runs = "7,8,9,10"
	}
	o.runs = map[int]bool{}
	for _, f := range strings.Split(*runs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > lastRun {
			return o, fmt.Errorf("-runs: %q is not a run (1 to %d)", f, lastRun)
		}
		o.runs[n] = true
	}
	if o.cold, err = counts(*cold); err != nil {
		return o, fmt.Errorf("-cold: %w", err)
	}
	if o.scale.callers, err = counts(*scaleCallers); err != nil {
		return o, fmt.Errorf("-scale-callers: %w", err)
	}
	if o.scale.idleConns < 1 || o.scale.keys < 1 || o.scale.coldKeys < 1 || o.scale.coldCallers < o.scale.coldKeys {
		return o, errors.New("-idle-conns, -keys and -cold-keys must be at least 1, and -cold-callers at least -cold-keys")
	}
	if o.rounds < 1 || o.concurrency < 1 || o.connections < 1 {
		return o, errors.New("-rounds, -c and -connections must be at least 1")
	}
	return o, nil
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
		t.pair("1", "gRPC GetToken(kyc), cached, vs Health/Check", call, floor, true, 0.95, 1.1, 1.1) // issue 18
	}
	if o.runs[2] {
		progress(stderr, "2. REST GetToken(kyc) vs /healthz")
		base := "http://" + srv.httpAddr
		call, floor, err := pair(ctx, srv.pid(), httpLoad(base+"/v1/providers/kyc/token"), httpLoad(base+"/healthz"), o.concurrency, o.warm, o.duration, o.rounds)
		if err != nil {
			return 0, fmt.Errorf("run 2: %w", err)
		}
		t.pair("2", "REST GET /v1/providers/kyc/token vs GET /healthz", call, floor, false, 0.8, 0, 0) // issue 18
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
			t.pair("3", title, call, floor, true, 0.75, 0, 0) // issue 18
			t.note("3: provider %q, scope %q: a fresh ES256 token per call.", req.GetProvider(), req.GetScope())
		}
	}

	if o.runs[11] {
		progress(stderr, "11. a call to kyc's protected endpoint through the proxy vs made directly")
		if err := proxyRun(ctx, srv, tokens, o, t); err != nil {
			return 0, fmt.Errorf("run 11: %w", err)
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
	for _, n := range []int{1, 2, 3, 11} {
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
	if o.runs[12] {
		d += 2*o.warm + 2*o.duration
	}
	return d + o.scale.estimate(o)
}

// counts parses a comma-separated list of positive numbers.
func counts(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
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

// started is when the harness started, for the progress lines.
var started = time.Now()

// progress says what the harness is doing, and how long it has run.
func progress(w io.Writer, what string) {
	fmt.Fprintf(w, "bench: [%s] %s\n", time.Since(started).Round(time.Second), what)
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

// proxyRun is run 11: the demo's kyc protected endpoint called through
// proxy mode (which gets the credential and attaches it) against the same
// call made directly with a credential got once: what the proxy costs on
// top of the upstream.
func proxyRun(ctx context.Context, srv *server, tokens tokenvendv1.TokenServiceClient, o options, t *table) error {
	direct := srv.upstreams["kyc"]
	if srv.proxyAddr == "" || direct == "" {
		t.row("11", "proxied call vs direct", "n/a (the demo has no proxy port or no kyc upstream)", "", "", "")
		return nil
	}
	u, err := url.Parse(direct)
	if err != nil {
		return err
	}
	resp, err := tokens.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if err != nil {
		return err
	}
	header := http.Header{}
	for k, v := range resp.GetHeaders() {
		header.Set(k, v)
	}
	proxied := "http://" + srv.proxyAddr + "/kyc" + u.RequestURI()
	call, floor, err := pair(ctx, srv.pid(), httpLoad(proxied), httpLoadHeaders(direct, header), o.concurrency, o.warm, o.duration, o.rounds)
	if err != nil {
		return err
	}
	t.pair("11", "GET kyc's protected endpoint through the proxy vs directly with a GetToken'd credential", call, floor, false, 0, 0, 0)
	t.note("11: the server's CPU includes the demo's simulated upstream, which runs in its process; the proxied side adds a GetToken (with its audit line), the proxy's own audit line and a second HTTP hop.")
	return nil
}
