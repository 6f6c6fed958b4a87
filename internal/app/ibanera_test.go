package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera/ibanerasim"
)

const (
	ibaneraUser     = "treasury@example.com"
	ibaneraPassword = `s3cret "ibanera" pass`
	ibaneraSecret   = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXQ"
)

// ibaneraSim runs an Ibanera simulator on the fake clock that accepts a
// code in its own step only, so a test passes only if tokenvend never
// leans on the upstream's skew.
func ibaneraSim(t *testing.T, clk *clocktest.Clock) (*ibanerasim.Server, string) {
	t.Helper()
	sim := ibanerasim.New(ibanerasim.Options{
		Users:     []ibanerasim.User{{Username: ibaneraUser, Password: ibaneraPassword, TOTPSecret: ibaneraSecret}},
		SkewSteps: -1,
		Now:       clk.Now,
	})
	return sim, serve(t, sim)
}

func ibaneraProvider(url, password, extra string) string {
	return fmt.Sprintf(`
  - name: ibanera
    kind: ibanera
    base_url: %s
    username: %s
    password: %q
    totp_secret: %s
%s`, url, ibaneraUser, password, ibaneraSecret, extra)
}

func ibaneraCode(t *testing.T, at time.Time) string {
	t.Helper()
	code, err := ibanerasim.Code(ibaneraSecret, at)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// ibaneraRESTHeaders is the headers map of a REST token answer.
func ibaneraRESTHeaders(t *testing.T, r restResult) map[string]string {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("got HTTP %d %s, want 200", r.Status, r.Raw)
	}
	out := map[string]string{}
	for k, v := range r.Body["headers"].(map[string]any) {
		out[k] = v.(string)
	}
	return out
}

func TestIbaneraHeadersAreAcceptedUpstream(t *testing.T) {
	t.Parallel()
	clk := newClock() // at the start of a TOTP step
	sim, url := ibaneraSim(t, clk)
	s := startService(t, clk, "providers:"+ibaneraProvider(url, ibaneraPassword, ""))
	accounts := url + ibanerasim.AccountsPath

	resp := s.mustGet("ibanera")
	h := resp.GetHeaders()
	if resp.GetTokenType() != "Bearer" || h["Authorization"] != "Bearer "+resp.GetAccessToken() {
		t.Errorf("got token_type %q, Authorization %q, want Bearer <access_token>", resp.GetTokenType(), h["Authorization"])
	}
	if got, want := h["otp"], ibaneraCode(t, clk.Now()); got != want {
		t.Errorf("otp header: got %q, want %q", got, want)
	}
	if got, want := resp.GetExpireTime().AsTime(), clk.Now().Add(30*time.Second); !got.Equal(want) {
		t.Errorf("expire_time: got %v, want %v (the end of the code's step)", got, want)
	}
	if got := useHeaders(t, accounts, h); got != http.StatusOK {
		t.Errorf("protected endpoint with the gRPC headers: got %d, want 200", got)
	}
	if got := useHeaders(t, accounts, map[string]string{"Authorization": h["Authorization"]}); got != http.StatusUnauthorized {
		t.Errorf("protected endpoint without otp: got %d, want 401 (the test proves nothing)", got)
	}

	for _, call := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/providers/ibanera/token", ""},
		{http.MethodPost, "/v1/token", `{"provider":"ibanera"}`},
	} {
		r := s.rest(call.method, call.path, call.body)
		rh := ibaneraRESTHeaders(t, r)
		if got := useHeaders(t, accounts, rh); got != http.StatusOK {
			t.Errorf("%s %s: protected endpoint with the REST headers: got %d, want 200", call.method, call.path, got)
		}
		if r.Body["access_token"] != resp.GetAccessToken() || rh["otp"] != h["otp"] {
			t.Errorf("%s %s: got another session or code within the same step", call.method, call.path)
		}
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1", got)
	}
}

