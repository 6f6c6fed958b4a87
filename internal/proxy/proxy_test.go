package proxy_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/token"
)

// TestCallWithTheVendedCredential: a proxied call reaches the simulator's
// protected endpoint with the credential the Vendor logged in for, and the
// simulator's answer comes back as it is.
func TestCallWithTheVendedCredential(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", up.url, ""), false)

	a := get(t, p.url+"/kyc"+kycsim.ResourcePath, "Authorization", "Bearer the-callers-own")
	if a.status != http.StatusOK || !strings.Contains(a.body, kycUser) {
		t.Fatalf("got %d %q, want 200 naming %s", a.status, a.body, kycUser)
	}
	if a.header.Get(proxy.ErrorHeader) != "" {
		t.Errorf("got %s %q on the upstream's answer, want none", proxy.ErrorHeader, a.header.Get(proxy.ErrorHeader))
	}
	if n := up.sim.ResourceCalls(); n != 1 {
		t.Errorf("got %d accepted resource calls, want 1", n)
	}
	// An upstream cannot pass for tokenvend.
	e := startEcho(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set(proxy.ErrorHeader, "CREDENTIALS_REJECTED")
		w.Header().Set("X-Upstream", "kept")
		w.WriteHeader(http.StatusBadGateway)
	})
	p2 := startProxy(t, v, block("fake", e.url, ""), false)
	if a := get(t, p2.url+"/fake/x"); a.status != http.StatusBadGateway || a.header.Get(proxy.ErrorHeader) != "" || a.header.Get("X-Upstream") != "kept" {
		t.Errorf("got %d %s %q X-Upstream %q, want the upstream's 502 without %s", a.status, proxy.ErrorHeader, a.header.Get(proxy.ErrorHeader), a.header.Get("X-Upstream"), proxy.ErrorHeader)
	}
	// The upstream's refusal (an unknown path) comes back as it is.
	a = get(t, p.url+"/kyc/api/v1/nothing")
	if a.status != http.StatusNotFound || a.body != `{"detail":"Not Found"}` || a.header.Get(proxy.ErrorHeader) != "" {
		t.Errorf("got %d %q (%s %q), want the simulator's own 404", a.status, a.body, proxy.ErrorHeader, a.header.Get(proxy.ErrorHeader))
	}
}

// TestPathAndQuery: {proxy}/{provider}/{path}?{query} goes to
// {upstream}/{path}?{query}, below the upstream's own path, escapes kept.
func TestPathAndQuery(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := startEcho(t, nil)
	p := startProxy(t, newVendor(t, up), block("kyc", e.url+"/base/", "")+block("root", e.url, ""), false)
	for _, tc := range []struct{ target, path, escaped, query string }{
		{"/kyc/users/me?x=1&y=%20z", "/base/users/me", "/base/users/me", "x=1&y=%20z"},
		{"/kyc/a%20b/c.d/..e/", "/base/a b/c.d/..e/", "/base/a%20b/c.d/..e/", ""},
		{"/kyc", "/base/", "/base/", ""},
		{"/kyc/", "/base/", "/base/", ""},
		{"/root/v1/x?q", "/v1/x", "/v1/x", "q"},
		{"/root", "/", "/", ""},
	} {
		before := len(e.requests())
		if a := raw(t, p.addr, "GET "+tc.target+" HTTP/1.1"); a.status != http.StatusOK {
			t.Errorf("%s: got %d %q, want 200", tc.target, a.status, a.body)
			continue
		}
		reqs := e.requests()
		if len(reqs) != before+1 {
			t.Fatalf("%s: got %d upstream requests, want 1", tc.target, len(reqs)-before)
		}
		r := reqs[len(reqs)-1]
		if r.Host != strings.TrimPrefix(e.url, "http://") {
			t.Errorf("%s: upstream got Host %q, want its own", tc.target, r.Host)
		}
		if r.URL.Path != tc.path || r.URL.EscapedPath() != tc.escaped || r.URL.RawQuery != tc.query {
			t.Errorf("%s: upstream got path %q (%q) query %q, want %q (%q) %q", tc.target, r.URL.Path, r.URL.EscapedPath(), r.URL.RawQuery, tc.path, tc.escaped, tc.query)
		}
	}
}

