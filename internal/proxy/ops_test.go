package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/token"
)

// TestTimeout: an upstream that does not answer within proxy.timeout gets
// the call cancelled, and the caller a 504 from tokenvend.
func TestTimeout(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	released := make(chan struct{})
	e := startEcho(t, func(_ http.ResponseWriter, r *http.Request, _ int) {
		<-r.Context().Done() // hangs until the proxy gives up
		close(released)
	})
	p := startProxy(t, newVendor(t, up), block("kyc", e.url, "      timeout: 100ms\n"), false)
	a := get(t, p.url+"/kyc/slow")
	if a.status != http.StatusGatewayTimeout {
		t.Fatalf("got %d %q, want 504; log:\n%s", a.status, a.body, p.logs.String())
	}
	if code, reason, _ := errorOf(t, a); code != "DEADLINE_EXCEEDED" || reason != proxy.ReasonTimeout {
		t.Errorf("got %s %s, want DEADLINE_EXCEEDED %s", code, reason, proxy.ReasonTimeout)
	}
	<-released
}

// TestUpstreamFailures: no answer, or headers past the limit, is a 502
// from tokenvend that names no address or credential.
func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	huge := startEcho(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("X-Huge", strings.Repeat("h", 300<<10))
	})
	p := startProxy(t, newVendor(t, up), block("gone", closed.URL, "")+block("huge", huge.url, ""), false)
	for _, name := range []string{"gone", "huge"} {
		a := get(t, p.url+"/"+name+"/x?api_key=query-secret")
		if a.status != http.StatusBadGateway {
			t.Errorf("%s: got %d %q, want 502", name, a.status, a.body)
			continue
		}
		if _, reason, msg := errorOf(t, a); reason != proxy.ReasonUpstreamFailed || strings.Contains(msg, "127.0.0.1") {
			t.Errorf("%s: got %s %q, want %s naming no address", name, reason, msg, proxy.ReasonUpstreamFailed)
		}
	}
	// The log says which call failed and why, never the caller's query.
	logs := p.logs.String()
	if strings.Contains(logs, "query-secret") {
		t.Errorf("the log holds the caller's query:\n%s", logs)
	}
	for _, want := range []string{`"provider":"gone"`, `"method":"GET"`, `"path":"/x"`, `"error":"dial tcp`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log has no %s:\n%s", want, logs)
		}
	}
}

// TestRequestHeaderLimit: the proxy's own listener bounds request headers.
func TestRequestHeaderLimit(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := startEcho(t, nil)
	p := startProxy(t, newVendor(t, up), block("kyc", e.url, ""), false)
	a := get(t, p.url+"/kyc/x", "X-Big", strings.Repeat("b", proxy.MaxHeaderBytes+4096))
	if a.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("got %d, want 431", a.status)
	}
	if n := len(e.requests()); n != 0 {
		t.Errorf("upstream got %d requests, want none", n)
	}
}

// TestTelemetry: every request is counted by provider and status, timed,
// traced (a server span and the upstream call's client span under it) and
// audited; no credential appears in any log line or span.
func TestTelemetry(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", up.url, ""), true)
	url := p.url + "/kyc" + kycsim.ResourcePath
	if a := get(t, url, "x-api-key", apiKey); a.status != http.StatusOK {
		t.Fatalf("got %d %q, want 200", a.status, a.body)
	}
	get(t, p.url+"/kyc/api/v1/nothing", "x-api-key", apiKey)
	get(t, p.url+"/nosuch/x", "x-api-key", apiKey)
	tok := v.token()

	var rm metricdata.ResourceMetrics
	if err := p.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	var timed uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name == "tokenvend.proxy.requests" {
					for _, dp := range d.DataPoints {
						pv, _ := dp.Attributes.Value("provider")
						cv, _ := dp.Attributes.Value("code")
						counts[pv.AsString()+" "+cv.AsString()] += dp.Value
					}
				}
			case metricdata.Histogram[float64]:
				if m.Name == "tokenvend.proxy.duration" {
					for _, dp := range d.DataPoints {
						timed += dp.Count
					}
				}
			}
		}
	}
	// nosuch: the caller has no grant for it, so it is told no more.
	want := map[string]int64{"kyc 200": 1, "kyc 404": 1, " 403": 1}
	if len(counts) != len(want) || counts["kyc 200"] != 1 || counts["kyc 404"] != 1 || counts[" 403"] != 1 {
		t.Errorf("got requests %v, want %v", counts, want)
	}
	if timed != 3 {
		t.Errorf("got %d timed requests, want 3", timed)
	}

	lines := auditLines(t, p.logs.String())
	if len(lines) != 3 {
		t.Fatalf("got %d audit lines, want 3", len(lines))
	}
	l := lines[0]
	for k, want := range map[string]any{"caller": "svc", "provider": "kyc", "scope": "default-scope", "subject": "", "method": "GET",
		"status": 200.0, "upstream_status": 200.0, "retried": false, "token_sha256": fingerprint(tok)} {
		if l[k] != want {
			t.Errorf("audit %s: got %v, want %v", k, l[k], want)
		}
	}
	if _, ok := l["trace_id"]; !ok {
		t.Errorf("got audit line %v, want a trace_id", l)
	}
	if strings.Contains(p.logs.String(), tok) || strings.Contains(p.logs.String(), apiKey) {
		t.Errorf("the log holds a credential:\n%s", p.logs.String())
	}

	spans := p.spans.GetSpans()
	var server, client int
	for _, s := range spans {
		switch s.SpanKind.String() {
		case "server":
			server++
		case "client":
			client++
		}
		for _, a := range s.Attributes {
			if strings.Contains(a.Value.Emit(), tok) || strings.Contains(a.Value.Emit(), apiKey) {
				t.Errorf("span %s attribute %s holds a credential", s.Name, a.Key)
			}
		}
		for _, ev := range s.Events {
			for _, a := range ev.Attributes {
				if strings.Contains(a.Value.Emit(), tok) {
					t.Errorf("span %s event %s holds a credential", s.Name, ev.Name)
				}
			}
		}
	}
	if server != 3 || client != 2 {
		t.Errorf("got %d server and %d client spans, want 3 and 2", server, client)
	}
}