// TestIbaneraFreshCodeEveryStepOneSession: the session is cached, the code
// is made per call.
func TestIbaneraFreshCodeEveryStepOneSession(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := ibaneraSim(t, clk)
	s := startService(t, clk, "providers:"+ibaneraProvider(url, ibaneraPassword, ""))
	accounts := url + ibanerasim.AccountsPath

	first := s.mustGet("ibanera")
	seen := map[string]bool{first.GetHeaders()["otp"]: true}
	for i, advance := range []time.Duration{30 * time.Second, 45 * time.Second, 20 * time.Minute} {
		clk.Advance(advance)
		var h map[string]string
		if i%2 == 0 {
			resp := s.mustGet("ibanera")
			if resp.GetAccessToken() != first.GetAccessToken() {
				t.Fatalf("call %d: got a new session, want the cached one", i)
			}
			h = resp.GetHeaders()
		} else {
			h = ibaneraRESTHeaders(t, s.rest(http.MethodGet, "/v1/providers/ibanera/token", ""))
		}
		if seen[h["otp"]] {
			t.Errorf("call %d: the otp %q of an earlier step again", i, h["otp"])
		}
		seen[h["otp"]] = true
		if got, want := h["otp"], ibaneraCode(t, clk.Now()); got != want {
			t.Errorf("call %d: otp got %q, want %q", i, got, want)
		}
		if got := useHeaders(t, accounts, h); got != http.StatusOK {
			t.Errorf("call %d: protected endpoint: got %d, want 200", i, got)
		}
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1 (the session stays cached)", got)
	}
}

// TestIbaneraStepBoundary: with less than totp_skew_allowance left in the
// step, the answer waits for the next step's code, unless the caller's
// deadline comes first.
func TestIbaneraStepBoundary(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := ibaneraSim(t, clk)
	s := startService(t, clk, "providers:"+ibaneraProvider(url, ibaneraPassword, "    totp_skew_allowance: 5s\n"))
	accounts := url + ibanerasim.AccountsPath
	step := clk.Now()
	s.mustGet("ibanera") // log in

	clk.Advance(25 * time.Second) // exactly the allowance left: no wait
	resp := s.mustGet("ibanera")
	if got, want := resp.GetHeaders()["otp"], ibaneraCode(t, step); got != want || !clk.Now().Equal(step.Add(25*time.Second)) {
		t.Errorf("5s left: got otp %q at %v, want %q at once", got, clk.Now(), want)
	}
	if got := resp.GetExpireTime().AsTime(); !got.Equal(step.Add(30 * time.Second)) {
		t.Errorf("5s left: expire_time got %v, want %v", got, step.Add(30*time.Second))
	}
	if got := useHeaders(t, accounts, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("5s left: protected endpoint: got %d, want 200", got)
	}

	clk.Advance(time.Second) // 4s left: wait for the next step
	next := step.Add(30 * time.Second)
	resp = s.mustGet("ibanera")
	if got, want := resp.GetHeaders()["otp"], ibaneraCode(t, next); got != want || !clk.Now().Equal(next) {
		t.Errorf("4s left: got otp %q at %v, want the next step's %q after waiting to %v", got, clk.Now(), want, next)
	}
	if got := resp.GetExpireTime().AsTime(); !got.Equal(next.Add(30 * time.Second)) {
		t.Errorf("4s left: expire_time got %v, want %v", got, next.Add(30*time.Second))
	}
	if got := useHeaders(t, accounts, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("4s left: protected endpoint: got %d, want 200", got)
	}

	clk.Advance(27 * time.Second) // 3s left, and a caller that cannot wait 3s
	before := clk.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := s.client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "ibanera"})
	if status.Code(err) != codes.DeadlineExceeded || !clk.Now().Equal(before) {
		t.Errorf("deadline before the next step: got %v after waiting %v, want DeadlineExceeded at once", err, clk.Now().Sub(before))
	}
}

