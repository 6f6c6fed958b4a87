package ibanera_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera/ibanerasim"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

const (
	user = "treasury@example.com"
	// password needs JSON escaping: a client that builds the body by hand
	// sends a different password.
	password = `pa"ss\wörd {1}`
	// totpSecret is the account's shared secret as Ibanera shows it.
	totpSecret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXQ"
)

// The Client is both halves of the scheme.
var (
	_ token.Source   = (*ibanera.Client)(nil)
	_ broker.PerCall = (*ibanera.Client)(nil)
)

// stepStart is the start of a TOTP step (12:00:00 is a multiple of 30 s).
var stepStart = time.Date(2031, 3, 4, 12, 0, 0, 0, time.UTC)

// clock is the fake clock of the client and the simulator; its sleep
// moves it, and records every wait.
type clock struct {
	*clocktest.Clock
	mu    sync.Mutex
	waits []time.Duration
}

func newClock(t time.Time) *clock { return &clock{Clock: clocktest.New(t)} }

func (c *clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.Advance(d)
	return nil
}

func (c *clock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

func users() []ibanerasim.User {
	return []ibanerasim.User{
		{Username: user, Password: password, TOTPSecret: totpSecret},
		{Username: "unverified@example.com", Password: password, TOTPSecret: totpSecret, Unverified: true},
		{Username: "suppressed@example.com", Password: password, TOTPSecret: totpSecret, Suppressed: true},
	}
}

// startSim serves a simulator on clk (with users() when o has none). It
// accepts codes of the current step only unless o says otherwise, so a
// test passes only if tokenvend never leans on the upstream's skew.
func startSim(t *testing.T, clk *clock, o ibanerasim.Options) (*ibanerasim.Server, *httptest.Server) {
	t.Helper()
	if o.Users == nil {
		o.Users = users()
	}
	if o.SkewSteps == 0 {
		o.SkewSteps = -1
	}
	o.Now = clk.Now
	sim := ibanerasim.New(o)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { sim.SetFault(ibanerasim.Fault{}) }) // runs before Close
	return sim, srv
}

func baseConfig(srv *httptest.Server) ibanera.Config {
	return ibanera.Config{
		BaseURL:    srv.URL,
		Username:   user,
		Password:   secret.Literal(password),
		TOTPSecret: secret.Literal(totpSecret),
	}
}

func newClient(t *testing.T, cfg ibanera.Config, srv *httptest.Server, clk *clock) *ibanera.Client {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return ibanera.New(cfg, srv.Client(), clk.Now, clk.Sleep)
}

func yamlSecret(t *testing.T, src string) secret.Secret {
	t.Helper()
	var s secret.Secret
	if err := yaml.Unmarshal([]byte(src), &s); err != nil {
		t.Fatalf("yaml.Unmarshal(%q): %v", src, err)
	}
	return s
}

// use calls the simulator's protected endpoint with tok's headers, at the
// simulator's now, and returns the status.
func use(t *testing.T, srv *httptest.Server, tok *token.Token) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+ibanerasim.AccountsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range tok.Headers {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func wantCode(t *testing.T, at time.Time) string {
	t.Helper()
	code, err := ibanerasim.Code(totpSecret, at)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestLoginThenFinishIsAcceptedUpstream(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart.Add(5 * time.Second))
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)

	session, err := c.Token(context.Background(), token.Request{})
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if session.Type != "Bearer" || session.Headers["Authorization"] != "Bearer "+session.AccessToken {
		t.Errorf("session: got type %q, Authorization %q, want Bearer <accessToken>", session.Type, session.Headers["Authorization"])
	}
	if got, want := session.Expiry, clk.Now().Add(ibanerasim.DefaultSessionTTL); !got.Equal(want) {
		t.Errorf("session expiry: got %v, want %v (issued + expiresIn)", got, want)
	}
	if _, ok := session.Headers[ibanera.Header]; ok {
		t.Errorf("the cached session carries an otp header: codes must be added per call")
	}
	if session.RefreshToken != "" {
		t.Errorf("the session keeps the refresh token: no endpoint takes it")
	}
	if got := use(t, srv, session); got != http.StatusUnauthorized {
		t.Errorf("protected endpoint with the session only: got %d, want 401 (it needs the otp too)", got)
	}

	answer, err := c.Finish(context.Background(), session)
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if got, want := answer.Headers[ibanera.Header], wantCode(t, clk.Now()); got != want {
		t.Errorf("otp: got %q, want %q", got, want)
	}
	if got, want := answer.Expiry, stepStart.Add(ibanera.Step); !got.Equal(want) {
		t.Errorf("expiry: got %v, want %v (the end of the code's step)", got, want)
	}
	if answer.Headers["Authorization"] != session.Headers["Authorization"] || answer.AccessToken != session.AccessToken {
		t.Errorf("Finish changed the session's credential")
	}
	if _, ok := session.Headers[ibanera.Header]; ok || !session.Expiry.Equal(clk.Now().Add(ibanerasim.DefaultSessionTTL)) {
		t.Errorf("Finish modified the cached token")
	}
	if got := use(t, srv, answer); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("logins: got %d, want 1", got)
	}
}

