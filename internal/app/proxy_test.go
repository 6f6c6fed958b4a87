package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// startProxyDemo runs the real service on the demo, whose providers are all
// proxied, with callers when given; it returns the proxy's base URL.
func startProxyDemo(t *testing.T, callers []config.Caller) (string, *demo.Demo, *syncBuffer) {
	base, _, d, logs := startProxyApp(t, callers)
	return base, d, logs
}

// startProxyApp is startProxyDemo, with the base URL of the HTTP port too.
func startProxyApp(t *testing.T, callers []config.Caller) (proxyBase, restBase string, _ *demo.Demo, _ *syncBuffer) {
	t.Helper()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	d.Config.Callers = callers
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, d.Config, app.Options{Log: log, Audit: logs, RetryBase: time.Millisecond, DrainDelay: -1})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if a.ProxyAddr() == "" {
		t.Fatal("the demo's proxy port is not listening")
	}
	return "http://" + a.ProxyAddr(), "http://" + a.HTTPAddr(), d, logs
}

// viaProxy is the proxy URL of a demo provider's protected endpoint.
func viaProxy(base string, d *demo.Demo, provider string) string {
	direct := strings.TrimPrefix(d.Upstreams[provider], "http://")
	return base + "/" + provider + direct[strings.Index(direct, "/"):]
}

func proxied(t *testing.T, method, url, body string, header ...string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestProxyModeEveryKind(t *testing.T) {
	t.Parallel()
	base, d, logs := startProxyDemo(t, nil)
	for _, tc := range []struct {
		provider, method, body string
		header                 []string
	}{
		{provider: "kyc", method: http.MethodGet},
		{provider: "insly", method: http.MethodGet},
		{provider: "ibanera", method: http.MethodGet},
		{provider: "loginid", method: http.MethodGet, header: []string{"Tokenvend-Scope", "users.retrieve"}},
		{provider: "loginid", method: http.MethodGet, header: []string{"Tokenvend-Scope", "users.retrieve"}}, // a fresh single-use token
		{provider: "identityx", method: http.MethodPost, body: `{"query":"{ activeUser { id } }"}`, header: []string{"Content-Type", "application/json"}},
	} {
		header := append([]string{"Authorization", "Bearer the-caller's-own", "x-api-key", "caller-key"}, tc.header...)
		if code, _, body := proxied(t, tc.method, viaProxy(base, d, tc.provider), tc.body, header...); code != http.StatusOK {
			t.Errorf("%s through the proxy: got %d %s, want 200", tc.provider, code, body)
		}
	}
	if n := strings.Count(logs.String(), `"msg":"proxy audit"`); n != 6 {
		t.Errorf("proxy audit lines: got %d, want 6", n)
	}
	if n := strings.Count(logs.String(), `"msg":"audit"`); n != 6 {
		t.Errorf("GetToken audit lines of proxied calls: got %d, want 6 (the proxy vends through the GetToken path)", n)
	}
}

func TestProxyModeRecoversARevokedToken(t *testing.T) {
	t.Parallel()
	base, rest, d, logs := startProxyApp(t, nil)
	sim := d.Simulators["kyc"].(*kycsim.Server)
	url := viaProxy(base, d, "kyc")
	if code, _, body := proxied(t, http.MethodGet, url, ""); code != http.StatusOK {
		t.Fatalf("first call: got %d %s", code, body)
	}
	// The upstream revokes the token the proxy has been using.
	_, _, body := proxied(t, http.MethodGet, rest+"/v1/providers/kyc/token", "")
	tok, _, _ := strings.Cut(strings.TrimPrefix(body, `{"access_token":"`), `"`)
	sim.Revoke(tok)
	sim.SetLifetime(2 * time.Hour) // so the next login's token differs
	if code, _, body := proxied(t, http.MethodGet, url, ""); code != http.StatusOK {
		t.Fatalf("call after the revocation: got %d %s, want 200 (invalidated, logged in again, replayed)", code, body)
	}
	if n := sim.Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2", n)
	}
	if !strings.Contains(logs.String(), `"retried":true`) {
		t.Errorf("no proxy audit line says retried:\n%s", logs.String())
	}
}

func TestProxyModeIdentityAndGrants(t *testing.T) {
	t.Parallel()
	key, otherKey := "proxy-key-1", "proxy-key-2"
	hash := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	base, d, _ := startProxyDemo(t, []config.Caller{
		{ID: "key:kyc", APIKeySHA256: hash(key), Allow: []config.Grant{{Provider: "kyc"}}},
		{ID: "key:other", APIKeySHA256: hash(otherKey), Allow: []config.Grant{{Provider: "insly"}}},
	})
	url := viaProxy(base, d, "kyc")
	for _, tc := range []struct {
		name   string
		header []string
		want   int
		reason string
	}{
		{"unidentified", nil, http.StatusUnauthorized, "CALLER_UNIDENTIFIED"},
		{"no grant", []string{"x-api-key", otherKey}, http.StatusForbidden, "CALLER_NOT_ALLOWED"},
		{"granted", []string{"x-api-key", key}, http.StatusOK, ""},
	} {
		code, h, body := proxied(t, http.MethodGet, url, "", tc.header...)
		if code != tc.want || h.Get("Tokenvend-Error") != tc.reason {
			t.Errorf("%s: got %d, Tokenvend-Error %q (%s); want %d, %q", tc.name, code, h.Get("Tokenvend-Error"), body, tc.want, tc.reason)
		}
	}
	// A caller without a grant learns nothing of which providers exist.
	_, h1, _ := proxied(t, http.MethodGet, base+"/nope/x", "", "x-api-key", otherKey)
	_, h2, _ := proxied(t, http.MethodGet, url, "", "x-api-key", otherKey)
	if h1.Get("Tokenvend-Error") != h2.Get("Tokenvend-Error") {
		t.Errorf("unknown vs ungranted provider: %q vs %q, want the same answer", h1.Get("Tokenvend-Error"), h2.Get("Tokenvend-Error"))
	}
}
