package app_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// TestMinValidForCannotForceLogins: 51 requests with a min_valid_for just
// under the token's lifetime cost one upstream login, not 51; the others
// learn what validity can be had. Once the interval has passed, one more.
func TestMinValidForCannotForceLogins(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "cache:\n  min_relogin_interval: 2m\nproviders:"+kycProvider("kyc", url, kycPassword))
	req := &tokenvendv1.GetTokenRequest{Provider: "kyc", MinValidFor: durationpb.New(time.Hour - 500*time.Millisecond)}

	first, err := s.get(req)
	if err != nil {
		t.Fatalf("first request: %v", err)
	}
	for i := range 50 {
		clk.Advance(time.Second) // each request needs a token fresher than the cached one
		_, err := s.get(req)
		code, info := errorInfo(t, err)
		if code != codes.InvalidArgument || info.GetReason() != "MIN_VALID_FOR_TOO_LONG" || info.GetMetadata()["retry_after_seconds"] == "" {
			t.Fatalf("request %d: got %v %s %v, want InvalidArgument MIN_VALID_FOR_TOO_LONG with retry_after_seconds", i+2, code, info.GetReason(), info.GetMetadata())
		}
		if i == 0 && !strings.Contains(status.Convert(err).Message(), "valid for 59m59s more") {
			t.Errorf("message %q does not say the validity that can be had (59m59s)", status.Convert(err).Message())
		}
	}
	if got := sim.LoginAttempts(); got != 1 {
		t.Fatalf("upstream logins for 51 requests: got %d, want 1", got)
	}
	if got := s.mustGet("kyc"); got.GetAccessToken() != first.GetAccessToken() {
		t.Errorf("a caller without min_valid_for: got a new token, want the cached one")
	}

	clk.Advance(70 * time.Second) // two minutes since the login
	second, err := s.get(req)
	if err != nil {
		t.Fatalf("after the interval: %v", err)
	}
	if second.GetAccessToken() == first.GetAccessToken() || sim.LoginAttempts() != 2 {
		t.Fatalf("after the interval: same token %v, %d logins; want a new token from login 2",
			second.GetAccessToken() == first.GetAccessToken(), sim.LoginAttempts())
	}
	if got := useHeaders(t, url+kycsim.ResourcePath, second.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
	clk.Advance(time.Second)
	if _, err := s.get(req); status.Code(err) != codes.InvalidArgument || sim.LoginAttempts() != 2 {
		t.Errorf("inside the next interval: got %v after %d logins, want InvalidArgument after 2", err, sim.LoginAttempts())
	}
}

// TestHungAttemptIsCutAndRetried: a login request that hangs is cut after
// attempt_timeout and tried again, and the caller gets a token well within
// login_timeout instead of UNAVAILABLE when it runs out.
func TestHungAttemptIsCutAndRetried(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: kycUser, Password: kycPassword}}, Now: clk.Now})
	simURL := serve(t, sim)
	target, err := url.Parse(simURL)
	if err != nil {
		t.Fatal(err)
	}
	// The first login request hangs until the client gives up on it; the
	// rest reach the simulator.
	proxy := httputil.NewSingleHostReverseProxy(target)
	var logins, cut atomic.Int64
	front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == kycsim.LoginPath && logins.Add(1) == 1 {
			// net/http notices the client has gone only once the body
			// is read.
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			cut.Add(1)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	s := startService(t, clk, "cache:\n  attempt_timeout: 1s\n  login_timeout: 10s\nproviders:"+kycProvider("kyc", front, kycPassword))

	start := time.Now()
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if err != nil {
		t.Fatalf("GetToken: %v (after %v)", err, time.Since(start))
	}
	// Without the cut, the first attempt would have used up the whole
	// login_timeout (10s) and the caller got UNAVAILABLE.
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("the login took %v, want about one attempt_timeout (1s)", took)
	}
	if cut.Load() != 1 || sim.Logins() < 1 {
		t.Errorf("attempts: %d cut, %d logged in upstream; want 1 cut, then a login", cut.Load(), sim.Logins())
	}
	if got := useHeaders(t, simURL+kycsim.ResourcePath, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
}