// TestFinishAtTheStepBoundary checks both sides of the skew allowance: a
// code with at least the allowance left is handed out at once; one with
// less is not, and Finish waits for the next step's code.
func TestFinishAtTheStepBoundary(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		allowance time.Duration // 0: the default, 3s
		at        time.Duration // into the step
		wait      time.Duration
	}{
		{"step start", 0, 0, 0},
		{"mid step", 0, 15 * time.Second, 0},
		{"exactly the allowance left", 0, 27 * time.Second, 0},
		{"just under the allowance left", 0, 27*time.Second + time.Millisecond, 3*time.Second - time.Millisecond},
		{"last instant of the step", 0, 30*time.Second - time.Nanosecond, time.Nanosecond},
		{"configured allowance, outside", 10 * time.Second, 20 * time.Second, 0},
		{"configured allowance, inside", 10 * time.Second, 20*time.Second + time.Millisecond, 10*time.Second - time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock(stepStart.Add(-time.Minute))
			_, srv := startSim(t, clk, ibanerasim.Options{})
			cfg := baseConfig(srv)
			cfg.TOTPSkewAllowance = tc.allowance
			c := newClient(t, cfg, srv, clk)
			session, err := c.Token(context.Background(), token.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			clk.Set(stepStart.Add(tc.at))

			answer, err := c.Finish(context.Background(), session)
			if err != nil {
				t.Fatalf("Finish: %v", err)
			}
			var waited time.Duration
			for _, w := range clk.Waits() {
				waited += w
			}
			if waited != tc.wait {
				t.Errorf("waited %v, want %v", waited, tc.wait)
			}
			step := stepStart
			if tc.wait > 0 {
				step = stepStart.Add(ibanera.Step)
			}
			if got, want := answer.Headers[ibanera.Header], wantCode(t, step); got != want {
				t.Errorf("otp: got %q, want %q (the code of the step starting %v)", got, want, step)
			}
			if got, want := answer.Expiry, step.Add(ibanera.Step); !got.Equal(want) {
				t.Errorf("expiry: got %v, want %v", got, want)
			}
			if left := answer.Expiry.Sub(clk.Now()); left < cfg.TOTPSkewAllowance {
				t.Errorf("handed out a code with %v left, want at least %v", left, cfg.TOTPSkewAllowance)
			}
			if got := use(t, srv, answer); got != http.StatusOK {
				t.Errorf("protected endpoint (current step only): got %d, want 200", got)
			}
		})
	}
}

func TestFinishExpiryIsTheSessionsWhenEarlier(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	_, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)
	session := &token.Token{AccessToken: "s", Type: "Bearer", Headers: map[string]string{"Authorization": "Bearer s"},
		Expiry: stepStart.Add(10 * time.Second)}
	answer, err := c.Finish(context.Background(), session)
	if err != nil {
		t.Fatal(err)
	}
	if !answer.Expiry.Equal(session.Expiry) {
		t.Errorf("expiry: got %v, want the session's %v", answer.Expiry, session.Expiry)
	}
	session.Expiry = time.Time{} // a session that never expires
	if answer, _ = c.Finish(context.Background(), session); !answer.Expiry.Equal(stepStart.Add(ibanera.Step)) {
		t.Errorf("expiry without a session expiry: got %v, want the step's end", answer.Expiry)
	}
}

func TestFinishHonoursTheCallersDeadline(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart.Add(28 * time.Second)) // 2s left, under the 3s allowance
	_, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)
	session := &token.Token{AccessToken: "s", Headers: map[string]string{"Authorization": "Bearer s"}}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Finish(ctx, session)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait longer than the deadline: got %v, want DeadlineExceeded", err)
	}
	if len(clk.Waits()) != 0 || ctx.Err() != nil {
		t.Errorf("Finish waited (%v) although the deadline could not be met", clk.Waits())
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := c.Finish(ctx, session); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: got %v, want Canceled", err)
	}
}

