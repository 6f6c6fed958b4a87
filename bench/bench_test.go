package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jhump/protoreflect/desc"
	"github.com/jhump/protoreflect/dynamic"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	var lat []time.Duration
	for i := 1; i <= 200; i++ {
		lat = append(lat, time.Duration(i))
	}
	for _, c := range []struct {
		sorted []time.Duration
		p      int
		want   time.Duration
	}{
		{lat, 50, 100},
		{lat, 99, 198},
		{lat, 100, 200},
		{lat[:1], 99, 1},
		{lat[:10], 99, 10},
	} {
		if got := percentile(c.sorted, c.p); got != c.want {
			t.Errorf("p%d of %d latencies: got %d, want %d", c.p, len(c.sorted), got, c.want)
		}
	}
}

func TestMetricsSum(t *testing.T) {
	t.Parallel()
	m := parseMetrics(`# HELP tokenvend_logins_total Upstream logins and refreshes, by outcome.
# TYPE tokenvend_logins_total counter
tokenvend_logins_total{otel_scope_name="tokenvend",outcome="ok",provider="kyc"} 2
tokenvend_logins_total{otel_scope_name="tokenvend",outcome="unavailable",provider="kyc"} 1
tokenvend_logins_total{otel_scope_name="tokenvend",outcome="ok",provider="insly"} 5
tokenvend_cache_lookups_total{provider="kyc",result="hit"} 1e+06
tokenvend_cache_lookups_total{provider="kyc",result="login"} 1
tokenvend_cache_lookups_total{provider="kyc",result="shared"} 999
go_goroutines 12
`)
	for _, c := range []struct {
		name string
		want []string
		sum  float64
	}{
		{"tokenvend_logins_total", []string{"provider", "kyc"}, 3},
		{"tokenvend_logins_total", []string{"provider", "kyc", "outcome", "ok"}, 2},
		{"tokenvend_logins_total", nil, 8},
		{"tokenvend_cache_lookups_total", []string{"provider", "kyc", "result", "!hit"}, 1000},
		{"tokenvend_cache_lookups_total", []string{"provider", "kyc", "result", "hit"}, 1e6},
		{"go_goroutines", nil, 12},
		{"tokenvend_logins_total", []string{"provider", "nope"}, 0},
	} {
		if got := m.sum(c.name, c.want...); got != c.sum {
			t.Errorf("sum(%s, %v): got %v, want %v", c.name, c.want, got, c.sum)
		}
	}
}

func TestCPUTime(t *testing.T) {
	t.Parallel()
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	after, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 3*clockTick {
		t.Errorf("100ms of spinning: CPU time went from %v to %v, want at least %v more", before, after, 3*clockTick)
	}
	if _, err := cpuTime(1 << 30); err == nil {
		t.Error("cpuTime of no process: got no error")
	}
}