// TestIbaneraLoginsNeverReuseAStep: a login forced within the step of the
// last one waits for the next step, and the upstream (which refuses a
// used code) accepts it.
func TestIbaneraLoginsNeverReuseAStep(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := ibaneraSim(t, clk)
	// The relogin interval would refuse the forced login below: it is
	// shortened to let one come within a TOTP step of the last.
	s := startService(t, clk, "cache:\n  min_relogin_interval: 1s\nproviders:"+ibaneraProvider(url, ibaneraPassword, ""))
	step := clk.Now()
	clk.Advance(10 * time.Second)
	first := s.mustGet("ibanera")

	clk.Advance(5 * time.Second)
	// More validity than the session has left: a new login, in the same step.
	second, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera", MinValidFor: durationpb.New(time.Hour - 5*time.Second)})
	if err != nil {
		t.Fatalf("second login: %v", err)
	}
	if second.GetAccessToken() == first.GetAccessToken() {
		t.Fatalf("got the first session, want a new one")
	}
	if got, want := clk.Now(), step.Add(30*time.Second); !got.Equal(want) {
		t.Errorf("second login at %v, want %v (the next step)", got, want)
	}
	if sim.Logins() != 2 || sim.FailedLogins() != 0 {
		t.Errorf("upstream: got %d logins, %d failed, want 2 and 0", sim.Logins(), sim.FailedLogins())
	}
	if got := useHeaders(t, url+ibanerasim.AccountsPath, second.GetHeaders()); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
}

// TestIbaneraWrongPasswordNeverLocksTheAccount: bursts of callers, over
// gRPC and REST, cost one login attempt per backoff period, and the
// upstream (which locks after 5 failures) never locks.
func TestIbaneraWrongPasswordNeverLocksTheAccount(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := ibaneraSim(t, clk)
	s := startService(t, clk, "cache:\n  reject_backoff: 1m\nproviders:"+ibaneraProvider(url, "wrong password", ""))

	burst := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if i%10 == 0 {
					r := s.rest(http.MethodGet, "/v1/providers/ibanera/token", "")
					if r.Status != http.StatusBadRequest || r.Body["code"] != float64(codes.FailedPrecondition) || !strings.Contains(r.Raw, `"Username_Or_Password_Incorrect"`) {
						t.Errorf("REST: got %d %s, want 400 FAILED_PRECONDITION upstream_code Username_Or_Password_Incorrect", r.Status, r.Raw)
					}
					return
				}
				_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera"})
				code, info := errorInfo(t, err)
				if code != codes.FailedPrecondition || info.GetReason() != "CREDENTIALS_REJECTED" || info.GetMetadata()["upstream_code"] != "Username_Or_Password_Incorrect" {
					t.Errorf("got %v %s %v, want FailedPrecondition CREDENTIALS_REJECTED upstream_code Username_Or_Password_Incorrect", code, info.GetReason(), info.GetMetadata())
				}
			})
		}
		wg.Wait()
	}
	// 1,000 callers on the cold provider, then fewer in each later period
	// (the race detector makes each call slow; the first burst is the one
	// where callers race the login).
	steps := []struct {
		advance time.Duration
		callers int
		want    int64
	}{
		{0, 1000, 1},               // one attempt
		{59 * time.Second, 200, 1}, // inside the 1m hold
		{time.Second, 200, 2},      // the hold is over: one attempt
		// Two refusals of the same password (max_failed_logins): it is
		// not sent again, in any later period, until it changes. Two
		// replicas stay below Ibanera's lock at 5.
		{2 * time.Minute, 200, 2},
		{4 * time.Minute, 200, 2},
		{8 * time.Minute, 200, 2},
		{30 * time.Minute, 200, 2},
		{30 * time.Minute, 200, 2},
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		burst(st.callers)
		if got := sim.LoginAttempts(); got != st.want {
			t.Fatalf("step %d: upstream login attempts: got %d, want %d", i, got, st.want)
		}
		if sim.Locked(ibaneraUser) {
			t.Fatalf("step %d: the upstream locked the account", i)
		}
	}
	if got := sim.FailedLogins(); got != 2 {
		t.Errorf("failed logins upstream: got %d, want 2", got)
	}
}