// TestLoginsNeverShareAStep: a server may refuse a code already used, so
// a second login in the same step waits for the next one.
func TestLoginsNeverShareAStep(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart.Add(10 * time.Second))
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)
	ctx := context.Background()

	if _, err := c.Token(ctx, token.Request{}); err != nil {
		t.Fatal(err)
	}
	second, err := c.Token(ctx, token.Request{})
	if err != nil {
		t.Fatalf("second login in the same step: %v", err)
	}
	if got, want := clk.Waits(), []time.Duration{20 * time.Second}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("waits: got %v, want %v (to the next step)", got, want)
	}
	if !second.IssuedAt.Equal(stepStart.Add(ibanera.Step)) {
		t.Errorf("second login issued at %v, want the next step's start", second.IssuedAt)
	}
	clk.Set(stepStart.Add(5 * time.Minute))
	if _, err := c.Token(ctx, token.Request{}); err != nil {
		t.Fatal(err)
	}
	if got := len(clk.Waits()); got != 1 {
		t.Errorf("a login in a later step waited: %v", clk.Waits())
	}
	if sim.Logins() != 3 || sim.FailedLogins() != 0 {
		t.Errorf("got %d logins, %d failed, want 3 and 0", sim.Logins(), sim.FailedLogins())
	}
}

func TestLoginNearTheBoundaryWaitsForTheNextStep(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart.Add(29 * time.Second))
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)
	if _, err := c.Token(context.Background(), token.Request{}); err != nil {
		t.Fatal(err)
	}
	if got := clk.Waits(); len(got) != 1 || got[0] != time.Second {
		t.Errorf("waits: got %v, want [1s]", got)
	}
	if sim.Logins() != 1 {
		t.Errorf("logins: got %d, want 1", sim.Logins())
	}
}

// TestRetryAfterTransientFailureUsesANewStep: a login that failed in
// transit may have used its code, so its retry waits for the next step.
func TestRetryAfterTransientFailureUsesANewStep(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	c := newClient(t, baseConfig(srv), srv, clk)
	sim.SetFault(ibanerasim.Fault{Status: http.StatusBadGateway, Body: "bad gateway"})
	if _, err := c.Token(context.Background(), token.Request{}); token.KindOf(err) != token.KindUnavailable {
		t.Fatalf("502: got %v, want unavailable", err)
	}
	sim.SetFault(ibanerasim.Fault{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Token(ctx, token.Request{})
	if token.KindOf(err) != token.KindUnavailable || !strings.Contains(err.Error(), "next TOTP step") {
		t.Errorf("retry whose wait outlasts the login's deadline: got %v, want unavailable, at once", err)
	}
	if sim.LoginAttempts() != 1 || len(clk.Waits()) != 0 {
		t.Errorf("got %d attempts, waits %v, want 1 and none", sim.LoginAttempts(), clk.Waits())
	}
	if _, err := c.Token(context.Background(), token.Request{}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got := clk.Waits(); len(got) != 1 || got[0] != ibanera.Step {
		t.Errorf("waits: got %v, want [30s]", got)
	}
}

// TestOneLoginAtATime: a login waits for the one in flight (which owns the
// last step), within its own deadline.
func TestOneLoginAtATime(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	sim.SetFault(ibanerasim.Fault{Hang: true})
	c := newClient(t, baseConfig(srv), srv, clk)
	hung, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Token(hung, token.Request{}); done <- err }()
	for sim.LoginAttempts() == 0 {
		time.Sleep(time.Millisecond)
	}

	ctx, stop := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer stop()
	_, err := c.Token(ctx, token.Request{})
	if token.KindOf(err) != token.KindUnavailable || !strings.Contains(err.Error(), "another login") {
		t.Errorf("second login while one hangs: got %v, want unavailable, waiting for the other", err)
	}
	cancel()
	if err := <-done; token.KindOf(err) != token.KindUnavailable {
		t.Errorf("the hung login: got %v, want unavailable", err)
	}
	if got := sim.LoginAttempts(); got != 1 {
		t.Errorf("login attempts: got %d, want 1", got)
	}
}

// TestRejections: every refusal of a login is a rejection (never retried)
// with the upstream's code, and the client itself tries once.
func TestRejections(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		user     string
		password string
		secret   string
		lockAt   int // the simulator's MaxFailures
		reason   string
		upstream string
		hold     time.Duration
	}{
		{"wrong password", user, "wrong", totpSecret, 0, token.ReasonCredentialsRejected, ibanerasim.MsgBadCredentials, 0},
		{"unknown user", "nobody@example.com", password, totpSecret, 0, token.ReasonCredentialsRejected, ibanerasim.MsgBadCredentials, 0},
		{"not verified", "unverified@example.com", password, totpSecret, 0, token.ReasonAccountNotVerified, ibanerasim.MsgNotVerified, 0},
		{"suppressed", "suppressed@example.com", password, totpSecret, 0, ibanera.ReasonAccountSuppressed, ibanerasim.MsgSuppressed, 0},
		// A wrong otp's code is undocumented: an unknown code is a rejection.
		{"wrong totp secret", user, password, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 0, token.ReasonCredentialsRejected, ibanerasim.MsgOtpIncorrect, 0},
		{"locked", user, "wrong", totpSecret, 1, token.ReasonAccountLocked, ibanerasim.MsgLocked, 7 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock(stepStart)
			sim, srv := startSim(t, clk, ibanerasim.Options{MaxFailures: tc.lockAt})
			cfg := baseConfig(srv)
			cfg.Username, cfg.Password, cfg.TOTPSecret = tc.user, secret.Literal(tc.password), secret.Literal(tc.secret)
			cfg.LockoutHold = 7 * time.Minute
			c := newClient(t, cfg, srv, clk)

			_, err := c.Token(context.Background(), token.Request{})
			var e *token.Error
			if !errors.As(err, &e) || e.Kind != token.KindRejected || e.Reason != tc.reason || e.Upstream != tc.upstream || e.Hold != tc.hold {
				t.Fatalf("got %#v, want rejected %s upstream %s hold %v", err, tc.reason, tc.upstream, tc.hold)
			}
			if sim.LoginAttempts() != 1 {
				t.Errorf("login attempts: got %d, want 1", sim.LoginAttempts())
			}
			assertSafe(t, err, tc.password, tc.secret)
		})
	}
}

