package app_test

import (
	"context"
	"google.golang.org/grpc/metadata"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// TestErrorCodes drives every error class of the contract over gRPC and
// over REST, against one service whose providers each fail one way.
func TestErrorCodes(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, good := kycSim(t, clk)
	_, unverified := kycSim(t, clk, kycsim.User{Email: kycUser, Password: kycPassword, Unverified: true})
	down, downURL := kycSim(t, clk)
	down.SetFault(kycsim.Fault{Status: http.StatusServiceUnavailable, Body: `{"detail":"maintenance"}`})
	garbage, garbageURL := kycSim(t, clk)
	garbage.SetFault(kycsim.Fault{Garbage: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneURL := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now

	s := startService(t, clk, "providers:"+
		kycProvider("kyc", good, kycPassword)+
		kycProvider("kyc-badpw", good, "wrong")+
		kycProvider("kyc-unverified", unverified, kycPassword)+
		kycProvider("kyc-down", downURL, kycPassword)+
		kycProvider("kyc-garbage", garbageURL, kycPassword)+
		kycProvider("kyc-gone", goneURL, kycPassword))

	cases := []struct {
		name       string
		req        *tokenvendv1.GetTokenRequest
		code       codes.Code
		httpStatus int
		reason     string
		upstream   string
	}{
		{"empty provider", &tokenvendv1.GetTokenRequest{}, codes.InvalidArgument, 400, "INVALID_PROVIDER", ""},
		{"malformed provider", &tokenvendv1.GetTokenRequest{Provider: "kyc prod"}, codes.InvalidArgument, 400, "INVALID_PROVIDER", ""},
		{"unknown provider", &tokenvendv1.GetTokenRequest{Provider: "nope"}, codes.NotFound, 404, "PROVIDER_NOT_FOUND", ""},
		{"malformed scope", &tokenvendv1.GetTokenRequest{Provider: "kyc", Scope: "a\x01"}, codes.InvalidArgument, 400, "INVALID_SCOPE", ""},
		{"scope not allowed", &tokenvendv1.GetTokenRequest{Provider: "kyc", Scope: "admin"}, codes.PermissionDenied, 403, "SCOPE_NOT_ALLOWED", ""},
		{"subject not taken", &tokenvendv1.GetTokenRequest{Provider: "kyc", Subject: "alice"}, codes.InvalidArgument, 400, "INVALID_SUBJECT", ""},
		{"wrong password", &tokenvendv1.GetTokenRequest{Provider: "kyc-badpw"}, codes.FailedPrecondition, 400, "CREDENTIALS_REJECTED", "LOGIN_BAD_CREDENTIALS"},
		{"not verified", &tokenvendv1.GetTokenRequest{Provider: "kyc-unverified"}, codes.FailedPrecondition, 400, "ACCOUNT_NOT_VERIFIED", "LOGIN_USER_NOT_VERIFIED"},
		{"upstream 503", &tokenvendv1.GetTokenRequest{Provider: "kyc-down"}, codes.Unavailable, 503, "UPSTREAM_UNAVAILABLE", ""},
		{"upstream garbage", &tokenvendv1.GetTokenRequest{Provider: "kyc-garbage"}, codes.Unavailable, 503, "UPSTREAM_UNAVAILABLE", ""},
		{"upstream unreachable", &tokenvendv1.GetTokenRequest{Provider: "kyc-gone"}, codes.Unavailable, 503, "UPSTREAM_UNAVAILABLE", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/grpc", func(t *testing.T) {
			_, err := s.get(tc.req)
			code, info := errorInfo(t, err)
			if code != tc.code || info.GetReason() != tc.reason || info.GetDomain() != "tokenvend.dev" {
				t.Errorf("got %v %s %s, want %v %s tokenvend.dev", code, info.GetReason(), info.GetDomain(), tc.code, tc.reason)
			}
			// A malformed name is shown with anything but visible ASCII as "?".
			if got, want := info.GetMetadata()["provider"], strings.ReplaceAll(tc.req.GetProvider(), " ", "?"); got != want {
				t.Errorf("metadata provider: got %q, want %q", got, want)
			}
			if got := info.GetMetadata()["upstream_code"]; got != tc.upstream {
				t.Errorf("metadata upstream_code: got %q, want %q", got, tc.upstream)
			}
		})
		t.Run(tc.name+"/rest", func(t *testing.T) {
			r := s.rest(http.MethodPost, "/v1/token", protoJSON(t, tc.req))
			if r.Status != tc.httpStatus || r.Body["code"] != float64(tc.code) {
				t.Fatalf("got HTTP %d %s, want %d with code %d", r.Status, r.Raw, tc.httpStatus, tc.code)
			}
			details, _ := r.Body["details"].([]any)
			if len(details) == 0 || details[0].(map[string]any)["reason"] != tc.reason {
				t.Errorf("details: got %s, want ErrorInfo reason %s", r.Raw, tc.reason)
			}
			if r.Body["message"] == "" {
				t.Errorf("no message in %s", r.Raw)
			}
		})
	}

	t.Run("unknown JSON field/rest", func(t *testing.T) {
		if r := s.rest(http.MethodPost, "/v1/token", `{"provider":"kyc","scop":"x"}`); r.Status != http.StatusBadRequest {
			t.Errorf("got %d %s, want 400 for a misspelt field", r.Status, r.Raw)
		}
	})
	t.Run("GET with scope query/rest", func(t *testing.T) {
		if r := s.rest(http.MethodGet, "/v1/providers/kyc/token?scope=admin", ""); r.Status != http.StatusForbidden {
			t.Errorf("got %d %s, want 403", r.Status, r.Raw)
		}
	})
}

// TestUpstreamTimeoutIsUnavailable: an upstream that does not answer within
// login_timeout is UNAVAILABLE with its ErrorInfo, not the caller's
// DEADLINE_EXCEEDED (the caller had time left).
func TestUpstreamTimeoutIsUnavailable(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	sim.SetFault(kycsim.Fault{Hang: true})
	t.Cleanup(func() { sim.SetFault(kycsim.Fault{}) })
	s := startService(t, clk, "cache:\n  login_timeout: 300ms\n  login_attempts: 1\nproviders:"+kycProvider("kyc", url, kycPassword))
	_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if code, info := errorInfo(t, err); code != codes.Unavailable || info.GetReason() != "UPSTREAM_UNAVAILABLE" {
		t.Errorf("gRPC: got %v %s, want Unavailable UPSTREAM_UNAVAILABLE", code, info.GetReason())
	}
	if r := s.rest(http.MethodGet, "/v1/providers/kyc/token", ""); r.Status != http.StatusServiceUnavailable {
		t.Errorf("REST: got %d %s, want 503", r.Status, r.Raw)
	}
}

// TestLoginRedirectIsNotFollowed: an upstream answering the login with a
// redirect does not get the password re-posted to the host it names.
func TestLoginRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	var stolen atomic.Int64
	thief := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	redirector := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, thief+"/steal", http.StatusTemporaryRedirect)
	}))
	s := startService(t, newClock(), "providers:"+kycProvider("kyc", redirector, kycPassword))
	_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if code, _ := errorInfo(t, err); code != codes.Unavailable {
		t.Errorf("got %v, want Unavailable", code)
	}
	if n := stolen.Load(); n != 0 {
		t.Errorf("the redirect target got %d login(s) with the password, want 0", n)
	}
}