// TestIbaneraAccountLockedHoldsEveryLogin: Account_Locked is
// FAILED_PRECONDITION ACCOUNT_LOCKED, and no login is tried for
// lockout_hold (10m by default), whatever the upstream's own lock time.
func TestIbaneraAccountLockedHoldsEveryLogin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		extra string
		hold  time.Duration
	}{
		{"default", "", 10 * time.Minute},
		{"configured", "    lockout_hold: 15m\n", 15 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			sim, url := ibaneraSim(t, clk)
			// Someone else locks the account: 5 wrong passwords.
			for range 5 {
				resp, err := http.Post(url+ibanerasim.LoginPath, "application/json",
					bytes.NewReader(fmt.Appendf(nil, `{"username":%q,"password":"guess","otp":"000000"}`, ibaneraUser)))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			if !sim.Locked(ibaneraUser) {
				t.Fatal("the simulator did not lock the account: the test proves nothing")
			}
			s := startService(t, clk, "providers:"+ibaneraProvider(url, ibaneraPassword, tc.extra))
			wantLocked := func(what string, left time.Duration) {
				t.Helper()
				_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera"})
				code, info := errorInfo(t, err)
				md := info.GetMetadata()
				if code != codes.FailedPrecondition || info.GetReason() != "ACCOUNT_LOCKED" || md["upstream_code"] != "Account_Locked" {
					t.Errorf("%s: got %v %s %v, want FailedPrecondition ACCOUNT_LOCKED upstream_code Account_Locked", what, code, info.GetReason(), md)
				}
				if got, want := md["retry_after_seconds"], fmt.Sprint(int(left.Seconds())); got != want {
					t.Errorf("%s: retry_after_seconds got %q, want %q", what, got, want)
				}
				if msg := status.Convert(err).Message(); !strings.Contains(msg, "locked") || !strings.Contains(msg, left.String()) {
					t.Errorf("%s: message %q does not say the account is locked and for how long (%v)", what, msg, left)
				}
				for _, r := range []restResult{
					s.rest(http.MethodGet, "/v1/providers/ibanera/token", ""),
					s.rest(http.MethodPost, "/v1/token", `{"provider":"ibanera"}`),
				} {
					details, _ := r.Body["details"].([]any)
					if r.Status != http.StatusBadRequest || r.Body["code"] != float64(codes.FailedPrecondition) || len(details) == 0 {
						t.Fatalf("%s: REST got %d %s, want 400 FAILED_PRECONDITION", what, r.Status, r.Raw)
					}
					info := details[0].(map[string]any)
					rmd, _ := info["metadata"].(map[string]any)
					if info["reason"] != "ACCOUNT_LOCKED" || rmd["retry_after_seconds"] != fmt.Sprint(int(left.Seconds())) {
						t.Errorf("%s: REST details got %v, want ACCOUNT_LOCKED with retry_after_seconds %d", what, info, int(left.Seconds()))
					}
				}
			}

			wantLocked("first call", tc.hold)
			if got := sim.LoginAttempts(); got != 6 {
				t.Fatalf("upstream login attempts: got %d, want 6 (5 to lock, 1 from tokenvend)", got)
			}
			clk.Advance(tc.hold - time.Second)
			wantLocked("last second of the hold", time.Second)
			var wg sync.WaitGroup
			for range 100 {
				wg.Go(func() {
					if _, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera"}); status.Code(err) != codes.FailedPrecondition {
						t.Errorf("during the hold: got %v, want FailedPrecondition", err)
					}
				})
			}
			wg.Wait()
			if got := sim.LoginAttempts(); got != 6 {
				t.Errorf("upstream login attempts during the hold: got %d, want 6 (none)", got)
			}

			clk.Advance(time.Second) // the hold (and the upstream's lock) is over
			resp := s.mustGet("ibanera")
			if got := useHeaders(t, url+ibanerasim.AccountsPath, resp.GetHeaders()); got != http.StatusOK {
				t.Errorf("after the hold: protected endpoint got %d, want 200", got)
			}
			if got := sim.LoginAttempts(); got != 7 {
				t.Errorf("upstream login attempts: got %d, want 7", got)
			}
		})
	}
}

// TestIbaneraDemo: the demo's ibanera provider works as `make run` serves
// it, on the real clock.
func TestIbaneraDemo(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	s := startConfig(t, nil, d.Config)
	resp := s.mustGet("ibanera")
	if got := useHeaders(t, d.Upstreams["ibanera"], resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("demo ibanera upstream: got %d, want 200", got)
	}
	if d.Simulators["ibanera"].(*ibanerasim.Server).Logins() != 1 {
		t.Errorf("demo ibanera logins: got %d, want 1", d.Simulators["ibanera"].(*ibanerasim.Server).Logins())
	}
}

