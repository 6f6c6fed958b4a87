package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/kyc"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

const (
	kycUser     = "ops@example.com"
	kycPassword = "proxy-test-password"
	// apiKey identifies the caller "svc" to the policy of startProxy.
	apiKey = "proxy-test-api-key"
)

// kycUpstream is a kycsim on loopback whose clock the test moves.
type kycUpstream struct {
	sim   *kycsim.Server
	clock *clocktest.Clock
	url   string
}

func startKYC(t testing.TB) *kycUpstream {
	t.Helper()
	clk := clocktest.New(time.Now())
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: kycUser, Password: kycPassword}}, Now: clk.Now})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &kycUpstream{sim: sim, clock: clk, url: srv.URL}
}

// vendor is a hand-written Vendor over the real kyc client, logged in to a
// real kycsim: a one-token cache that Invalidate drops, as the service's
// does. fail, when set, decides the answer to a Vend instead.
type vendor struct {
	src token.Source

	mu            sync.Mutex
	cur           *token.Token
	fail          func(caller string, r proxy.Request) error
	invalidateErr error
	perCall       int // > 0: every credential gets a fresh Otp header
	vends         []proxy.Request
	callers       []string
	invalidated   []string // "token status"
}

func newVendor(t testing.TB, up *kycUpstream) *vendor {
	t.Helper()
	cfg := kyc.Config{BaseURL: up.url, Username: kycUser, Password: secret.Literal(kycPassword)}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &vendor{src: kyc.New(cfg, http.DefaultClient, time.Now)}
}

func (v *vendor) Vend(ctx context.Context, caller string, r proxy.Request) (proxy.Credential, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.vends = append(v.vends, r)
	v.callers = append(v.callers, caller)
	if v.fail != nil {
		if err := v.fail(caller, r); err != nil {
			return proxy.Credential{}, err
		}
	}
	if v.cur == nil {
		t, err := v.src.Token(ctx, token.Request{Scope: r.Scope})
		if err != nil {
			return proxy.Credential{}, err
		}
		v.cur = t
	}
	t := v.cur
	if v.perCall > 0 {
		v.perCall++
		t = t.WithHeaders(map[string]string{"Otp": fmt.Sprint(v.perCall)})
	}
	scope := r.Scope
	if scope == "" {
		scope = "default-scope"
	}
	return proxy.Credential{Headers: t.Headers, AccessToken: t.AccessToken, Scope: scope, Fingerprint: fingerprint(t.AccessToken)}, nil
}

func (v *vendor) Invalidate(_ context.Context, _ string, _ proxy.Request, tok string, status int) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.invalidated = append(v.invalidated, fmt.Sprintf("%s %d", tok, status))
	if v.invalidateErr != nil {
		return false, v.invalidateErr
	}
	if v.cur != nil && v.cur.AccessToken == tok {
		v.cur = nil
		return true, nil
	}
	return false, nil
}

// token is the credential the vendor holds now.
func (v *vendor) token() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur == nil {
		return ""
	}
	return v.cur.AccessToken
}

func (v *vendor) counts() (vends, invalidations int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.vends), len(v.invalidated)
}

func fingerprint(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:8])
}

// syncBuffer is a log sink safe for the proxy's goroutines.
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

// running is a proxy on a loopback port, served by its own http.Server.
type running struct {
	url     string
	addr    string
	logs    *syncBuffer
	spans   *tracetest.InMemoryExporter
	metrics *sdkmetric.ManualReader
}

// startProxy serves a proxy for the providers block yaml (a list of
// providers with proxy blocks) in front of v. With callers, the policy
// knows one caller, "svc", identified by apiKey.
func startProxy(t testing.TB, v proxy.Vendor, providersYAML string, callers bool) *running {
	t.Helper()
	cfg, err := config.Parse([]byte("providers:\n" + providersYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return startProxyFor(t, v, cfg.Providers, callers)
}

// startProxyFor serves a proxy for configured providers; its audit lines
// go to its logs.
func startProxyFor(t testing.TB, v proxy.Vendor, providers []config.Provider, callers bool) *running {
	t.Helper()
	return startProxyAudited(t, v, providers, callers, nil)
}

// startProxyAudited is startProxyFor with the audit lines written to
// auditSink (nil: the logs).
func startProxyAudited(t testing.TB, v proxy.Vendor, providers []config.Provider, callers bool, auditSink io.Writer) *running {
	t.Helper()
	var cs []config.Caller
	if callers {
		sum := sha256.Sum256([]byte(apiKey))
		// svc has a grant for every configured provider, proxied or not.
		var grants []config.Grant
		for _, p := range providers {
			grants = append(grants, config.Grant{Provider: p.Name, Scopes: []string{"*"}})
		}
		cs = []config.Caller{{ID: "svc", APIKeySHA256: hex.EncodeToString(sum[:]), Allow: grants}}
	}
	r := &running{logs: &syncBuffer{}, spans: tracetest.NewInMemoryExporter(), metrics: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(r.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.metrics))
	if auditSink == nil {
		auditSink = r.logs
	}
	p, err := proxy.New(providers, v, proxy.Options{
		Policy: auth.New(cs),
		Log:    slog.New(slog.NewJSONHandler(r.logs, nil)),
		Audit:  audit.New(auditSink),
		Meter:  mp.Meter("tokenvend"),
		Tracer: tp,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = p.Server()
	srv.Start()
	t.Cleanup(srv.Close)
	r.url, r.addr = srv.URL, srv.Listener.Addr().String()
	return r
}

// block is one provider's config with a proxy block in front of upstream.
func block(name, upstream, extra string) string {
	return fmt.Sprintf("  - name: %s\n    kind: kyc\n    proxy:\n      upstream: %q\n%s", name, upstream, extra)
}

// noRedirects is a client that shows a 3xx as it came.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

type answer struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func get(t *testing.T, url string, header ...string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return do(t, req)
}

// raw sends a request line and headers as written, so targets no client
// would send ("GET http://evil/ HTTP/1.1", "..") reach the proxy.
func raw(t *testing.T, addr, requestLine string) answer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s\r\nHost: %s\r\nConnection: close\r\n\r\n", requestLine, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", requestLine, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// errorOf decodes a tokenvend answer, checking its header matches.
func errorOf(t *testing.T, a answer) (code, reason, message string) {
	t.Helper()
	var body struct{ Code, Reason, Message string }
	if err := json.Unmarshal([]byte(a.body), &body); err != nil {
		t.Fatalf("got body %q, want tokenvend's JSON error: %v", a.body, err)
	}
	if got := a.header.Get(proxy.ErrorHeader); got != body.Reason || got == "" {
		t.Errorf("got %s %q, want the body's reason %q", proxy.ErrorHeader, got, body.Reason)
	}
	return body.Code, body.Reason, body.Message
}

// echo is an upstream that records each request and answers with answer
// (200 and "ok" when nil).
type echo struct {
	mu     sync.Mutex
	reqs   []*http.Request
	bodies []string
	url    string
}

func startEcho(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, n int)) *echo {
	t.Helper()
	e := &echo{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.reqs = append(e.reqs, r)
		e.bodies = append(e.bodies, string(b))
		n := len(e.reqs)
		e.mu.Unlock()
		if answer != nil {
			answer(w, r, n)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

func (e *echo) requests() []*http.Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*http.Request(nil), e.reqs...)
}

// auditLines are the proxy's audit lines, decoded.
func auditLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue // no line at all
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "proxy audit" {
			out = append(out, m)
		}
	}
	return out
}