// TestStub checks the stub upstream as the kyc client reads it: a form
// login answered with a bearer JWT whose exp is the lifetime from now, and
// fastapi-users' 400 for a wrong password.
func TestStub(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, err := startStub(ctx, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	login := func(password string) (*http.Response, map[string]string) {
		resp, err := http.PostForm(base+"/auth/jwt/login", url.Values{"username": {stubUser}, "password": {password}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	if resp, body := login("wrong"); resp.StatusCode != http.StatusBadRequest || body["detail"] != "LOGIN_BAD_CREDENTIALS" {
		t.Errorf("wrong password: got %d %v, want 400 LOGIN_BAD_CREDENTIALS", resp.StatusCode, body)
	}
	resp, body := login(stubPassword)
	if resp.StatusCode != http.StatusOK || body["token_type"] != "bearer" {
		t.Fatalf("login: got %d %v, want 200 and a bearer token", resp.StatusCode, body)
	}
	parts := strings.Split(body["access_token"], ".")
	if len(parts) != 3 {
		t.Fatalf("access_token: got %d parts, want a JWT", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(time.Unix(claims.Exp, 0)); left < 18*time.Second || left > 20*time.Second {
		t.Errorf("exp: got %v from now, want about 20s", left)
	}
}

func TestTableWrite(t *testing.T) {
	t.Parallel()
	var tb table
	tb.row("2", "b", "1,000/s", "2,000/s", "0.50x", "")
	tb.row("1", "a longer measurement", "1.00 ms", "1.00 ms", "1.00x", goal(true, true, "<= 1.2x"))
	tb.note("a note")
	tb.sort()
	var out strings.Builder
	tb.write(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("got %d lines, want a header, a separator, 2 rows, a blank line and a note:\n%s", len(lines), out.String())
	}
	for _, l := range lines[1:4] {
		if len(l) != len(lines[0]) {
			t.Errorf("row %q is %d wide, want %d like the header", l, len(l), len(lines[0]))
		}
	}
	if !strings.HasPrefix(lines[2], "| 1 | a longer measurement") || !strings.Contains(lines[2], "<= 1.2x: met") {
		t.Errorf("first row: got %q, want run 1 first, its goal met", lines[2])
	}
	if !strings.Contains(lines[1], "---:") {
		t.Errorf("separator %q: want the number columns right-aligned", lines[1])
	}
}

// The codec decodes a reply ghz wants as a dynamic message into the
// generated type, and still refuses one that does not parse.
func TestGeneratedCodec(t *testing.T) {
	t.Parallel()
	md, err := desc.LoadMessageDescriptorForMessage(&tokenvendv1.GetTokenResponse{})
	if err != nil {
		t.Fatal(err)
	}
	c := newGeneratedCodec()
	wire, err := proto.Marshal(&tokenvendv1.GetTokenResponse{AccessToken: "t", Headers: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, dynamic.NewMessage(md)); err != nil {
		t.Fatalf("a GetTokenResponse: %v", err)
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0x0a, 0x05, 'x'})}, dynamic.NewMessage(md)); err == nil {
		t.Fatal("a truncated reply decoded without an error")
	}
	var generated tokenvendv1.GetTokenResponse
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &generated); err != nil || generated.GetHeaders()["a"] != "b" {
		t.Fatalf("into a generated message: %v, %v", err, &generated)
	}
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	runs := func(o options) []int {
		var out []int
		for n := 1; n <= lastRun; n++ {
			if o.runs[n] {
				out = append(out, n)
			}
		}
		return out
	}
	for _, c := range []struct {
		args []string
		runs []int
		err  string
	}{
		{nil, []int{1, 2, 3, 4, 5, 6, 11, 12}, ""},
		{[]string{"-scale"}, []int{7, 8, 9, 10}, ""},
		{[]string{"-runs", "1, 10"}, []int{1, 10}, ""},
		{[]string{"-runs", "13"}, nil, `-runs: "13" is not a run (1 to 12)`},
		{[]string{"-scale-callers", "1,0"}, nil, `-scale-callers: "0" is not a positive number`},
		{[]string{"-cold-callers", "50", "-cold-keys", "100"}, nil, "-cold-callers at least -cold-keys"},
		{[]string{"-idle-conns", "0"}, nil, "-idle-conns"},
	} {
		o, err := parseFlags(c.args, io.Discard)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: got error %v, want one saying %q", c.args, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.args, err)
		case c.err == "" && !slices.Equal(runs(o), c.runs):
			t.Errorf("%q: got runs %v, want %v", c.args, runs(o), c.runs)
		}
	}
	o, err := parseFlags([]string{"-scale", "-scale-callers", "1,10, 100"}, io.Discard)
	if err != nil || !slices.Equal(o.scale.callers, []int{1, 10, 100}) || o.scale.idleConns != 10000 || o.scale.keys != 10000 ||
		o.scale.coldCallers != 10000 || o.scale.coldKeys != 100 {
		t.Errorf("-scale: got %+v, %v; want callers [1 10 100] and 10,000 connections, keys and callers on 100 cold keys", o.scale, err)
	}
}

// Rows and notes are ordered by run number, 10 after 9 (not after 1), and
// a run's own rows stay in the order they were added.
func TestTableSortByRun(t *testing.T) {
	t.Parallel()
	var tb table
	for _, n := range []string{"10", "9", "7", "1", "10"} {
		tb.row(n, "row "+fmt.Sprint(len(tb.rows)))
	}
	tb.note("10: ten")
	tb.note("9: nine")
	tb.note("1-3: one to three")
	tb.sort()
	var got []string
	for _, r := range tb.rows {
		got = append(got, r[0]+" "+r[1])
	}
	if want := []string{"1 row 3", "7 row 2", "9 row 1", "10 row 0", "10 row 4"}; !slices.Equal(got, want) {
		t.Errorf("rows: got %q, want %q", got, want)
	}
	if want := []string{"1-3: one to three", "9: nine", "10: ten"}; !slices.Equal(tb.notes, want) {
		t.Errorf("notes: got %q, want %q", tb.notes, want)
	}
}

// A cold burst meets its goal with one login per key and no failure; any
// other count is shown in the table as MISSED.
func TestColdGoal(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		r    coldResult
		want string
	}{
		{coldResult{callers: 10000, keys: 100, logins: 100}, "100 logins (1 per key): met"},
		{coldResult{callers: 10000, keys: 100, logins: 101}, "100 logins (1 per key): MISSED"},
		{coldResult{callers: 10000, keys: 100, logins: 99}, "100 logins (1 per key): MISSED"},
		{coldResult{callers: 10000, keys: 100, logins: 100, failed: 1, err: "boom"}, "100 logins (1 per key): MISSED"},
		{coldResult{callers: 1000, keys: 1, logins: 1}, "1 login: met"},
		{coldResult{callers: 1000, keys: 1, logins: 2}, "1 login: MISSED"},
	} {
		var tb table
		tb.cold("10", c.r)
		if got := tb.rows[0][5]; got != c.want {
			t.Errorf("%+v: got goal %q, want %q", c.r, got, c.want)
		}
	}
}

func TestKeysGoal(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		fill, again float64
		want        bool
	}{
		{10000, 0, true},
		{9999, 0, false}, // a key shared another's login: not a key of its own
		{10001, 0, false},
		{10000, 1, false}, // a cached key logged in again
	} {
		r := keysResult{keys: 10000, fillLogins: c.fill, againLogins: c.again}
		if got := r.met(); got != c.want {
			t.Errorf("%v logins to fill, %v to ask again: got met %v, want %v", c.fill, c.again, got, c.want)
		}
	}
}

