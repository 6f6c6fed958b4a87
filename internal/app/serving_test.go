package app_test

import (
	"context"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// TestProviderServingGauge: tokenvend_provider_serving follows each
// provider's gRPC health, so a scrape sees rejected credentials: 1 before
// any login, 0 once the upstream rejects the password (while another
// provider stays 1), 1 again after the hold once a login succeeds.
func TestProviderServingGauge(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	_, okURL := kycSim(t, clk)
	s := startService(t, clk, "cache:\n  reject_backoff: 1m\nproviders:"+
		kycProvider("kyc", url, "wrong password")+kycProvider("other", okURL, kycPassword))
	health := healthpb.NewHealthClient(s.conn)
	check := func(step, provider string, want float64) {
		t.Helper()
		if got := s.metric("tokenvend_provider_serving", `provider="`+provider+`"`); got != want {
			t.Errorf("%s: tokenvend_provider_serving{provider=%q}: got %v, want %v", step, provider, got, want)
		}
		h, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: provider})
		wantStatus := healthpb.HealthCheckResponse_SERVING
		if want == 0 {
			wantStatus = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if err != nil || h.GetStatus() != wantStatus {
			t.Errorf("%s: health of %s: got %v %v, want %v, as the gauge", step, provider, h.GetStatus(), err, wantStatus)
		}
	}
	check("at start", "kyc", 1)
	check("at start", "other", 1)

	if _, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"}); err == nil {
		t.Fatal("GetToken(kyc) with a wrong password: got a token, want a rejection")
	}
	s.mustGet("other")
	check("rejected", "kyc", 0)
	check("rejected", "other", 1)

	sim.SetPassword(kycUser, "wrong password") // the operator fixes the account
	clk.Advance(time.Minute)                   // past the hold
	s.mustGet("kyc")
	check("after a login", "kyc", 1)
}
