package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera/ibanerasim"
	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
	"github.com/tokenvend/tokenvend/internal/provider/insly/inslysim"
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
	logs := &syncBuffer{}
	proxyBase, restBase, d := startProxyAppTo(t, callers, logs, logs)
	return proxyBase, restBase, d, logs
}

// startProxyAppTo is startProxyApp with the log and the audit stream
// written where the test says.
func startProxyAppTo(t *testing.T, callers []config.Caller, logs, auditSink io.Writer) (proxyBase, restBase string, _ *demo.Demo) {
	t.Helper()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	d.Config.Callers = callers
	log := slog.New(slog.NewJSONHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, d.Config, app.Options{Log: log, Audit: auditSink, RetryBase: time.Millisecond, DrainDelay: -1})
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
	return "http://" + a.ProxyAddr(), "http://" + a.HTTPAddr(), d
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

// TestProxyModeAuditStream: the proxy's audit line goes to the audit
// stream (Options.Audit), with GetToken's line for its credential, and
// neither to the log.
func TestProxyModeAuditStream(t *testing.T) {
	t.Parallel()
	logs, auditSink := &syncBuffer{}, &syncBuffer{}
	base, _, d := startProxyAppTo(t, nil, logs, auditSink)
	if code, _, body := proxied(t, http.MethodGet, viaProxy(base, d, "kyc"), ""); code != http.StatusOK {
		t.Fatalf("got %d %s, want 200", code, body)
	}
	for _, msg := range []string{`"msg":"proxy audit"`, `"msg":"audit"`} {
		if n := strings.Count(auditSink.String(), msg); n != 1 {
			t.Errorf("%s lines in the audit stream: got %d, want 1:\n%s", msg, n, auditSink.String())
		}
		if strings.Contains(logs.String(), msg) {
			t.Errorf("a %s line went to the log:\n%s", msg, logs.String())
		}
	}
}

// revokedCase is one kind's revocation: revoke kills the credential the
// proxy holds, fresh counts the upstream's fresh credentials (logins, or
// refreshes for insly), calls its protected-endpoint requests.
type revokedCase struct {
	provider      string
	method, body  string
	header        []string
	revoke        func(t *testing.T, tok string)
	fresh, calls  func() int64
	wantCallDelta int64 // protected-endpoint requests after the revocation
}

// TestProxyModeRecoversARevokedToken: for every kind that caches a
// credential it can get again unattended, a credential the upstream has
// revoked is recovered through the proxy with ONE fresh credential and ONE
// replay, and the caller sees only the 200.
func TestProxyModeRecoversARevokedToken(t *testing.T) {
	t.Parallel()
	base, rest, d, logs := startProxyApp(t, nil)
	kycSim := d.Simulators["kyc"].(*kycsim.Server)
	inslySim := d.Simulators["insly"].(*inslysim.Server)
	for _, tc := range []revokedCase{
		{
			provider: "kyc", method: http.MethodGet,
			revoke: func(t *testing.T, tok string) {
				kycSim.Revoke(tok)
				kycSim.SetLifetime(2 * time.Hour) // so the next login's token differs
			},
			fresh: kycSim.Logins, calls: kycSim.ResourceCalls,
			wantCallDelta: 1, // kycsim counts the calls it accepts: the replay only
		},
		{
			provider: "insly", method: http.MethodGet,
			revoke: func(t *testing.T, tok string) { inslySim.Revoke(tok) },
			// A login or a refresh: either is one fresh credential.
			fresh: func() int64 { return inslySim.Refreshes() + inslySim.Logins() }, calls: inslySim.PolicyCalls,
			wantCallDelta: 2, // the refused call and its replay
		},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			recoversARevokedToken(t, base, rest, d, logs, tc)
		})
	}
}

// recoversARevokedToken makes a call through the proxy, revokes the token
// it was made with, and makes it again.
func recoversARevokedToken(t *testing.T, proxyBase, restBase string, d *demo.Demo, logs *syncBuffer, tc revokedCase) {
	t.Helper()
	url := viaProxy(proxyBase, d, tc.provider)
	if code, _, body := proxied(t, tc.method, url, tc.body, tc.header...); code != http.StatusOK {
		t.Fatalf("first call: got %d %s", code, body)
	}
	// The token the proxy has been using is the one GetToken gives now.
	_, _, body := proxied(t, http.MethodGet, restBase+"/v1/providers/"+tc.provider+"/token", "")
	var vended struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &vended); err != nil || vended.AccessToken == "" {
		t.Fatalf("GetToken: %s (%v)", body, err)
	}
	fresh, calls := tc.fresh(), tc.calls()
	tc.revoke(t, vended.AccessToken)
	retried := strings.Count(logs.String(), `"retried":true`)
	if code, _, body := proxied(t, tc.method, url, tc.body, tc.header...); code != http.StatusOK {
		t.Fatalf("call after the revocation: got %d %s, want 200 (invalidated, a fresh credential, replayed)", code, body)
	}
	if n := tc.fresh() - fresh; n != 1 {
		t.Errorf("fresh credentials from the upstream: got %d, want 1", n)
	}
	if n := tc.calls() - calls; n != tc.wantCallDelta {
		t.Errorf("protected-endpoint calls: got %d, want %d (one replay)", n, tc.wantCallDelta)
	}
	if n := strings.Count(logs.String(), `"retried":true`) - retried; n != 1 {
		t.Errorf("proxy audit lines saying retried: got %d, want 1:\n%s", n, logs.String())
	}
}