func TestFootprintGrowth(t *testing.T) {
	t.Parallel()
	before := footprint{rss: 20 << 20, heap: 4 << 20, stacks: 1 << 20, goroutines: 80}
	after := footprint{rss: 20<<20 + 10000*(30<<10), heap: 4<<20 + 10000*(20<<10), stacks: 1<<20 + 10000*(8<<10), goroutines: 30080}
	g := after.since(before, 10000)
	if g.rss != 30<<10 || g.heap != 20<<10 || g.stacks != 8<<10 || g.goroutines != 3 {
		t.Errorf("got %+v per connection, want 30 KiB VmRSS, 20 KiB heap, 8 KiB stacks, 3 goroutines", g)
	}
	if g := before.since(after, 10000); g.goroutines != -3 {
		t.Errorf("shrinking: got %v goroutines per connection, want -3", g.goroutines)
	}
}

// footprint reads VmRSS from /proc and the Go runtime's figures from the
// server's /metrics, and refuses a /metrics without them.
func TestFootprint(t *testing.T) {
	t.Parallel()
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	metricsText := "go_goroutines 84\ngo_memstats_heap_inuse_bytes 4.194304e+06\ngo_memstats_stack_inuse_bytes 1.048576e+06\n"
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = io.WriteString(w, metricsText)
			return
		}
		_, _ = io.WriteString(w, "go_goroutines 84\n")
	}))
	defer hs.Close()
	s := &server{cmd: &exec.Cmd{Process: self}, httpAddr: strings.TrimPrefix(hs.URL, "http://")}
	f, err := s.footprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.goroutines != 84 || f.heap != 4<<20 || f.stacks != 1<<20 || f.rss <= 0 {
		t.Errorf("got %+v, want 84 goroutines, 4 MiB heap, 1 MiB stacks and this process's VmRSS", f)
	}
	metricsText = "go_goroutines 84\n"
	if _, err := s.footprint(context.Background()); err == nil {
		t.Error("a /metrics without go_memstats: got no error")
	}
}

func TestOrdinal(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th",
		21: "21st", 22: "22nd", 101: "101st", 111: "111th", 1000: "1,000th", 10000: "10,000th"} {
		if got := ordinal(n); got != want {
			t.Errorf("ordinal(%d): got %q, want %q", n, got, want)
		}
	}
}

