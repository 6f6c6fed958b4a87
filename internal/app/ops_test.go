package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// TestDemoNeverLogsSecrets runs the demo as `make run` does, drives it
// through successes and every kind of failure, and searches everything the
// service wrote (log lines and exported spans) for the password and for
// every token it handed out.
func TestDemoNeverLogsSecrets(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	kycDemo := d.Simulators["kyc"].(*kycsim.Server)
	d.Config.Cache.RejectBackoff = time.Millisecond // so the test can log in again after a rejection
	s := startConfig(t, nil, d.Config)

	var tokens []string
	keep := func(resp *tokenvendv1.GetTokenResponse, err error) {
		if err == nil {
			tokens = append(tokens, resp.GetAccessToken())
		}
	}
	// An outage, then a rejection, then success: each writes its own log
	// lines and spans.
	kycDemo.SetFault(kycsim.Fault{Status: http.StatusBadGateway, Body: "bad gateway"})
	keep(s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"}))
	kycDemo.SetFault(kycsim.Fault{})
	kycDemo.SetPassword(demo.KYCUser, "rotated-elsewhere")
	keep(s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"}))
	kycDemo.SetPassword(demo.KYCUser, demo.KYCPassword)
	eventually(t, "a login after the rejection hold", func() bool {
		resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
		keep(resp, err)
		return err == nil
	})
	keep(s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc", Scope: "admin"}))
	keep(s.get(&tokenvendv1.GetTokenRequest{Provider: "nope"}))
	if r := s.rest(http.MethodGet, "/v1/providers/kyc/token", ""); r.Status == http.StatusOK {
		tokens = append(tokens, r.Body["access_token"].(string))
	}
	if len(tokens) < 2 {
		t.Fatalf("got %d tokens, want at least 2 (the demo must work)", len(tokens))
	}
	if got := useHeaders(t, d.Upstreams["kyc"], map[string]string{"Authorization": "Bearer " + tokens[0]}); got != http.StatusOK {
		t.Errorf("demo token upstream: got %d, want 200", got)
	}

	spans, err := json.Marshal(s.spans.GetSpans())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	written := s.logs.String() + string(spans)
	if strings.Count(written, `"msg":"login failed"`) < 2 || !strings.Contains(written, "tokenvend.login") || !strings.Contains(written, "tokenvend.cache.Get") {
		t.Fatalf("the test saw no failure log or login span: it would prove nothing\n%s", written)
	}
	for _, secret := range append(tokens, demo.KYCPassword) {
		if strings.Contains(written, secret) {
			t.Errorf("a secret or token appears in the logs or spans: %.12s...", secret)
		}
	}
	for _, part := range []string{"Bearer ey", "password="} {
		if strings.Contains(written, part) {
			t.Errorf("logs or spans contain %q", part)
		}
	}
}

func TestOperationalEndpoints(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	s.mustGet("kyc")

	for _, c := range []struct {
		path, want string
	}{
		{"/healthz", "ok"},
		{"/readyz", "ready"},
		{"/openapi.json", `"/v1/token"`},
		{"/metrics", `tokenvend_logins_total{`},
	} {
		r := s.rest(http.MethodGet, c.path, "")
		if r.Status != http.StatusOK || !strings.Contains(r.Raw, c.want) {
			t.Errorf("GET %s: got %d %.200s, want 200 containing %s", c.path, r.Status, r.Raw, c.want)
		}
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal([]byte(s.rest(http.MethodGet, "/openapi.json", "").Raw), &doc); err != nil || doc.Paths["/v1/providers/{provider}/token"] == nil {
		t.Errorf("openapi.json: got %v paths (%v), want the GetToken and ListProviders paths", len(doc.Paths), err)
	}

	health := healthpb.NewHealthClient(s.conn)
	for _, svc := range []string{"", "tokenvend.v1.TokenService", "kyc"} {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: got %v %v, want SERVING", svc, resp.GetStatus(), err)
		}
	}
	if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown provider: got %v, want NotFound", err)
	}

	stream, err := reflectionpb.NewServerReflectionClient(s.conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(resp.GetListServicesResponse().GetService()), "tokenvend.v1.TokenService") {
		t.Errorf("reflection: got %v, want tokenvend.v1.TokenService listed", resp.GetListServicesResponse())
	}
}

// TestGracefulShutdown stops the service while a call waits on a login:
// the call completes, and Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	sim.SetFault(kycsim.Fault{Hang: true})

	result := make(chan error, 1)
	go func() {
		_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
		result <- err
	}()
	eventually(t, "the login to reach the upstream", func() bool { return sim.LoginAttempts() == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop() }()
	eventually(t, "readiness to turn off", func() bool {
		resp, err := http.Get(s.base + "/readyz")
		if err != nil {
			return true // already closed: also not ready
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	select {
	case err := <-stopped:
		t.Fatalf("Serve returned (%v) while a call was in flight", err)
	default:
	}
	sim.SetFault(kycsim.Fault{})
	if err := <-result; err != nil {
		t.Errorf("in-flight call: got %v, want it to finish", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve: got %v, want nil after a clean stop", err)
	}
}

// TestStartFailureIsAnError: a start-up failure (here, a port in use) is
// returned as an error naming the field, not a panic.
func TestStartFailureIsAnError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("server: {grpc_addr: %q, http_addr: '127.0.0.1:0'}\nproviders:\n  - {name: kyc, kind: kyc, base_url: 'http://127.0.0.1:1', username: u, password: p}\n", ln.Addr().String())))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, app.Options{Log: slog.New(slog.DiscardHandler), Audit: io.Discard})
	if err == nil || a != nil || !strings.Contains(err.Error(), "server.grpc_addr") {
		t.Errorf("got %v %v, want an error naming server.grpc_addr", a, err)
	}
}

// TestDemoTokenLifetime: the demo's knob makes kyc tokens short-lived and
// still served from the cache.
func TestDemoTokenLifetime(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	d.SetKYCTokenLifetime(20 * time.Second)
	s := startConfig(t, nil, d.Config)
	first := s.mustGet("kyc")
	if left := time.Until(first.GetExpireTime().AsTime()); left > 20*time.Second || left < 15*time.Second {
		t.Errorf("token lifetime: got %v left, want about 20s", left)
	}
	if again := s.mustGet("kyc"); again.GetAccessToken() != first.GetAccessToken() {
		t.Error("a 20s token was not served from the cache (min_valid not lowered)")
	}
}

// TestRESTHopIsTraced: with tracing on, a REST call is a server span that
// continues the caller's trace and carries the audit event.
func TestRESTHopIsTraced(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, err := http.NewRequest(http.MethodGet, s.base+"/v1/providers/kyc/token", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Traceparent", "00-"+traceID+"-"+parentID+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s", resp.Status)
	}
	for _, sp := range s.spans.GetSpans() {
		if sp.SpanKind != trace.SpanKindServer {
			continue
		}
		if sp.SpanContext.TraceID().String() != traceID || sp.Parent.SpanID().String() != parentID {
			t.Errorf("REST span %q: trace %s, parent %s; want it in the caller's trace", sp.Name, sp.SpanContext.TraceID(), sp.Parent.SpanID())
		}
		for _, e := range sp.Events {
			if e.Name == "tokenvend.audit" {
				return
			}
		}
		t.Fatalf("the REST span %q has no tokenvend.audit event", sp.Name)
	}
	t.Fatalf("no server span among %d", len(s.spans.GetSpans()))
}

// TestRequestAndLookupCounts: /metrics counts every GetToken, by provider
// and code over both ports, and every cache lookup by result; a provider
// no one configured is counted under provider="", not a series of its own.
func TestRequestAndLookupCounts(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	for range 3 {
		s.mustGet("kyc")
	}
	if r := s.rest(http.MethodGet, "/v1/providers/kyc/token", ""); r.Status != http.StatusOK {
		t.Fatalf("REST: %d", r.Status)
	}
	for _, p := range []string{"nope", "nope2"} {
		if _, err := s.get(&tokenvendv1.GetTokenRequest{Provider: p}); status.Code(err) != codes.NotFound {
			t.Fatalf("GetToken(%s): got %v, want NotFound", p, err)
		}
	}
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{"tokenvend_requests_total", `code="OK",provider="kyc"`, 4},
		{"tokenvend_requests_total", `code="NotFound",provider=""`, 2},
		{"tokenvend_requests_total", `provider="nope"`, -1},
		{"tokenvend_cache_lookups_total", `provider="kyc",result="login"`, 1},
		{"tokenvend_cache_lookups_total", `provider="kyc",result="hit"`, 3},
		{"tokenvend_cache_lookups_total", `provider="kyc",result="shared"`, -1},
	} {
		if got := s.metric(c.name, c.labels); got != c.want {
			t.Errorf("%s{%s}: got %v, want %v (-1: no series)", c.name, c.labels, got, c.want)
		}
	}
}
