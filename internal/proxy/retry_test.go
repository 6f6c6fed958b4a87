package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/token"
)

// TestRefusedCredentialIsRecovered: the simulator refuses the cached
// token (past its exp by the simulator's clock); the proxy invalidates it,
// the Vendor logs in once more, and the call is replayed once and works.
func TestRefusedCredentialIsRecovered(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", up.url, ""), false)
	url := p.url + "/kyc" + kycsim.ResourcePath
	if a := get(t, url); a.status != http.StatusOK {
		t.Fatalf("first call: got %d %q, want 200", a.status, a.body)
	}
	first := v.token()
	up.clock.Advance(2 * time.Hour) // the simulator now refuses first

	a := get(t, url)
	if a.status != http.StatusOK || !strings.Contains(a.body, kycUser) {
		t.Fatalf("after the refusal: got %d %q, want 200", a.status, a.body)
	}
	if n := up.sim.Logins(); n != 2 {
		t.Errorf("got %d logins, want 2 (one re-login)", n)
	}
	if n := up.sim.ResourceCalls(); n != 2 {
		t.Errorf("got %d accepted calls, want 2", n)
	}
	v.mu.Lock()
	inv := append([]string(nil), v.invalidated...)
	v.mu.Unlock()
	if len(inv) != 1 || inv[0] != first+" 401" {
		t.Errorf("got invalidations %q, want the refused token once with 401", inv)
	}
	lines := auditLines(t, p.logs.String())
	if len(lines) != 2 {
		t.Fatalf("got %d audit lines, want 2", len(lines))
	}
	l := lines[1]
	if l["retried"] != true || l["status"] != 200.0 || l["upstream_status"] != 200.0 || l["token_sha256"] != fingerprint(v.token()) ||
		l["method"] != "GET" || l["provider"] != "kyc" || l["scope"] != "default-scope" {
		t.Errorf("got audit line %v, want retried, 200, the fresh token's fingerprint", l)
	}
	if lines[0]["retried"] != false {
		t.Errorf("got first audit line %v, want retried false", lines[0])
	}
}

