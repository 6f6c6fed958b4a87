package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strings"
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