func TestParallel(t *testing.T) {
	t.Parallel()
	var calls [1000]atomic.Int32
	if err := parallel(len(calls), 8, func(i int) error { calls[i].Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range calls {
		if n := calls[i].Load(); n != 1 {
			t.Fatalf("f(%d) was called %d times, want once", i, n)
		}
	}
	var ran atomic.Int32
	boom := errors.New("boom")
	err := parallel(1000, 1, func(i int) error {
		ran.Add(1)
		if i == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || ran.Load() != 11 {
		t.Errorf("one worker, f(10) fails: got %v after %d calls, want boom after 11", err, ran.Load())
	}
}

func TestRaiseFileLimit(t *testing.T) {
	t.Parallel()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if err := raiseFileLimit(lim.Cur); err != nil {
		t.Errorf("the current limit: %v", err)
	}
	if lim.Max < 1<<62 {
		if err := raiseFileLimit(lim.Max + 1); err == nil || !strings.Contains(err.Error(), "ulimit -Hn") {
			t.Errorf("above the hard limit: got %v, want an error naming ulimit -Hn", err)
		}
	}
}

// TestInslyStub checks the stub as the insly client reads it: a
// client_credentials login answered with Cognito's authentication_result
// (a ~1 KB token, expires_in, Bearer), and the identifier's IDS10017 for a
// wrong client secret or tenant.
func TestInslyStub(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stub, err := startInslyStub(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := stub.url
	login := func(tenant, secret string) (int, map[string]json.RawMessage) {
		body, _ := json.Marshal(map[string]string{"client_id": stubClientID, "client_secret": secret, "scope": "bench/scope-00001"})
		resp, err := http.Post(base+"/token/client/"+tenant, "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, out
	}
	for _, c := range []struct{ tenant, secret string }{{stubTenant, "wrong"}, {"other", stubSecret}} {
		if code, out := login(c.tenant, c.secret); code != http.StatusBadRequest || !strings.Contains(string(out["errors"]), "IDS10017") {
			t.Errorf("tenant %q, secret %q: got %d %s, want 400 IDS10017", c.tenant, c.secret, code, out["errors"])
		}
	}
	code, out := login(stubTenant, stubSecret)
	var res struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	if code != http.StatusOK || json.Unmarshal(out["authentication_result"], &res) != nil {
		t.Fatalf("login: got %d %v, want 200 and an authentication_result", code, out)
	}
	if len(res.AccessToken) != stubTokenBytes || res.ExpiresIn != 3600 || res.TokenType != "Bearer" {
		t.Errorf("got a %d-byte token, expires_in %d, type %q; want %d bytes, 3600, Bearer", len(res.AccessToken), res.ExpiresIn, res.TokenType, stubTokenBytes)
	}
	if _, again := login(stubTenant, stubSecret); string(again["authentication_result"]) == string(out["authentication_result"]) {
		t.Error("two logins got the same token")
	}
	// http.Post keeps its connection alive between logins.
	if n := stub.conns.Load(); n < 1 || n > 4 {
		t.Errorf("4 logins: got %d connections counted, want 1 to 4", n)
	}
}

// The generated config lists each scope once. When the server is built,
// its own config check accepts it.
func TestInslyConfig(t *testing.T) {
	t.Parallel()
	scopes := benchScopes(1000)
	if len(slices.Compact(slices.Sorted(slices.Values(scopes)))) != 1000 {
		t.Fatal("benchScopes(1000): scopes repeat")
	}
	cfg := inslyConfig("http://127.0.0.1:1", scopes)
	for _, s := range []string{scopes[0], scopes[999]} {
		if n := strings.Count(cfg, fmt.Sprintf("      - %q\n", s)); n != 1 {
			t.Errorf("scope %s listed %d times, want once:\n%.400s", s, n, cfg)
		}
	}
	bin := "../bin/tokenvend"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no %s (make build): the server's config check is skipped", bin)
	}
	path := t.TempDir() + "/tokenvend.yaml"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "check", "--config", path).CombinedOutput(); err != nil {
		t.Errorf("tokenvend check refused the config: %v\n%s", err, out)
	}
}