// TestCallerFieldsShownBounded: a provider name, scope or subject of many
// kilobytes reaches the audit line, its span event and the error body as
// GetToken shows it (broker.Shown): an excerpt with its length, so no
// caller, identified or not, can write kilobytes a line.
func TestCallerFieldsShownBounded(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	v.fail = func(string, proxy.Request) error {
		return &token.Error{Kind: token.KindInvalid, Reason: "INVALID_SCOPE", Message: "scope is malformed"}
	}
	p := startProxy(t, v, block("kyc", up.url, ""), false)
	long := strings.Repeat("x", 15<<10)
	a := get(t, p.url+"/"+long+"/x")
	if _, reason, msg := errorOf(t, a); a.status != http.StatusNotFound || reason != proxy.ReasonProviderNotFound || len(msg) > 300 {
		t.Errorf("long provider: got %d %s %q, want 404 %s with a short message", a.status, reason, msg, proxy.ReasonProviderNotFound)
	}
	a = get(t, p.url+"/kyc/x", proxy.ScopeHeader, long, proxy.SubjectHeader, long)
	if a.status != http.StatusBadRequest || len(a.body) > 300 {
		t.Errorf("long scope and subject: got %d %q, want a short 400", a.status, a.body)
	}

	lines := auditLines(t, p.logs.String())
	if len(lines) != 2 {
		t.Fatalf("got %d audit lines, want 2", len(lines))
	}
	for i, field := range []string{"provider", "scope"} {
		if s, _ := lines[i][field].(string); !strings.Contains(s, "[15360 bytes]") || len(s) > 64 {
			t.Errorf("audit line %d: got %s %q, want an excerpt giving its length", i, field, s)
		}
	}
	if s, _ := lines[1]["subject"].(string); !strings.Contains(s, "[15360 bytes]") || len(s) > 64 {
		t.Errorf("got subject %q, want an excerpt giving its length", s)
	}
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if len(line) > 1<<10 {
			t.Errorf("a log line of %d bytes: %.200s...", len(line), line)
		}
	}
	events := 0
	for _, s := range p.spans.GetSpans() {
		for _, ev := range s.Events {
			if ev.Name != "tokenvend.proxy.audit" {
				continue
			}
			events++
			for _, a := range ev.Attributes {
				if len(a.Value.Emit()) > 64 {
					t.Errorf("span event attribute %s: %d bytes, want an excerpt", a.Key, len(a.Value.Emit()))
				}
			}
		}
	}
	if events != 2 {
		t.Errorf("got %d audit span events, want 2", events)
	}
}

// failingSink is an audit sink that refuses every write.
type failingSink struct{}

func (failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestAuditWriter: the proxy's audit line goes to the audit writer (the
// service's audit stream), not to the log; a sink that fails is reported
// on the log at error level, while the answer, gone already, stands.
func TestAuditWriter(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	url := "/kyc" + kycsim.ResourcePath

	auditSink := &syncBuffer{}
	p := startProxyAudited(t, newVendor(t, up), startProxyConfig(t, block("kyc", up.url, "")), false, auditSink)
	if a := get(t, p.url+url); a.status != http.StatusOK {
		t.Fatalf("got %d %q, want 200", a.status, a.body)
	}
	if n := len(auditLines(t, auditSink.String())); n != 1 {
		t.Errorf("got %d proxy audit lines in the audit stream, want 1:\n%s", n, auditSink.String())
	}
	if strings.Contains(p.logs.String(), "proxy audit") {
		t.Errorf("the proxy audit line went to the log:\n%s", p.logs.String())
	}

	p = startProxyAudited(t, newVendor(t, up), startProxyConfig(t, block("kyc", up.url, "")), false, failingSink{})
	if a := get(t, p.url+url); a.status != http.StatusOK {
		t.Fatalf("with a failing audit sink: got %d %q, want 200 (the answer has gone before the line)", a.status, a.body)
	}
	var failed bool
	for _, line := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["level"] == "ERROR" && strings.Contains(fmt.Sprint(m["msg"]), "audit") && m["error"] == "disk full" && m["provider"] == "kyc" {
			failed = true
		}
	}
	if !failed {
		t.Errorf("no error-level line reports the failing audit sink:\n%s", p.logs.String())
	}
}

// startProxyConfig parses a providers block.
func startProxyConfig(t *testing.T, providersYAML string) []config.Provider {
	t.Helper()
	cfg, err := config.Parse([]byte("providers:\n" + providersYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg.Providers
}