// TestTraversalNeverLeavesThePrefix: every target that could reach a path
// outside the upstream's, or another host, is refused before any upstream
// or Vendor call.
func TestTraversalNeverLeavesThePrefix(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	e := startEcho(t, nil)
	p := startProxy(t, v, block("kyc", e.url+"/base", ""), false)
	for _, line := range []string{
		"GET /kyc/../secret HTTP/1.1",
		"GET /kyc/a/../../secret HTTP/1.1",
		"GET /kyc/.. HTTP/1.1",
		"GET /kyc/./x HTTP/1.1",
		"GET /kyc/..;/secret HTTP/1.1",
		"GET /../kyc/x HTTP/1.1",
		"GET /kyc/%2e%2e/secret HTTP/1.1",
		"GET /kyc/%2E%2E/secret HTTP/1.1",
		"GET /kyc/.%2e/secret HTTP/1.1",
		"GET /kyc/a%2fb HTTP/1.1",
		"GET /kyc/a%2Fb HTTP/1.1",
		"GET /kyc/a%5cb HTTP/1.1",
		"GET /kyc/a%5Cb HTTP/1.1",
		"GET /kyc/%252e%252e/secret HTTP/1.1",
		"GET /kyc/a%252fb HTTP/1.1",
		`GET /kyc/a\b HTTP/1.1`,
		`GET /kyc/..\secret HTTP/1.1`,
		"GET /kyc//evil.example/x HTTP/1.1",
		"GET //kyc/x HTTP/1.1",
		"GET /kyc/a//b HTTP/1.1",
		"GET /kyc/a%00b HTTP/1.1",
		"GET http://evil.example/kyc/x HTTP/1.1",
		"GET https://" + strings.TrimPrefix(e.url, "http://") + "/base/x HTTP/1.1",
		"CONNECT evil.example:443 HTTP/1.1",
		"OPTIONS * HTTP/1.1",
	} {
		a := raw(t, p.addr, line)
		if a.status != http.StatusBadRequest {
			t.Errorf("%s: got %d %q, want 400", line, a.status, a.body)
			continue
		}
		if code, reason, _ := errorOf(t, a); code != "INVALID_ARGUMENT" || reason != proxy.ReasonInvalidPath {
			t.Errorf("%s: got %s %s, want INVALID_ARGUMENT %s", line, code, reason, proxy.ReasonInvalidPath)
		}
	}
	if n := len(e.requests()); n != 0 {
		t.Errorf("the upstream got %d requests, want none", n)
	}
	if n, _ := v.counts(); n != 0 {
		t.Errorf("the Vendor was asked %d times, want never", n)
	}
}

// TestRedirectsComeBackUnfollowed: a 3xx goes back to the caller as it
// came, and the proxy never calls where it points.
func TestRedirectsComeBackUnfollowed(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	evil := startEcho(t, nil)
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		e := startEcho(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
			w.Header().Set("Location", evil.url+"/steal")
			w.WriteHeader(status)
		})
		p := startProxy(t, newVendor(t, up), block("kyc", e.url, ""), false)
		req, _ := http.NewRequest(http.MethodPost, p.url+"/kyc/x", strings.NewReader("payload"))
		a := do(t, req)
		if a.status != status || a.header.Get("Location") != evil.url+"/steal" {
			t.Errorf("%d: got %d Location %q, want %d %q", status, a.status, a.header.Get("Location"), status, evil.url+"/steal")
		}
		if n := len(e.requests()); n != 1 {
			t.Errorf("%d: upstream got %d requests, want 1", status, n)
		}
	}
	if n := len(evil.requests()); n != 0 {
		t.Errorf("the redirect target got %d requests, want none", n)
	}
}

// TestUnroutedProvider: a name without a proxy block is 404 to a caller
// with a grant for it; to a caller without one, as to one unidentified when
// callers are configured, the answer says nothing of what exists.
func TestUnroutedProvider(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", up.url, "")+"  - name: plain\n    kind: kyc\n", true)
	for _, tc := range []struct {
		path, key string
		status    int
		reason    string
	}{
		{"/plain/x", "", http.StatusUnauthorized, "CALLER_UNIDENTIFIED"},
		{"/nosuch/x", "", http.StatusUnauthorized, "CALLER_UNIDENTIFIED"},
		{"/plain/x", apiKey, http.StatusNotFound, "PROVIDER_NOT_FOUND"},
		{"/nosuch/x", apiKey, http.StatusForbidden, "CALLER_NOT_ALLOWED"},
		{"/", apiKey, http.StatusNotFound, "PROVIDER_NOT_FOUND"}, // names no provider: reveals nothing
	} {
		a := get(t, p.url+tc.path, "x-api-key", tc.key)
		if a.status != tc.status {
			t.Errorf("%s (key %q): got %d %q, want %d", tc.path, tc.key, a.status, a.body, tc.status)
			continue
		}
		if _, reason, _ := errorOf(t, a); reason != tc.reason {
			t.Errorf("%s (key %q): got reason %s, want %s", tc.path, tc.key, reason, tc.reason)
		}
	}
	if n, _ := v.counts(); n != 0 {
		t.Errorf("the Vendor was asked %d times, want never", n)
	}
}