// TestOversizedBodyIsRefused: a REST body beyond 64 KiB is refused before
// anything reads it whole, identified caller or not.
func TestOversizedBodyIsRefused(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	body := `{"provider":"kyc","subject":"` + strings.Repeat("x", 1<<20) + `"}`
	if r := s.rest(http.MethodPost, "/v1/token", body); r.Status != http.StatusBadRequest {
		t.Errorf("1 MiB body: got %d, want 400", r.Status)
	}
}

// TestUpstreamsGetNoTraceContext: an upstream is a third party: a login
// carries neither the trace context nor a caller's baggage.
func TestUpstreamsGetNoTraceContext(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, _ := kycSim(t, clk)
	var seen sync.Map
	url := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Traceparent", "Tracestate", "Baggage"} {
			if v := r.Header.Get(h); v != "" {
				seen.Store(h, v)
			}
		}
		sim.ServeHTTP(w, r)
	}))
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(),
		"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "baggage", "tenant=secret-tenant"), 10*time.Second)
	defer cancel()
	if _, err := s.client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"}); err != nil {
		t.Fatal(err)
	}
	if len(s.spans.GetSpans()) == 0 {
		t.Fatal("no spans recorded: the test would prove nothing")
	}
	seen.Range(func(k, v any) bool {
		t.Errorf("the upstream got %s: %v", k, v)
		return true
	})
}