// refusing is an upstream that refuses the first refusals requests (401)
// and moves the simulator's clock, so the next login gives a new token.
func refusing(t *testing.T, up *kycUpstream, refusals int) *echo {
	return startEcho(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		if n <= refusals {
			up.clock.Advance(time.Second)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"detail":"Unauthorized"}`)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
}

// TestRetryReplaysTheBody: a kept body (at most 1 MiB, its length known
// or not: a chunked one is read ahead) is sent again in full with the
// retry.
func TestRetryReplaysTheBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		size int
		body func(b []byte) io.Reader
	}{
		{"known length, 1 MiB", 1 << 20, func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"chunked, 1 MiB", 1 << 20, func(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b)) }},
		{"chunked, tiny", 16, func(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testRetryReplaysTheBody(t, bytes.Repeat([]byte("0123456789abcdef"), tc.size/16), tc.body)
		})
	}
}

func testRetryReplaysTheBody(t *testing.T, body []byte, reader func([]byte) io.Reader) {
	up := startKYC(t)
	e := refusing(t, up, 1)
	p := startProxy(t, newVendor(t, up), block("kyc", e.url, ""), false)
	req, _ := http.NewRequest(http.MethodPost, p.url+"/kyc/upload", reader(body))
	if a := do(t, req); a.status != http.StatusOK || a.body != "ok" {
		t.Fatalf("got %d %q, want 200 ok", a.status, a.body)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.bodies) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(e.bodies))
	}
	for i, b := range e.bodies {
		if b != string(body) {
			t.Errorf("request %d: upstream got %d bytes, want the %d sent", i, len(b), len(body))
		}
	}
	if a, b := e.reqs[0].Header.Get("Authorization"), e.reqs[1].Header.Get("Authorization"); a == b {
		t.Errorf("the retry was sent with the refused credential")
	}
}

// TestRetriedOnceOnly: an upstream that refuses every credential gets the
// call twice, and its second refusal comes back as it is.
func TestRetriedOnceOnly(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := refusing(t, up, 1000)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", e.url, "      retry_statuses: [401, 403]\n"), false)
	a := get(t, p.url+"/kyc/x")
	if a.status != http.StatusUnauthorized || a.body != `{"detail":"Unauthorized"}` || a.header.Get(proxy.ErrorHeader) != "" {
		t.Errorf("got %d %q, want the upstream's own 401", a.status, a.body)
	}
	if n := len(e.requests()); n != 2 {
		t.Errorf("upstream got %d requests, want 2", n)
	}
	if _, n := v.counts(); n != 1 {
		t.Errorf("got %d invalidations, want 1", n)
	}
}

// TestNoRetry: the upstream's refusal comes back as it is, not retried,
// when the body was not kept (over 1 MiB, its length known or not: the
// refused credential is invalidated all the same), when the status is not
// a retry status, when retries are off, when Invalidate refuses, and when
// the fresh credential is the refused one.
func TestNoRetry(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), 1<<20+1)
	for _, tc := range []struct {
		name, extra string
		body        func() io.Reader // nil: no body
		invalidate  error
		sameToken   bool
		status      int
		invalidates int
	}{
		{name: "body over 1 MiB", body: func() io.Reader { return bytes.NewReader(big) }, status: 401, invalidates: 1},
		{name: "chunked body over 1 MiB", body: func() io.Reader { return io.MultiReader(bytes.NewReader(big)) }, status: 401, invalidates: 1},
		{name: "status not listed", status: 403},
		{name: "retries off", extra: "      retry_statuses: []\n", status: 401},
		{name: "invalidate refused", invalidate: &token.Error{Kind: token.KindUnavailable, Reason: "RATE_LIMITED", Message: "later"}, status: 401, invalidates: 1},
		{name: "same credential again", sameToken: true, status: 401, invalidates: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := startKYC(t)
			e := startEcho(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				if !tc.sameToken {
					up.clock.Advance(time.Second)
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, "refused")
			})
			v := newVendor(t, up)
			v.invalidateErr = tc.invalidate
			p := startProxy(t, v, block("kyc", e.url, tc.extra), false)
			var body io.Reader
			if tc.body != nil {
				body = tc.body()
			}
			req, _ := http.NewRequest(http.MethodPost, p.url+"/kyc/x", body)
			a := do(t, req)
			if a.status != tc.status || a.body != "refused" || a.header.Get(proxy.ErrorHeader) != "" {
				t.Errorf("got %d %q, want the upstream's own %d", a.status, a.body, tc.status)
			}
			if n := len(e.requests()); n != 1 {
				t.Errorf("upstream got %d requests, want 1", n)
			}
			if _, n := v.counts(); n != tc.invalidates {
				t.Errorf("got %d invalidations, want %d", n, tc.invalidates)
			}
			if tc.body != nil {
				e.mu.Lock()
				if !bytes.Equal([]byte(e.bodies[0]), big) {
					t.Errorf("upstream got %d bytes, want the %d sent", len(e.bodies[0]), len(big))
				}
				e.mu.Unlock()
			}
		})
	}
}

// TestReloginRefused: when the fresh login the retry needs is refused
// (the password changed), the caller hears tokenvend's reason, not a bare
// 401.
func TestReloginRefused(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := refusing(t, up, 1)
	v := newVendor(t, up)
	p := startProxy(t, v, block("kyc", e.url, ""), false)
	up.sim.SetPassword(kycUser, "changed")
	v.mu.Lock()
	v.cur = &token.Token{AccessToken: "cached", Headers: map[string]string{"Authorization": "Bearer cached"}}
	v.mu.Unlock()
	a := get(t, p.url+"/kyc/x")
	if a.status != http.StatusBadGateway {
		t.Fatalf("got %d %q, want 502", a.status, a.body)
	}
	if code, reason, msg := errorOf(t, a); code != "FAILED_PRECONDITION" || reason != token.ReasonCredentialsRejected || strings.Contains(msg, "changed") {
		t.Errorf("got %s %s %q, want FAILED_PRECONDITION %s", code, reason, msg, token.ReasonCredentialsRejected)
	}
	if n := len(e.requests()); n != 1 {
		t.Errorf("upstream got %d requests, want 1", n)
	}
}

// TestTruncatedChunkedBody: a chunked body the caller cuts short is
// refused (400 BODY_UNREADABLE), never sent on as a shorter, complete one.
func TestTruncatedChunkedBody(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	e := startEcho(t, nil)
	p := startProxy(t, newVendor(t, up), block("kyc", e.url, ""), false)
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "POST /kyc/x HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-half", p.addr); err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(proxy.ErrorHeader) != proxy.ReasonBodyUnreadable {
		t.Errorf("got %d %q, want 400 %s", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), proxy.ReasonBodyUnreadable)
	}
	if n := len(e.requests()); n != 0 {
		t.Errorf("upstream got %d requests, want none", n)
	}
}
