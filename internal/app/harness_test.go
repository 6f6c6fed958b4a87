package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
)

func newClock() *clocktest.Clock {
	return clocktest.New(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
}

// syncBuffer is a log sink safe for the service's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// service is a running tokenvend on loopback ports.
type service struct {
	t      *testing.T
	client tokenvendv1.TokenServiceClient
	conn   *grpc.ClientConn
	base   string // http://host:port of the HTTP port
	logs   *syncBuffer
	spans  *tracetest.InMemoryExporter
	stop   func() error
	app    *app.App
}

// testServer is the server section startService adds: both ports on
// 127.0.0.1:0.
const testServer = "server:\n  grpc_addr: 127.0.0.1:0\n  http_addr: 127.0.0.1:0\n"

// startService runs the service for the config yaml (the server section
// is added: both ports on 127.0.0.1:0) until the test ends.
func startService(t *testing.T, clk *clocktest.Clock, yaml string) *service {
	t.Helper()
	cfg, err := config.Parse([]byte(testServer + yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return startConfig(t, clk, cfg)
}

func startConfig(t *testing.T, clk *clocktest.Clock, cfg *config.Config) *service {
	t.Helper()
	return startConfigWith(t, clk, cfg, nil)
}

// startConfigWith is startConfig with the service's options adjusted by
// mod (when not nil).
func startConfigWith(t *testing.T, clk *clocktest.Clock, cfg *config.Config, mod func(*app.Options)) *service {
	t.Helper()
	s, grpcAddr, httpAddr := startAppWith(t, clk, cfg, mod)
	var err error
	s.conn, err = grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.conn.Close() })
	s.client = tokenvendv1.NewTokenServiceClient(s.conn)
	s.base = "http://" + httpAddr
	return s
}

// startApp runs the service for cfg until the test ends and returns it
// without clients, for tests that dial it their own way (TLS).
func startApp(t *testing.T, clk *clocktest.Clock, cfg *config.Config) (s *service, grpcAddr, httpAddr string) {
	t.Helper()
	return startAppWith(t, clk, cfg, nil)
}

func startAppWith(t *testing.T, clk *clocktest.Clock, cfg *config.Config, mod func(*app.Options)) (s *service, grpcAddr, httpAddr string) {
	t.Helper()
	s = &service{t: t, logs: &syncBuffer{}, spans: tracetest.NewInMemoryExporter()}
	o := app.Options{
		Log:          slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Audit:        s.logs,
		SpanExporter: s.spans,
		RetryBase:    time.Millisecond,
		DrainDelay:   -1, // each test's stop would wait for it
	}
	if clk != nil {
		o.Now = clk.Now
		// A provider that waits (for a TOTP step, say) moves the fake
		// clock instead of sleeping.
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			clk.Advance(d)
			return nil
		}
	}
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, o)
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	s.app = a
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	s.stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, a.GRPCAddr(), a.HTTPAddr()
}

// get calls GetToken over gRPC with a deadline, so a test that would wait
// forever fails instead.
func (s *service) get(req *tokenvendv1.GetTokenRequest) (*tokenvendv1.GetTokenResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.client.GetToken(ctx, req)
}

func (s *service) mustGet(provider string) *tokenvendv1.GetTokenResponse {
	s.t.Helper()
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: provider})
	if err != nil {
		s.t.Fatalf("GetToken(%s): %v", provider, err)
	}
	return resp
}

// restResult is a REST answer: status and the decoded JSON body.
type restResult struct {
	Status int
	Body   map[string]any
	Raw    string
}

func (s *service) rest(method, path string, body string) restResult {
	s.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.base+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := restResult{Status: resp.StatusCode, Raw: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out.Body); err != nil {
			s.t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
		}
	}
	return out
}

// useHeaders calls a simulator's protected endpoint with the vended
// headers copied onto the request, and returns its status.
func useHeaders(t *testing.T, url string, headers map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// errorInfo returns the google.rpc.ErrorInfo of a gRPC error.
func errorInfo(t *testing.T, err error) (codes.Code, *errdetails.ErrorInfo) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a gRPC status: %v", err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info
		}
	}
	t.Fatalf("status %v has no ErrorInfo", st)
	return 0, nil
}

// serve runs h on a loopback listener until the test ends.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL
}

// eventually polls cond until it holds or 10 s pass: for the few places a
// test must observe another goroutine's progress (a background refresh).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metric returns the value of one Prometheus sample from /metrics, or -1.
func (s *service) metric(name, labels string) float64 {
	s.t.Helper()
	r := s.rest(http.MethodGet, "/metrics", "")
	for _, line := range strings.Split(r.Raw, "\n") {
		if !strings.HasPrefix(line, name+"{") || !containsAll(line, labels) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			return v
		}
	}
	return -1
}

func containsAll(line, labels string) bool {
	for _, l := range strings.Split(labels, ",") {
		if l != "" && !strings.Contains(line, l) {
			return false
		}
	}
	return true
}

// protoJSON renders a request as the REST body a caller would send.
func protoJSON(t *testing.T, m proto.Message) string {
	t.Helper()
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
