package proxy_test

import (
	"net/http"
	"testing"
)

// callerHeaders are what a caller sends that must not reach the upstream,
// with the hop-by-hop headers of RFC 9110 §7.6.1 and one named by
// Connection.
var callerHeaders = []string{
	"Authorization", "Bearer the-callers-own",
	"X-Api-Key", apiKey,
	"X-Forwarded-Client-Cert", "By=spiffe://mesh/tokenvend;URI=spiffe://mesh/caller",
	"Tokenvend-Scope", "",
	"Tokenvend-Subject", "",
	"Tokenvend-Anything", "x",
	"tokenvend-lower", "x",
	"Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	"Tracestate", "vendor=opaque",
	"Baggage", "user=alice",
	"Connection", "X-Hop-Named",
	"X-Hop-Named", "1",
	"Keep-Alive", "timeout=5",
	"Proxy-Authorization", "Basic cHJveHk6cHc=",
	"Proxy-Connection", "keep-alive",
	"Te", "gzip", // (only "Te: trailers" passes, as ReverseProxy keeps it for gRPC)
	"X-Forwarded-For", "10.1.2.3",
	"Forwarded", "for=10.1.2.3",
	"Otp", "000000",
	"X-Kept", "kept",
}

// TestCallerCredentialsNeverReachTheUpstream: the caller's own
// credentials, tokenvend's headers, hop-by-hop headers and trace context
// are removed; the credential's headers replace the caller's of the same
// name; anything else passes.
func TestCallerCredentialsNeverReachTheUpstream(t *testing.T) {
	t.Parallel()
	up := startKYC(t)
	v := newVendor(t, up)
	v.perCall = 100 // an Otp header per call, like ibanera's
	e := startEcho(t, nil)
	p := startProxy(t, v, block("kyc", e.url, "")+block("traced", e.url, "      propagate_trace: true\n"), true)

	for _, provider := range []string{"kyc", "traced"} {
		if a := get(t, p.url+"/"+provider+"/x", callerHeaders...); a.status != http.StatusOK {
			t.Fatalf("%s: got %d %q, want 200", provider, a.status, a.body)
		}
	}
	reqs := e.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d upstream requests, want 2", len(reqs))
	}
	tok := v.token()
	for i, r := range reqs {
		if got := r.Header.Get("Authorization"); got != "Bearer "+tok {
			t.Errorf("request %d: got Authorization %q, want the vended credential", i, got)
		}
		if got, want := r.Header.Get("Otp"), []string{"101", "102"}[i]; got != want || len(r.Header.Values("Otp")) != 1 {
			t.Errorf("request %d: got Otp %q, want only the fresh %q", i, r.Header.Values("Otp"), want)
		}
		for _, h := range []string{"X-Api-Key", "X-Forwarded-Client-Cert", "Tokenvend-Scope", "Tokenvend-Subject", "Tokenvend-Anything", "Tokenvend-Lower",
			"X-Hop-Named", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "X-Forwarded-For", "Forwarded"} {
			if got := r.Header.Values(h); len(got) != 0 {
				t.Errorf("request %d: upstream got %s %q, want none", i, h, got)
			}
		}
		if got := r.Header.Get("X-Kept"); got != "kept" {
			t.Errorf("request %d: got X-Kept %q, want kept", i, got)
		}
	}
	for _, h := range []string{"Traceparent", "Tracestate", "Baggage"} {
		if got := reqs[0].Header.Values(h); len(got) != 0 {
			t.Errorf("without propagate_trace: upstream got %s %q, want none", h, got)
		}
		if got := reqs[1].Header.Values(h); len(got) != 1 {
			t.Errorf("with propagate_trace: upstream got %s %q, want the caller's", h, got)
		}
	}
}