// TestAnswersAreReadByStatus: the envelope's status, not the HTTP code,
// says whether a login succeeded; anything that is not Ibanera speaking
// is transient.
func TestAnswersAreReadByStatus(t *testing.T) {
	t.Parallel()
	const ok = `{"accessToken":"SESSION","expiresIn":600,"refreshToken":"R","refreshTokenExpiresIn":86400}`
	cases := []struct {
		name     string
		fault    ibanerasim.Fault
		kind     token.Kind // KindInternal: success
		reason   string
		upstream string
	}{
		{"200 with status 0", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Account_Locked"}]}`},
			token.KindRejected, token.ReasonAccountLocked, "Account_Locked"},
		{"200 with status 0, bad credentials", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Username_Or_Password_Incorrect"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Username_Or_Password_Incorrect"},
		{"the most serious code wins", ibanerasim.Fault{Status: 400, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"password","messageCode":"Username_Or_Password_Incorrect"},{"fieldName":"","messageCode":"Account_Locked"}]}`},
			token.KindRejected, token.ReasonAccountLocked, "Account_Locked"},
		{"Required", ibanerasim.Fault{Status: 400, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"otp","messageCode":"Required"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Required"},
		{"no code", ibanerasim.Fault{Status: 400, Body: `{"id":1,"details":null,"status":"0","errors":[]}`},
			token.KindRejected, token.ReasonCredentialsRejected, ""},
		{"free text code", ibanerasim.Fault{Status: 400, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"user x@y failed: pw=abc"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "UNRECOGNISED"},
		{"401 with status 0", ibanerasim.Fault{Status: 401, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Account_Suppressed"}]}`},
			token.KindRejected, ibanera.ReasonAccountSuppressed, "Account_Suppressed"},
		{"status as a number", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":` + ok + `,"status":1,"errors":[]}`},
			token.KindInternal, "", ""},
		{"400 with status 1", ibanerasim.Fault{Status: 400, Body: `{"id":1,"details":` + ok + `,"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"status 1 without details", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":null,"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"no expiresIn", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":{"accessToken":"S"},"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"token unfit for a header", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":{"accessToken":"S\r\nX-Evil: 1","expiresIn":600},"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"unknown status", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":null,"status":"2","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"200 without an envelope", ibanerasim.Fault{Status: 200, Body: `{"access_token":"S"}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"not JSON", ibanerasim.Fault{Garbage: true}, token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		// A refusal of the credentials is one whatever the HTTP code:
		// retried as transient, it would count towards the lockout.
		{"503 with a rejection envelope", ibanerasim.Fault{Status: 503, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Username_Or_Password_Incorrect"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Username_Or_Password_Incorrect"},
		{"429 with a lock envelope", ibanerasim.Fault{Status: 429, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Account_Locked"}]}`},
			token.KindRejected, token.ReasonAccountLocked, "Account_Locked"},
		// So is a code tokenvend does not know (a wrong otp's is
		// undocumented), and a refusal that gives no code at all.
		{"503 with an unknown code", ibanerasim.Fault{Status: 503, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"otp","messageCode":"Otp_Incorrect"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Otp_Incorrect"},
		{"429 with an unknown code", ibanerasim.Fault{Status: 429, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Internal_Error"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Internal_Error"},
		{"500 with Required", ibanerasim.Fault{Status: 500, Body: `{"id":1,"details":null,"status":"0","errors":[{"fieldName":"otp","messageCode":"Required"}]}`},
			token.KindRejected, token.ReasonCredentialsRejected, "Required"},
		{"502 with no code", ibanerasim.Fault{Status: 502, Body: `{"id":1,"details":null,"status":0,"errors":[]}`},
			token.KindRejected, token.ReasonCredentialsRejected, ""},
		// A 5xx or 429 without a refusal envelope says nothing of the
		// credentials: transient.
		{"503 without an envelope", ibanerasim.Fault{Status: 503, Body: `Service Unavailable`}, token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"503 with JSON that is not an envelope", ibanerasim.Fault{Status: 503, Body: `{"message":"down","errors":[{"messageCode":"Username_Or_Password_Incorrect"}]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"503 with status 1", ibanerasim.Fault{Status: 503, Body: `{"id":1,"details":` + ok + `,"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"implausible expiresIn", ibanerasim.Fault{Status: 200, Body: `{"id":1,"details":{"accessToken":"abc","expiresIn":10000000000},"status":"1","errors":[]}`},
			token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"429", ibanerasim.Fault{Status: 429, Body: `{}`}, token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
		{"404 page", ibanerasim.Fault{Status: 404, Body: `not found`}, token.KindUnavailable, token.ReasonUpstreamUnavailable, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock(stepStart)
			sim, srv := startSim(t, clk, ibanerasim.Options{})
			sim.SetFault(tc.fault)
			c := newClient(t, baseConfig(srv), srv, clk)
			tok, err := c.Token(context.Background(), token.Request{})
			if tc.kind == token.KindInternal {
				if err != nil || tok.AccessToken != "SESSION" || !tok.Expiry.Equal(stepStart.Add(10*time.Minute)) {
					t.Fatalf("got %v, %v, want the session, expiring in 600s", tok, err)
				}
				return
			}
			var e *token.Error
			if !errors.As(err, &e) || e.Kind != tc.kind || e.Reason != tc.reason || e.Upstream != tc.upstream {
				t.Fatalf("got %#v, want kind %d %s upstream %q", err, tc.kind, tc.reason, tc.upstream)
			}
			if tc.reason == token.ReasonAccountLocked && e.Hold != ibanera.DefaultLockoutHold {
				t.Errorf("hold: got %v, want %v", e.Hold, ibanera.DefaultLockoutHold)
			}
			assertSafe(t, err, "SESSION", "abc", "x@y")
		})
	}
}

func TestTransportFailures(t *testing.T) {
	t.Parallel()
	t.Run("hang", func(t *testing.T) {
		t.Parallel()
		clk := newClock(stepStart)
		sim, srv := startSim(t, clk, ibanerasim.Options{})
		sim.SetFault(ibanerasim.Fault{Hang: true})
		c := newClient(t, baseConfig(srv), srv, clk)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := c.Token(ctx, token.Request{}); token.KindOf(err) != token.KindUnavailable {
			t.Errorf("got %v, want unavailable", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		clk := newClock(stepStart)
		_, srv := startSim(t, clk, ibanerasim.Options{})
		c := newClient(t, baseConfig(srv), srv, clk)
		srv.Close()
		if _, err := c.Token(context.Background(), token.Request{}); token.KindOf(err) != token.KindUnavailable {
			t.Errorf("got %v, want unavailable", err)
		}
	})
}

func TestUnreadableSecrets(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	good := newClient(t, baseConfig(srv), srv, clk)
	session, err := good.Token(context.Background(), token.Request{})
	if err != nil {
		t.Fatal(err)
	}

	for _, field := range []string{"password", "totp_secret"} {
		cfg := baseConfig(srv)
		missing := yamlSecret(t, "{env: TOKENVEND_IBANERA_TEST_UNSET}")
		if field == "password" {
			cfg.Password = missing
		} else {
			cfg.TOTPSecret = missing
		}
		c := ibanera.New(cfg, srv.Client(), clk.Now, clk.Sleep) // unvalidated: the env is gone at login time
		_, err := c.Token(context.Background(), token.Request{})
		var e *token.Error
		if !errors.As(err, &e) || e.Kind != token.KindRejected || e.Reason != token.ReasonSecretUnreadable || !strings.Contains(e.Message, field) {
			t.Errorf("%s unreadable at login: got %v, want rejected SECRET_UNREADABLE naming %s", field, err, field)
		}
		if field == "totp_secret" {
			if _, err := c.Finish(context.Background(), session); !errors.As(err, &e) || e.Reason != token.ReasonSecretUnreadable {
				t.Errorf("totp_secret unreadable per call: got %v, want SECRET_UNREADABLE", err)
			}
		}
	}
	if sim.LoginAttempts() != 1 {
		t.Errorf("login attempts: got %d, want 1 (none with an unreadable secret)", sim.LoginAttempts())
	}
}

// TestSecretAsAuthenticatorsShowIt: lower case, grouped, unpadded.
func TestSecretAsAuthenticatorsShowIt(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	_, srv := startSim(t, clk, ibanerasim.Options{})
	cfg := baseConfig(srv)
	cfg.TOTPSecret = secret.Literal(strings.ToLower("JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXQ"))
	c := newClient(t, cfg, srv, clk)
	session, err := c.Token(context.Background(), token.Request{})
	if err != nil {
		t.Fatal(err)
	}
	answer, err := c.Finish(context.Background(), session)
	if err != nil {
		t.Fatal(err)
	}
	if got := use(t, srv, answer); got != http.StatusOK {
		t.Errorf("protected endpoint: got %d, want 200", got)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := func() ibanera.Config {
		return ibanera.Config{BaseURL: "https://api.ibanera.example", Username: user,
			Password: secret.Literal(password), TOTPSecret: secret.Literal(totpSecret)}
	}
	t.Run("defaults", func(t *testing.T) {
		c := good()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if c.TOTPSkewAllowance != 3*time.Second || c.LockoutHold != 10*time.Minute {
			t.Errorf("defaults: got %v, %v, want 3s, 10m", c.TOTPSkewAllowance, c.LockoutHold)
		}
	})
	cases := []struct {
		name string
		edit func(*ibanera.Config)
		want string
	}{
		{"no base_url", func(c *ibanera.Config) { c.BaseURL = "" }, "base_url: is required"},
		{"base_url with a query", func(c *ibanera.Config) { c.BaseURL += "?x=1" }, "base_url: must not have a query"},
		{"no username", func(c *ibanera.Config) { c.Username = "" }, "username: is required"},
		{"no password", func(c *ibanera.Config) { c.Password = secret.Secret{} }, "password: not set"},
		{"no totp_secret", func(c *ibanera.Config) { c.TOTPSecret = secret.Secret{} }, "totp_secret: not set"},
		{"totp_secret not Base32", func(c *ibanera.Config) { c.TOTPSecret = secret.Literal("not-base32!1") }, "totp_secret: is not a Base32 TOTP secret"},
		{"totp_secret of impossible length", func(c *ibanera.Config) { c.TOTPSecret = secret.Literal("ABC") }, "totp_secret: is not a Base32"},
		{"totp_secret only padding", func(c *ibanera.Config) { c.TOTPSecret = secret.Literal("====") }, "totp_secret: is empty"},
		{"negative allowance", func(c *ibanera.Config) { c.TOTPSkewAllowance = -time.Second }, "totp_skew_allowance: must not be negative"},
		{"allowance of half a step", func(c *ibanera.Config) { c.TOTPSkewAllowance = 15 * time.Second }, "totp_skew_allowance: must be less than 15s"},
		{"negative lockout_hold", func(c *ibanera.Config) { c.LockoutHold = -time.Minute }, "lockout_hold: must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "not-base32!1") || strings.Contains(err.Error(), password) {
				t.Errorf("the error holds a secret: %v", err)
			}
		})
	}
	t.Run("kept", func(t *testing.T) {
		c := good()
		c.TOTPSkewAllowance, c.LockoutHold = 14*time.Second, time.Hour
		if err := c.Validate(); err != nil || c.TOTPSkewAllowance != 14*time.Second || c.LockoutHold != time.Hour {
			t.Errorf("got %v, %v, %v, want 14s, 1h kept", err, c.TOTPSkewAllowance, c.LockoutHold)
		}
	})
}

// assertSafe fails if err says more than it should: a secret, a token or
// upstream free text.
func assertSafe(t *testing.T, err error, never ...string) {
	t.Helper()
	var e *token.Error
	if !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("got %v, want a *token.Error with a message", err)
	}
	for _, s := range append(never, password, totpSecret) {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("the error holds %q: %v", s, err)
		}
	}
}

// TestRefusedCredentialsAreNotSentAgain: after max_failed_logins refusals
// in a row of the same credentials, the client stops sending them (the
// upstream locks the account at 5, and the cache's backoff alone would get
// there), until they change; a lock or an account state does not count.
func TestRefusedCredentialsAreNotSentAgain(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	path := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(path, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(srv)
	cfg.Password = yamlSecret(t, "{file: "+path+"}")
	c := newClient(t, cfg, srv, clk)

	for i := range 10 {
		clk.Advance(ibanera.Step) // a fresh step for every attempt, as the cache's holds would give
		_, err := c.Token(context.Background(), token.Request{})
		var e *token.Error
		if !errors.As(err, &e) || e.Reason != token.ReasonCredentialsRejected {
			t.Fatalf("attempt %d: got %v, want CREDENTIALS_REJECTED", i, err)
		}
		if i >= ibanera.DefaultMaxFailedLogins && !strings.Contains(e.Message, "will not send them again") {
			t.Errorf("attempt %d: message %q does not say the credentials are no longer sent", i, e.Message)
		}
	}
	if got := sim.LoginAttempts(); got != ibanera.DefaultMaxFailedLogins {
		t.Errorf("upstream login attempts: got %d, want %d", got, ibanera.DefaultMaxFailedLogins)
	}
	if sim.Locked(user) {
		t.Fatal("the upstream locked the account")
	}

	// The operator fixes the password: the next login sends it.
	if err := os.WriteFile(path, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Advance(ibanera.Step)
	tok, err := c.Token(context.Background(), token.Request{})
	if err != nil {
		t.Fatalf("after the fix: %v", err)
	}
	if got := use(t, srv, mustFinish(t, c, tok)); got != http.StatusOK {
		t.Errorf("session after the fix upstream: got %d, want 200", got)
	}
}

// TestRefusalsUnder5xxCountTowardsMaxFailedLogins: a wrong otp refused
// with a code tokenvend does not know, wrapped in a 503 or 429, is a
// refusal of the credentials like any other: the client stops sending
// them after max_failed_logins, and the upstream never locks.
func TestRefusalsUnder5xxCountTowardsMaxFailedLogins(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			clk := newClock(stepStart)
			sim, srv := startSim(t, clk, ibanerasim.Options{})
			sim.SetFault(ibanerasim.Fault{RejectStatus: status})
			cfg := baseConfig(srv)
			cfg.TOTPSecret = secret.Literal("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ") // not the account's: every otp is wrong
			c := newClient(t, cfg, srv, clk)
			for i := range 10 {
				clk.Advance(ibanera.Step)
				_, err := c.Token(context.Background(), token.Request{})
				var e *token.Error
				if !errors.As(err, &e) || e.Kind != token.KindRejected || e.Reason != token.ReasonCredentialsRejected || e.Upstream != ibanerasim.MsgOtpIncorrect {
					t.Fatalf("attempt %d: got %#v, want rejected CREDENTIALS_REJECTED upstream %s", i, err, ibanerasim.MsgOtpIncorrect)
				}
			}
			if got := sim.LoginAttempts(); got != ibanera.DefaultMaxFailedLogins {
				t.Errorf("upstream login attempts: got %d, want %d", got, ibanera.DefaultMaxFailedLogins)
			}
			if sim.Locked(user) {
				t.Error("the upstream locked the account")
			}
		})
	}
}

// TestLockIsNotCountedAgainstTheCredentials: Account_Locked, however often,
// does not stop the client sending credentials that were never refused.
func TestLockIsNotCountedAgainstTheCredentials(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{LockFor: time.Hour})
	for range 5 { // someone else locks the account
		clk.Advance(ibanera.Step)
		resp, err := http.Post(srv.URL+ibanerasim.LoginPath, "application/json",
			strings.NewReader(`{"username":"`+user+`","password":"guess","otp":"000000"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	c := newClient(t, baseConfig(srv), srv, clk)
	for range 5 {
		clk.Advance(ibanera.Step)
		if _, err := c.Token(context.Background(), token.Request{}); err == nil || !strings.Contains(err.Error(), "Account_Locked") {
			t.Fatalf("while locked: got %v, want Account_Locked", err)
		}
	}
	clk.Advance(time.Hour)
	if _, err := c.Token(context.Background(), token.Request{}); err != nil {
		t.Errorf("after the lock: got %v, want a login", err)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("upstream logins: got %d, want 1", got)
	}
}

func mustFinish(t *testing.T, c *ibanera.Client, tok *token.Token) *token.Token {
	t.Helper()
	out, err := c.Finish(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSharedFailuresAndSteps: replicas sharing a store (Share) count the
// fleet's failed logins, not each their own: three replicas with a wrong
// password send it DefaultSharedMaxFailedLogins times in all, below the
// lockout; and two replicas logging in within one step never send the
// same step's code.
func TestSharedFailuresAndSteps(t *testing.T) {
	t.Parallel()
	t.Run("failures", func(t *testing.T) {
		t.Parallel()
		clk := newClock(stepStart)
		sim, srv := startSim(t, clk, ibanerasim.Options{})
		cfg := baseConfig(srv)
		cfg.Password = secret.Literal("wrong")
		shared := token.NewMemoryStore(clk.Now)
		var replicas []*ibanera.Client
		for range 3 {
			c := newClient(t, cfg, srv, clk)
			c.Share(shared, shared)
			replicas = append(replicas, c)
		}
		for i := range 12 {
			clk.Advance(ibanera.Step)
			_, err := replicas[i%3].Token(context.Background(), token.Request{})
			if token.KindOf(err) != token.KindRejected {
				t.Fatalf("attempt %d: got %v, want a rejection", i, err)
			}
		}
		if got := sim.LoginAttempts(); got != ibanera.DefaultSharedMaxFailedLogins {
			t.Errorf("upstream login attempts: got %d, want %d for the fleet", got, ibanera.DefaultSharedMaxFailedLogins)
		}
		if sim.Locked(user) {
			t.Fatal("the upstream locked the account")
		}
	})
	t.Run("steps", func(t *testing.T) {
		t.Parallel()
		clk := newClock(stepStart)
		_, srv := startSim(t, clk, ibanerasim.Options{})
		shared := token.NewMemoryStore(clk.Now)
		a, b := newClient(t, baseConfig(srv), srv, clk), newClient(t, baseConfig(srv), srv, clk)
		a.Share(shared, shared)
		b.Share(shared, shared)
		clk.Advance(ibanera.Step)
		if _, err := a.Token(context.Background(), token.Request{}); err != nil {
			t.Fatalf("replica a: %v", err)
		}
		before := clk.Now()
		if _, err := b.Token(context.Background(), token.Request{}); err != nil {
			t.Fatalf("replica b: %v (the simulator refuses a code used twice)", err)
		}
		if clk.Now().Sub(before) <= 0 {
			t.Error("replica b logged in within replica a's step: it must wait for the next")
		}
	})
}

// deadStore is a shared store that cannot be reached.
type deadStore struct{}

var errDead = errors.New("the store cannot be reached")

func (deadStore) ChargeFailure(context.Context, string, int) (int, bool, error) {
	return 0, false, errDead
}
func (deadStore) RefundFailure(context.Context, string) error { return errDead }
func (deadStore) ClearFailures(context.Context, string) error { return errDead }
func (deadStore) ReserveStep(context.Context, int64, time.Duration) (bool, error) {
	return false, errDead
}

// TestSharedStoreLostAllowsOneFailure: while the fleet's count cannot be
// reached, a replica allows itself one failed login, not max_failed_logins:
// it cannot know what the other replicas have spent. A right password
// still logs in.
func TestSharedStoreLostAllowsOneFailure(t *testing.T) {
	t.Parallel()
	clk := newClock(stepStart)
	sim, srv := startSim(t, clk, ibanerasim.Options{})
	cfg := baseConfig(srv)
	cfg.Password = secret.Literal("wrong")
	c := newClient(t, cfg, srv, clk)
	c.Share(deadStore{}, deadStore{})
	for i := range 5 {
		clk.Advance(ibanera.Step)
		if _, err := c.Token(context.Background(), token.Request{}); token.KindOf(err) != token.KindRejected {
			t.Fatalf("attempt %d: got %v, want a rejection", i, err)
		}
	}
	if got := sim.FailedLogins(); got != 1 {
		t.Errorf("failed logins upstream with the store lost: got %d, want 1", got)
	}
	good := newClient(t, baseConfig(srv), srv, clk)
	good.Share(deadStore{}, deadStore{})
	clk.Advance(ibanera.Step)
	if _, err := good.Token(context.Background(), token.Request{}); err != nil {
		t.Errorf("the right password with the store lost: %v", err)
	}
}