// TestIbaneraRefusalInA503IsARejection: a wrong otp refused with a code
// tokenvend does not know, in a 503, is a rejection: bursts of callers
// cost one login attempt per backoff period, the refusals count towards
// max_failed_logins, and the upstream (which locks after 5 failures)
// never locks. A 503 without an envelope is still retried as transient.
func TestIbaneraRefusalInA503IsARejection(t *testing.T) {
	t.Parallel()
	t.Run("refusal", func(t *testing.T) {
		t.Parallel()
		clk := newClock()
		sim := ibanerasim.New(ibanerasim.Options{
			// Not the configured secret: every otp tokenvend sends is wrong.
			Users:     []ibanerasim.User{{Username: ibaneraUser, Password: ibaneraPassword, TOTPSecret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"}},
			SkewSteps: -1,
			Now:       clk.Now,
		})
		sim.SetFault(ibanerasim.Fault{RejectStatus: http.StatusServiceUnavailable})
		s := startService(t, clk, "cache:\n  reject_backoff: 1m\nproviders:"+ibaneraProvider(serve(t, sim), ibaneraPassword, ""))
		burst := func(n int) {
			t.Helper()
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera"})
					code, info := errorInfo(t, err)
					if code != codes.FailedPrecondition || info.GetReason() != "CREDENTIALS_REJECTED" || info.GetMetadata()["upstream_code"] != ibanerasim.MsgOtpIncorrect {
						t.Errorf("got %v %s %v, want FailedPrecondition CREDENTIALS_REJECTED upstream_code %s", code, info.GetReason(), info.GetMetadata(), ibanerasim.MsgOtpIncorrect)
					}
				})
			}
			wg.Wait()
		}
		for i, st := range []struct {
			advance time.Duration
			want    int64
		}{
			{0, 1},                // one attempt for the whole burst
			{59 * time.Second, 1}, // inside the 1m hold
			{time.Second, 2},      // the hold is over: one attempt
			// max_failed_logins (2) reached: never sent again.
			{2 * time.Minute, 2},
			{4 * time.Minute, 2},
			{30 * time.Minute, 2},
		} {
			clk.Advance(st.advance)
			burst(100)
			if got := sim.LoginAttempts(); got != st.want {
				t.Fatalf("step %d: upstream login attempts: got %d, want %d", i, got, st.want)
			}
			if sim.Locked(ibaneraUser) {
				t.Fatalf("step %d: the upstream locked the account", i)
			}
		}
		if got := sim.FailedLogins(); got != 2 {
			t.Errorf("failed logins upstream: got %d, want 2", got)
		}
	})
	t.Run("503 without an envelope", func(t *testing.T) {
		t.Parallel()
		clk := newClock()
		sim, url := ibaneraSim(t, clk)
		sim.SetFault(ibanerasim.Fault{Status: http.StatusServiceUnavailable, Body: "Service Unavailable"})
		s := startService(t, clk, "cache:\n  login_attempts: 3\n  login_timeout: 5m\nproviders:"+ibaneraProvider(url, ibaneraPassword, ""))
		_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ibanera"})
		if code, info := errorInfo(t, err); code != codes.Unavailable || info.GetReason() != "UPSTREAM_UNAVAILABLE" {
			t.Fatalf("got %v %s, want Unavailable UPSTREAM_UNAVAILABLE", code, info.GetReason())
		}
		if got := sim.LoginAttempts(); got != 3 {
			t.Errorf("upstream login attempts: got %d, want 3 (login_attempts: retried as transient)", got)
		}
		// Each retry waited for a fresh TOTP step (the fake clock moved);
		// nothing is held: once the upstream is back, the next call logs in.
		sim.SetFault(ibanerasim.Fault{})
		resp := s.mustGet("ibanera")
		if got := useHeaders(t, url+ibanerasim.AccountsPath, resp.GetHeaders()); got != http.StatusOK {
			t.Errorf("protected endpoint: got %d, want 200", got)
		}
	})
}