// TestProxyModeIbaneraRecoversARevokedSession: Ibanera's recovery, on the
// fake clock (the demo's simulator is on the real one): the fresh login
// waits for the next TOTP step, which a real clock would make a test wait
// up to 30s for; the replay carries a fresh code of that step.
func TestProxyModeIbaneraRecoversARevokedSession(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := ibaneraSim(t, clk)
	cfg, err := config.Parse([]byte(testServer + "  proxy_addr: 127.0.0.1:0\nproviders:" +
		ibaneraProvider(url, ibaneraPassword, fmt.Sprintf("    proxy:\n      upstream: %q\n", url))))
	if err != nil {
		t.Fatal(err)
	}
	s := startConfig(t, clk, cfg)
	proxyURL := "http://" + s.app.ProxyAddr() + "/ibanera" + ibanerasim.AccountsPath
	if code, _, body := proxied(t, http.MethodGet, proxyURL, ""); code != http.StatusOK {
		t.Fatalf("first call: got %d %s", code, body)
	}
	clk.Advance(10 * time.Second) // within the first login's step: the next login must wait
	sim.Revoke(s.mustGet("ibanera").GetAccessToken())
	if code, _, body := proxied(t, http.MethodGet, proxyURL, ""); code != http.StatusOK {
		t.Fatalf("call after the revocation: got %d %s, want 200 (invalidated, logged in again, replayed)", code, body)
	}
	if n := sim.Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2 (one re-login)", n)
	}
	if n := sim.FailedLogins(); n != 0 {
		t.Errorf("failed logins: got %d, want 0 (the re-login waits for a fresh step)", n)
	}
	if n := sim.AccountCalls(); n != 3 {
		t.Errorf("protected-endpoint calls: got %d, want 3 (first, refused, one replay)", n)
	}
	if n := strings.Count(s.logs.String(), `"retried":true`); n != 1 {
		t.Errorf("proxy audit lines saying retried: got %d, want 1", n)
	}
}

// TestProxyModeIdentityXRevokedToken: IdentityX is the kind the proxy
// cannot recover: it refuses a revoked token in a GraphQL error with HTTP
// 200, which no retry_statuses can name, and its tokens cannot be got again
// unattended anyway (a person enrols one). Its answer comes back as it
// is, after one upstream request: nothing is invalidated or replayed (the
// provider's check_interval finds the revocation).
func TestProxyModeIdentityXRevokedToken(t *testing.T) {
	t.Parallel()
	base, rest, d, logs := startProxyApp(t, nil)
	sim := d.Simulators["identityx"].(*identityxsim.Server)
	url := viaProxy(base, d, "identityx")
	query := `{"query":"{ activeUser { id } }"}`
	if code, _, body := proxied(t, http.MethodPost, url, query, "Content-Type", "application/json"); code != http.StatusOK || strings.Contains(body, "errors") {
		t.Fatalf("first call: got %d %s", code, body)
	}
	_, _, body := proxied(t, http.MethodGet, rest+"/v1/providers/identityx/token", "")
	var vended struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &vended); err != nil || !sim.Revoke(vended.AccessToken) {
		t.Fatalf("GetToken: %s (%v), or not a live token", body, err)
	}
	queries := sim.Queries()
	code, h, body := proxied(t, http.MethodPost, url, query, "Content-Type", "application/json")
	if code != http.StatusOK || h.Get("Tokenvend-Error") != "" || !strings.Contains(body, `"UNAUTHENTICATED"`) {
		t.Errorf("after the revocation: got %d %q %s, want the upstream's own GraphQL refusal", code, h.Get("Tokenvend-Error"), body)
	}
	if n := sim.Queries() - queries; n != 1 {
		t.Errorf("upstream queries: got %d, want 1 (no check, no replay)", n)
	}
	if strings.Contains(logs.String(), `"retried":true`) {
		t.Errorf("a proxy audit line says retried")
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