// TestErrorMapping: each kind of Vendor error becomes one status, with a
// JSON body and the Tokenvend-Error header; the cause stays inside.
func TestErrorMapping(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := startEcho(t, nil)
	for _, tc := range []struct {
		err          error
		status       int
		code, reason string
		retryAfter   string
	}{
		{&token.Error{Kind: token.KindUnauthenticated, Reason: "CALLER_UNIDENTIFIED", Message: "who are you"}, 401, "UNAUTHENTICATED", "CALLER_UNIDENTIFIED", ""},
		{&token.Error{Kind: token.KindDenied, Reason: "CALLER_NOT_ALLOWED", Message: "no grant"}, 403, "PERMISSION_DENIED", "CALLER_NOT_ALLOWED", ""},
		{&token.Error{Kind: token.KindInvalid, Reason: "INVALID_SCOPE", Message: "bad scope"}, 400, "INVALID_ARGUMENT", "INVALID_SCOPE", ""},
		{&token.Error{Kind: token.KindNotFound, Reason: "PROVIDER_NOT_FOUND", Message: "none"}, 404, "NOT_FOUND", "PROVIDER_NOT_FOUND", ""},
		{&token.Error{Kind: token.KindRejected, Reason: "CREDENTIALS_REJECTED", Message: "fix the password", RetryAfter: 90 * time.Second,
			Err: errors.New("cause-canary")}, 502, "FAILED_PRECONDITION", "CREDENTIALS_REJECTED", "90"},
		{token.Unavailable("the upstream is down", errors.New("cause-canary")), 503, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", ""},
		{errors.New("cause-canary"), 500, "INTERNAL", "INTERNAL", ""},
	} {
		v := newVendor(t, up)
		v.fail = func(string, proxy.Request) error { return tc.err }
		p := startProxy(t, v, block("kyc", e.url, ""), false)
		a := get(t, p.url+"/kyc/x")
		if a.status != tc.status {
			t.Errorf("%v: got %d, want %d", tc.err, a.status, tc.status)
			continue
		}
		code, reason, msg := errorOf(t, a)
		if code != tc.code || reason != tc.reason {
			t.Errorf("%v: got %s %s, want %s %s", tc.err, code, reason, tc.code, tc.reason)
		}
		if strings.Contains(a.body, "cause-canary") {
			t.Errorf("%v: got body %q, which holds the cause", tc.err, a.body)
		}
		if tc.status >= 502 && tc.status <= 503 && !strings.Contains(msg, `provider "kyc"`) {
			t.Errorf("%v: got message %q, want it to name the provider", tc.err, msg)
		}
		if got := a.header.Get("Retry-After"); got != tc.retryAfter {
			t.Errorf("%v: got Retry-After %q, want %q", tc.err, got, tc.retryAfter)
		}
	}
	if n := len(e.requests()); n != 0 {
		t.Errorf("the upstream got %d requests, want none", n)
	}
}

// TestScopeAndSubjectHeaders reach the Vendor; sent twice, they are
// refused.
func TestScopeAndSubjectHeaders(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	e := startEcho(t, nil)
	p := startProxy(t, v, block("kyc", e.url, ""), true)
	if a := get(t, p.url+"/kyc/x", "x-api-key", apiKey, "Tokenvend-Scope", "read", "Tokenvend-Subject", "user-1"); a.status != http.StatusOK {
		t.Fatalf("got %d %q, want 200", a.status, a.body)
	}
	a := get(t, p.url+"/kyc/x", "x-api-key", apiKey, "Tokenvend-Scope", "a", "Tokenvend-Scope", "b")
	if a.status != http.StatusBadRequest {
		t.Fatalf("scope twice: got %d, want 400", a.status)
	}
	if _, reason, _ := errorOf(t, a); reason != proxy.ReasonInvalidHeader {
		t.Errorf("scope twice: got reason %s, want %s", reason, proxy.ReasonInvalidHeader)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	want := proxy.Request{Provider: "kyc", Scope: "read", Subject: "user-1"}
	if len(v.vends) != 1 || v.vends[0] != want || v.callers[0] != "svc" {
		t.Errorf("got vends %+v by %q, want one %+v by svc", v.vends, v.callers, want)
	}
}