// TestUnreadableSecretIsRetriedSoon: a password file that has gone (a
// remount, a rotation in progress) is not held like a rejected password:
// no login is attempted, the provider is NOT_SERVING, the caller's message
// does not name the file, and within seconds of the file coming back a
// login works and the provider is SERVING again.
func TestUnreadableSecretIsRetriedSoon(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	path := filepath.Join(t.TempDir(), "kyc-password")
	write := func() {
		if err := os.WriteFile(path, []byte(kycPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write()
	s := startService(t, clk, fmt.Sprintf(`providers:
  - name: kyc
    kind: kyc
    base_url: %s
    username: %s
    password: {file: %s}
`, url, kycUser, path))
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
		code, info := errorInfo(t, err)
		if code != codes.FailedPrecondition || info.GetReason() != "SECRET_UNREADABLE" {
			t.Fatalf("round %d: got %v %s, want FailedPrecondition SECRET_UNREADABLE", i, code, info.GetReason())
		}
		if msg := status.Convert(err).Message(); strings.Contains(msg, path) || strings.Contains(msg, filepath.Base(path)) {
			t.Errorf("the caller's message names the secret file: %q", msg)
		}
		if got := s.health("kyc"); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("round %d: health %v, want NOT_SERVING", i, got)
		}
		clk.Advance(5 * time.Second)
	}
	if got := sim.LoginAttempts(); got != 0 {
		t.Errorf("upstream attempts without a password: got %d, want 0", got)
	}
	if !strings.Contains(s.logs.String(), path) {
		t.Errorf("the log does not say which file could not be read")
	}

	// Three unreadable rounds held like rejections would now hold for
	// minutes; a pause has ended after 5s.
	write()
	resp := s.mustGet("kyc")
	if got := useHeaders(t, url+kycsim.ResourcePath, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
	if got := s.health("kyc"); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health after a login worked: %v, want SERVING", got)
	}
}

// skewedSim runs a kyc simulator whose clock is the service's moved by a
// skew, or a fixed time when one is set.
type skewedSim struct {
	*kycsim.Server
	url   string
	mu    sync.Mutex
	skew  time.Duration
	fixed time.Time
}

func newSkewedSim(t *testing.T, clk *clocktest.Clock) *skewedSim {
	t.Helper()
	s := &skewedSim{}
	s.Server = kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: kycUser, Password: kycPassword}}, Now: func() time.Time {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.fixed.IsZero() {
			return s.fixed
		}
		return clk.Now().Add(s.skew)
	}})
	s.url = serve(t, s.Server)
	return s
}

func (s *skewedSim) set(skew time.Duration, fixed time.Time) {
	s.mu.Lock()
	s.skew, s.fixed = skew, fixed
	s.mu.Unlock()
}

// TestUnusableTokensAreNotLogins: an upstream whose clock is far off
// answers tokens that are expired by ours, or whose exp lies beyond what
// google.protobuf.Timestamp can carry. Over REST, neither is a 500 nor
// served as OK: the first is UNAVAILABLE TOKEN_EXPIRED_ON_ARRIVAL, the
// second UNAVAILABLE UPSTREAM_UNAVAILABLE, each retried inside one login
// and then paused, so callers do not cost a login each. Once the clock is
// fixed, the next login after the pause gives a token the upstream takes.
func TestUnusableTokensAreNotLogins(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		skew   time.Duration
		fixed  time.Time
		reason string
	}{
		{"exp in the past", -2 * time.Hour, time.Time{}, "TOKEN_EXPIRED_ON_ARRIVAL"},
		{"exp beyond year 9999", 0, time.Date(9999, 12, 31, 23, 30, 0, 0, time.UTC), "UPSTREAM_UNAVAILABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			sim := newSkewedSim(t, clk)
			sim.set(tc.skew, tc.fixed)
			s := startService(t, clk, "providers:"+kycProvider("kyc", sim.url, kycPassword))

			for i := range 20 {
				r := s.rest(http.MethodGet, "/v1/providers/kyc/token", "")
				if r.Status != http.StatusServiceUnavailable || restReason(r) != tc.reason {
					t.Fatalf("REST call %d: got %d %s, want 503 %s", i, r.Status, r.Raw, tc.reason)
				}
				if i == 0 && tc.reason == "TOKEN_EXPIRED_ON_ARRIVAL" && !strings.Contains(r.Raw, "clock") {
					t.Errorf("message does not point at the clocks: %s", r.Raw)
				}
			}
			// One login, tried three times (login_attempts), for 20 calls.
			if got := sim.Logins(); got != 3 {
				t.Errorf("upstream logins for 20 calls: got %d, want 3 (one login's attempts)", got)
			}
			if got := s.health("kyc"); got != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("health: %v, want NOT_SERVING", got)
			}
			if strings.Contains(s.logs.String(), `"code":"OK"`) {
				t.Errorf("an audit line says OK for an unusable token")
			}

			sim.set(0, time.Time{})
			clk.Advance(5 * time.Second)
			r := s.rest(http.MethodGet, "/v1/providers/kyc/token", "")
			if r.Status != http.StatusOK {
				t.Fatalf("after the clock is fixed: got %d %s, want 200", r.Status, r.Raw)
			}
			headers := map[string]string{}
			for k, v := range r.Body["headers"].(map[string]any) {
				headers[k] = v.(string)
			}
			if got := useHeaders(t, sim.url+kycsim.ResourcePath, headers); got != http.StatusOK {
				t.Errorf("protected endpoint: got %d, want 200", got)
			}
			if got := s.health("kyc"); got != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health after a good login: %v, want SERVING", got)
			}
		})
	}
}
