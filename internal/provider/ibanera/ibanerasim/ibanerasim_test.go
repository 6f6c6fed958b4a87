package ibanerasim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

const (
	aliceSecret = "JBSWY3DPEHPK3PXP"
	bobSecret   = "KRSXG5CTMVRXEZLUKN2XAZLSKNSWG4TF"
)

// start is 5 seconds into a 30-second step, so tests know how far the next boundary is.
var start = time.Unix(1_700_000_010+5, 0) // 1_700_000_010 is a multiple of 30

func testUsers() []User {
	return []User{
		{Username: "alice", Password: "alice-pw", TOTPSecret: aliceSecret},
		{Username: "bob", Password: "bob-pw", TOTPSecret: strings.ToLower(bobSecret)},
		{Username: "unverified", Password: "u-pw", TOTPSecret: aliceSecret, Unverified: true},
		{Username: "suppressed", Password: "s-pw", TOTPSecret: aliceSecret, Suppressed: true},
	}
}

type fixture struct {
	sim   *Server
	url   string
	clock *clocktest.Clock
}

// newFixture starts the simulator on a real loopback listener with a fake clock at start.
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	c := clocktest.New(start)
	if o.Users == nil {
		o.Users = testUsers()
	}
	o.Now = c.Now
	sim := New(o)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	return &fixture{sim: sim, url: ts.URL, clock: c}
}

// code is the TOTP code for secret at the fixture's time plus offset steps. The secrets are
// the test's constants, so an error is a bug in the test.
func (f *fixture) code(secret string, offsetSteps int) string {
	c, err := Code(secret, f.clock.Now().Add(time.Duration(offsetSteps)*stepSeconds*time.Second))
	if err != nil {
		panic(err)
	}
	return c
}

// answer is a decoded envelope plus what came with it.
type answer struct {
	status  int
	ctype   string
	raw     []byte
	ID      int64           `json:"id"`
	Details json.RawMessage `json:"details"`
	Status  string          `json:"status"`
	Errors  []apiError      `json:"errors"`
}

func (a answer) codes() []string {
	var out []string
	for _, e := range a.Errors {
		out = append(out, e.MessageCode)
	}
	return out
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	a := answer{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), raw: raw}
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("%s %s: body %q is not an envelope: %v", req.Method, req.URL.Path, raw, err)
	}
	return a
}

func (f *fixture) postLogin(t *testing.T, contentType, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.url+LoginPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

func (f *fixture) login(t *testing.T, username, password, otp string) answer {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password, "otp": otp})
	return f.postLogin(t, "application/json", string(body))
}

// mustLogin logs in and returns the access token, failing the test if the login is refused.
func (f *fixture) mustLogin(t *testing.T, username, password, otp string) string {
	t.Helper()
	a := f.login(t, username, password, otp)
	if a.status != http.StatusOK || a.Status != "1" {
		t.Fatalf("login %s: got HTTP %d status %q errors %v, want 200 status \"1\"", username, a.status, a.Status, a.Errors)
	}
	var d loginDetails
	if err := json.Unmarshal(a.Details, &d); err != nil {
		t.Fatalf("login details %s: %v", a.Details, err)
	}
	return d.AccessToken
}

func (f *fixture) accounts(t *testing.T, headers map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.url+AccountsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

func wantRejected(t *testing.T, a answer, httpStatus int, want ...apiError) {
	t.Helper()
	if a.status != httpStatus {
		t.Errorf("HTTP status: got %d, want %d (body %s)", a.status, httpStatus, a.raw)
	}
	if a.Status != "0" {
		t.Errorf("envelope status: got %q, want \"0\"", a.Status)
	}
	if string(a.Details) != "null" {
		t.Errorf("details: got %s, want null", a.Details)
	}
	if !reflect.DeepEqual(a.Errors, want) {
		t.Errorf("errors: got %+v, want %+v", a.Errors, want)
	}
}

func TestLoginSuccess(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	a := f.login(t, "alice", "alice-pw", f.code(aliceSecret, 0))

	if a.status != http.StatusOK {
		t.Fatalf("HTTP status: got %d, want 200 (body %s)", a.status, a.raw)
	}
	if !strings.HasPrefix(a.ctype, "application/json") {
		t.Errorf("Content-Type: got %q, want application/json", a.ctype)
	}
	// The envelope's exact shape: four keys, status a JSON string, errors an empty list.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(a.raw, &top); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(top)); !slices.Equal(keys, []string{"details", "errors", "id", "status"}) {
		t.Errorf("envelope keys: got %v, want [details errors id status]", keys)
	}
	if got := string(top["status"]); got != `"1"` {
		t.Errorf("status: got %s, want \"1\" (a string)", got)
	}
	if got := string(top["errors"]); got != `[]` {
		t.Errorf("errors: got %s, want []", got)
	}
	if a.ID <= 0 {
		t.Errorf("id: got %d, want a positive integer", a.ID)
	}
	var d map[string]any
	if err := json.Unmarshal(a.Details, &d); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(d)); !slices.Equal(keys, []string{"accessToken", "expiresIn", "refreshToken", "refreshTokenExpiresIn"}) {
		t.Errorf("details keys: got %v", keys)
	}
	if got := d["expiresIn"]; got != float64(3600) {
		t.Errorf("expiresIn: got %v, want 3600", got)
	}
	if got := d["refreshTokenExpiresIn"]; got != float64(86400) {
		t.Errorf("refreshTokenExpiresIn: got %v, want 86400", got)
	}
	access, _ := d["accessToken"].(string)
	refresh, _ := d["refreshToken"].(string)
	if access == "" || refresh == "" || access == refresh {
		t.Errorf("tokens: got access %q refresh %q, want two different non-empty tokens", access, refresh)
	}
	if got := f.sim.Logins(); got != 1 {
		t.Errorf("Logins: got %d, want 1", got)
	}
	if got := f.sim.LoginAttempts(); got != 1 {
		t.Errorf("LoginAttempts: got %d, want 1", got)
	}
	if got := f.sim.FailedLogins(); got != 0 {
		t.Errorf("FailedLogins: got %d, want 0", got)
	}

	// The session works on the protected endpoint with a code for now.
	ok := f.accounts(t, map[string]string{"Authorization": "Bearer " + access, "otp": f.code(aliceSecret, 0)})
	if ok.status != http.StatusOK || ok.Status != "1" {
		t.Fatalf("accounts: got HTTP %d status %q errors %v, want 200 \"1\"", ok.status, ok.Status, ok.Errors)
	}
	var ad accountsDetails
	if err := json.Unmarshal(ok.Details, &ad); err != nil {
		t.Fatal(err)
	}
	if ad.Username != "alice" {
		t.Errorf("accounts username: got %q, want alice", ad.Username)
	}
	// The refresh token is not a session.
	bad := f.accounts(t, map[string]string{"Authorization": "Bearer " + refresh, "otp": f.code(aliceSecret, 0)})
	wantRejected(t, bad, http.StatusUnauthorized, apiError{fieldAuthorization, MsgTokenInvalid})
}

func TestOptionsLifetimes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{SessionTTL: 90 * time.Second, RefreshTTL: time.Hour})
	a := f.login(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	var d loginDetails
	if err := json.Unmarshal(a.Details, &d); err != nil {
		t.Fatal(err)
	}
	if d.ExpiresIn != 90 || d.RefreshTokenExpiresIn != 3600 {
		t.Errorf("lifetimes: got expiresIn %d refreshTokenExpiresIn %d, want 90 and 3600", d.ExpiresIn, d.RefreshTokenExpiresIn)
	}
}

func TestLoginValidation(t *testing.T) {
	t.Parallel()
	req := func(field string) apiError { return apiError{field, MsgRequired} }
	tests := []struct {
		name        string
		contentType string
		body        string
		want        []apiError
	}{
		{"no content type", "", `{"username":"alice","password":"alice-pw","otp":"123456"}`, []apiError{{"", MsgUnsupportedMediaType}}},
		{"text/plain", "text/plain", `{"username":"alice","password":"alice-pw","otp":"123456"}`, []apiError{{"", MsgUnsupportedMediaType}}},
		{"form", "application/x-www-form-urlencoded", `username=alice&password=alice-pw&otp=123456`, []apiError{{"", MsgUnsupportedMediaType}}},
		{"malformed json", "application/json", `{"username":`, []apiError{{"", MsgInvalidRequest}}},
		{"array", "application/json", `[]`, []apiError{{"", MsgInvalidRequest}}},
		{"trailing data", "application/json", `{"username":"a","password":"b","otp":"123456"} {}`, []apiError{{"", MsgInvalidRequest}}},
		{"empty body", "application/json", ``, []apiError{{"", MsgInvalidRequest}}},
		{"empty object", "application/json", `{}`, []apiError{req("username"), req("password"), req("otp")}},
		{"json null", "application/json", `null`, []apiError{req("username"), req("password"), req("otp")}},
		{"missing otp", "application/json", `{"username":"alice","password":"alice-pw"}`, []apiError{req("otp")}},
		{"missing password", "application/json", `{"username":"alice","otp":"123456"}`, []apiError{req("password")}},
		{"missing username", "application/json", `{"password":"alice-pw","otp":"123456"}`, []apiError{req("username")}},
		{"empty strings", "application/json", `{"username":"","password":"","otp":""}`, []apiError{req("username"), req("password"), req("otp")}},
		{"blank otp", "application/json", `{"username":"alice","password":"alice-pw","otp":"   "}`, []apiError{req("otp")}},
		{"null otp", "application/json", `{"username":"alice","password":"alice-pw","otp":null}`, []apiError{req("otp")}},
		{"wrong case field names", "application/json", `{"Username":"alice","Password":"alice-pw","OTP":"123456"}`, []apiError{req("username"), req("password"), req("otp")}},
		{"wrong field name", "application/json", `{"username":"alice","password":"alice-pw","totp":"123456"}`, []apiError{req("otp")}},
		{"otp as a number", "application/json", `{"username":"alice","password":"alice-pw","otp":123456}`, []apiError{{"otp", MsgInvalidFormat}}},
		{"username as an object", "application/json", `{"username":{},"password":"alice-pw","otp":"123456"}`, []apiError{{"username", MsgInvalidFormat}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Options{MaxFailures: 1})
			a := f.postLogin(t, tt.contentType, tt.body)
			wantRejected(t, a, http.StatusBadRequest, tt.want...)
			if got := f.sim.LoginAttempts(); got != 1 {
				t.Errorf("LoginAttempts: got %d, want 1", got)
			}
			if got := f.sim.FailedLogins(); got != 1 {
				t.Errorf("FailedLogins: got %d, want 1", got)
			}
			// A request that never reached the credentials does not count towards the lock
			// (MaxFailures is 1 here, so one counted failure would lock).
			if f.sim.Locked("alice") {
				t.Errorf("Locked(alice): got true after a validation error, want false")
			}
		})
	}
}

func TestLoginContentTypeWithCharset(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	body := `{"username":"alice","password":"alice-pw","otp":"` + f.code(aliceSecret, 0) + `"}`
	a := f.postLogin(t, "Application/JSON; charset=utf-8", body)
	if a.status != http.StatusOK || a.Status != "1" {
		t.Errorf("login: got HTTP %d status %q errors %v, want 200 \"1\"", a.status, a.Status, a.Errors)
	}
}

func TestLoginRejections(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		username string
		password string
		otp      func(f *fixture) string
		want     string
		counts   bool // whether the failure counts towards the lock
	}{
		{"unknown user", "mallory", "alice-pw", nil, MsgBadCredentials, false},
		{"username case differs", "Alice", "alice-pw", nil, MsgBadCredentials, false},
		{"wrong password", "alice", "wrong", nil, MsgBadCredentials, true},
		{"password case differs", "alice", "ALICE-PW", nil, MsgBadCredentials, true},
		{"unverified", "unverified", "u-pw", nil, MsgNotVerified, false},
		{"suppressed", "suppressed", "s-pw", nil, MsgSuppressed, false},
		{"unverified with a wrong password", "unverified", "wrong", nil, MsgBadCredentials, true},
		{"wrong otp", "alice", "alice-pw", func(f *fixture) string { return wrongCode(f.code(aliceSecret, 0)) }, MsgOtpIncorrect, true},
		{"another user's otp", "alice", "alice-pw", func(f *fixture) string { return f.code(bobSecret, 0) }, MsgOtpIncorrect, true},
		{"otp two steps old", "alice", "alice-pw", func(f *fixture) string { return f.code(aliceSecret, -2) }, MsgOtpIncorrect, true},
		{"otp two steps ahead", "alice", "alice-pw", func(f *fixture) string { return f.code(aliceSecret, 2) }, MsgOtpIncorrect, true},
		{"otp five digits", "alice", "alice-pw", func(f *fixture) string { return f.code(aliceSecret, 0)[1:] }, MsgOtpIncorrect, true},
		{"otp seven digits", "alice", "alice-pw", func(f *fixture) string { return "0" + f.code(aliceSecret, 0) }, MsgOtpIncorrect, true},
		{"otp not digits", "alice", "alice-pw", func(f *fixture) string { return "abcdef" }, MsgOtpIncorrect, true},
		{"otp with spaces", "alice", "alice-pw", func(f *fixture) string { c := f.code(aliceSecret, 0); return c[:3] + " " + c[3:] }, MsgOtpIncorrect, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Options{MaxFailures: 2})
			otp := f.code(aliceSecret, 0)
			if tt.otp != nil {
				otp = tt.otp(f)
			}
			a := f.login(t, tt.username, tt.password, otp)
			wantRejected(t, a, http.StatusBadRequest, apiError{"", tt.want})
			if got := f.sim.FailedLogins(); got != 1 {
				t.Errorf("FailedLogins: got %d, want 1", got)
			}
			if got := f.sim.Logins(); got != 0 {
				t.Errorf("Logins: got %d, want 0", got)
			}
			// With MaxFailures 2, a second identical attempt locks the account if and only if
			// the failure counts.
			a = f.login(t, tt.username, tt.password, otp)
			want := tt.want
			if tt.counts {
				want = MsgLocked
			}
			wantRejected(t, a, http.StatusBadRequest, apiError{"", want})
			if got := f.sim.Locked(tt.username); got != tt.counts {
				t.Errorf("Locked(%s): got %v, want %v", tt.username, got, tt.counts)
			}
		})
	}
}

// wrongCode returns a well-formed code that differs from c.
func wrongCode(c string) string {
	b := []byte(c)
	b[0] = '0' + (b[0]-'0'+1)%10
	return string(b)
}

func TestLoginSkew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		skew   int
		offset int
		ok     bool
	}{
		{"default, current", 0, 0, true},
		{"default, one behind", 0, -1, true},
		{"default, one ahead", 0, 1, true},
		{"default, two behind", 0, -2, false},
		{"default, two ahead", 0, 2, false},
		{"none, current", -1, 0, true},
		{"none, one behind", -1, -1, false},
		{"none, one ahead", -1, 1, false},
		{"two, two behind", 2, -2, true},
		{"two, two ahead", 2, 2, true},
		{"two, three ahead", 2, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Options{SkewSteps: tt.skew})
			a := f.login(t, "alice", "alice-pw", f.code(aliceSecret, tt.offset))
			if tt.ok {
				if a.status != http.StatusOK || a.Status != "1" {
					t.Errorf("login: got HTTP %d %v, want 200", a.status, a.Errors)
				}
				return
			}
			wantRejected(t, a, http.StatusBadRequest, apiError{"", MsgOtpIncorrect})
		})
	}
}

func TestLoginCodeReuse(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	now := f.code(aliceSecret, 0)
	f.mustLogin(t, "alice", "alice-pw", now)

	// The same code again, in the same step: refused, and counted.
	wantRejected(t, f.login(t, "alice", "alice-pw", now), http.StatusBadRequest, apiError{"", MsgOtpAlreadyUsed})
	if got := f.sim.FailedLogins(); got != 1 {
		t.Errorf("FailedLogins: got %d, want 1", got)
	}

	// Another user's use of the same step is independent.
	f.mustLogin(t, "bob", "bob-pw", f.code(bobSecret, 0))

	// The next step's code (one step of skew ahead) is a different code: accepted.
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 1))

	// Move into the next step: the previous step's code is still inside the skew window, but it
	// was used, so it stays refused; the current step's code was used too (as "one ahead").
	f.clock.Advance(stepSeconds * time.Second)
	wantRejected(t, f.login(t, "alice", "alice-pw", now), http.StatusBadRequest, apiError{"", MsgOtpAlreadyUsed})
	wantRejected(t, f.login(t, "alice", "alice-pw", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgOtpAlreadyUsed})
	// The step after is fresh.
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 1))

	// Two steps on, the old code is simply out of the window.
	f.clock.Advance(2 * stepSeconds * time.Second)
	wantRejected(t, f.login(t, "alice", "alice-pw", now), http.StatusBadRequest, apiError{"", MsgOtpIncorrect})
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))

	if got, want := f.sim.Logins(), int64(5); got != want {
		t.Errorf("Logins: got %d, want %d", got, want)
	}
	if got, want := f.sim.FailedLogins(), int64(4); got != want {
		t.Errorf("FailedLogins: got %d, want %d", got, want)
	}
	if got, want := f.sim.LoginAttempts(), int64(9); got != want {
		t.Errorf("LoginAttempts: got %d, want %d", got, want)
	}
}

func TestLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	for i := 1; i <= 4; i++ {
		wantRejected(t, f.login(t, "alice", "wrong", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgBadCredentials})
		if f.sim.Locked("alice") {
			t.Fatalf("Locked after %d failures: got true, want false", i)
		}
	}
	// The fifth failure locks, and says so.
	wantRejected(t, f.login(t, "alice", "wrong", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgLocked})
	if !f.sim.Locked("alice") {
		t.Fatalf("Locked after 5 failures: got false, want true")
	}
	// Locked: even the right password and code are refused, and other users are unaffected.
	wantRejected(t, f.login(t, "alice", "alice-pw", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgLocked})
	f.mustLogin(t, "bob", "bob-pw", f.code(bobSecret, 0))

	// Failures during the lock do not extend it.
	f.clock.Advance(10*time.Minute - time.Second)
	wantRejected(t, f.login(t, "alice", "wrong", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgLocked})
	if !f.sim.Locked("alice") {
		t.Fatalf("Locked 1s before the end: got false, want true")
	}
	f.clock.Advance(time.Second)
	if f.sim.Locked("alice") {
		t.Fatalf("Locked at the end of the lock: got true, want false")
	}
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))

	// The lock reset the count: four more failures do not lock.
	for range 4 {
		wantRejected(t, f.login(t, "alice", "wrong", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgBadCredentials})
	}
	if f.sim.Locked("alice") {
		t.Errorf("Locked after 4 new failures: got true, want false")
	}
	if f.sim.Locked("nobody") {
		t.Errorf("Locked(nobody): got true, want false")
	}
}

func TestLockoutCountsOtpFailuresAndSuccessResets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MaxFailures: 3, LockFor: time.Minute})
	used := f.code(aliceSecret, 0)
	f.mustLogin(t, "alice", "alice-pw", used)

	// Two failures, then a success: the count starts again.
	wantRejected(t, f.login(t, "alice", "alice-pw", wrongCode(used)), http.StatusBadRequest, apiError{"", MsgOtpIncorrect})
	wantRejected(t, f.login(t, "alice", "alice-pw", used), http.StatusBadRequest, apiError{"", MsgOtpAlreadyUsed})
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 1))
	wantRejected(t, f.login(t, "alice", "wrong", used), http.StatusBadRequest, apiError{"", MsgBadCredentials})
	wantRejected(t, f.login(t, "alice", "alice-pw", used), http.StatusBadRequest, apiError{"", MsgOtpAlreadyUsed})
	if f.sim.Locked("alice") {
		t.Fatalf("Locked after a success and 2 failures: got true, want false")
	}
	// Third consecutive failure, a reused code: locks for the configured minute.
	wantRejected(t, f.login(t, "alice", "alice-pw", used), http.StatusBadRequest, apiError{"", MsgLocked})
	f.clock.Advance(time.Minute - time.Nanosecond)
	if !f.sim.Locked("alice") {
		t.Errorf("Locked before LockFor: got false, want true")
	}
	f.clock.Advance(time.Nanosecond)
	if f.sim.Locked("alice") {
		t.Errorf("Locked after LockFor: got true, want false")
	}
}

func TestLockoutDisabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MaxFailures: -1})
	for range 20 {
		wantRejected(t, f.login(t, "alice", "wrong", f.code(aliceSecret, 0)), http.StatusBadRequest, apiError{"", MsgBadCredentials})
	}
	if f.sim.Locked("alice") {
		t.Errorf("Locked with MaxFailures -1: got true, want false")
	}
	f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
}

func TestAccounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	alice := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	code := f.code(aliceSecret, 0)

	tests := []struct {
		name    string
		headers map[string]string
		want    []apiError // nil: accepted
	}{
		{"both headers", map[string]string{"Authorization": "Bearer " + alice, "otp": code}, nil},
		{"lower-case scheme", map[string]string{"Authorization": "bearer " + alice, "otp": code}, nil},
		{"previous step's code", map[string]string{"Authorization": "Bearer " + alice, "otp": f.code(aliceSecret, -1)}, nil},
		{"next step's code", map[string]string{"Authorization": "Bearer " + alice, "otp": f.code(aliceSecret, 1)}, nil},
		{"no headers", nil, []apiError{{fieldAuthorization, MsgRequired}, {fieldOtp, MsgRequired}}},
		{"session only", map[string]string{"Authorization": "Bearer " + alice}, []apiError{{fieldOtp, MsgRequired}}},
		{"otp only", map[string]string{"otp": code}, []apiError{{fieldAuthorization, MsgRequired}}},
		{"token without scheme", map[string]string{"Authorization": alice, "otp": code}, []apiError{{fieldAuthorization, MsgTokenInvalid}}},
		{"basic scheme", map[string]string{"Authorization": "Basic " + alice, "otp": code}, []apiError{{fieldAuthorization, MsgTokenInvalid}}},
		{"empty bearer", map[string]string{"Authorization": "Bearer ", "otp": code}, []apiError{{fieldAuthorization, MsgTokenInvalid}}},
		{"unknown token", map[string]string{"Authorization": "Bearer nope", "otp": code}, []apiError{{fieldAuthorization, MsgTokenInvalid}}},
		{"token in otp header", map[string]string{"Authorization": "Bearer " + alice, "otp": alice}, []apiError{{fieldOtp, MsgOtpIncorrect}}},
		{"wrong code", map[string]string{"Authorization": "Bearer " + alice, "otp": wrongCode(code)}, []apiError{{fieldOtp, MsgOtpIncorrect}}},
		{"another user's code", map[string]string{"Authorization": "Bearer " + alice, "otp": f.code(bobSecret, 0)}, []apiError{{fieldOtp, MsgOtpIncorrect}}},
		{"code two steps old", map[string]string{"Authorization": "Bearer " + alice, "otp": f.code(aliceSecret, -2)}, []apiError{{fieldOtp, MsgOtpIncorrect}}},
		{"code in a different header", map[string]string{"Authorization": "Bearer " + alice, "X-Otp": code}, []apiError{{fieldOtp, MsgRequired}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := f.accounts(t, tt.headers)
			if tt.want == nil {
				if a.status != http.StatusOK || a.Status != "1" {
					t.Fatalf("got HTTP %d status %q errors %v, want 200 \"1\"", a.status, a.Status, a.Errors)
				}
				if !strings.Contains(string(a.Details), `"username":"alice"`) {
					t.Errorf("details: got %s, want username alice", a.Details)
				}
				return
			}
			wantRejected(t, a, http.StatusUnauthorized, tt.want...)
		})
	}
}

func TestAccountsFollowsClock(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{SessionTTL: 5 * time.Minute})
	token := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	first := f.code(aliceSecret, 0)
	call := func(otp string) answer {
		return f.accounts(t, map[string]string{"Authorization": "Bearer " + token, "otp": otp})
	}
	// The same code may be sent many times within its step (unlike a login code).
	for range 3 {
		if a := call(first); a.status != http.StatusOK {
			t.Fatalf("repeat call: got HTTP %d %v, want 200", a.status, a.Errors)
		}
	}
	// One step later the old code is still within skew; two steps later it is not, while the
	// session is still good with a fresh code.
	f.clock.Advance(stepSeconds * time.Second)
	if a := call(first); a.status != http.StatusOK {
		t.Errorf("one step later: got HTTP %d %v, want 200", a.status, a.Errors)
	}
	f.clock.Advance(stepSeconds * time.Second)
	wantRejected(t, call(first), http.StatusUnauthorized, apiError{fieldOtp, MsgOtpIncorrect})
	if a := call(f.code(aliceSecret, 0)); a.status != http.StatusOK {
		t.Errorf("fresh code: got HTTP %d %v, want 200", a.status, a.Errors)
	}

	// The session expires at SessionTTL after the login, exactly.
	f.clock.Advance(5*time.Minute - 2*stepSeconds*time.Second - time.Nanosecond)
	if a := call(f.code(aliceSecret, 0)); a.status != http.StatusOK {
		t.Errorf("just before expiry: got HTTP %d %v, want 200", a.status, a.Errors)
	}
	f.clock.Advance(time.Nanosecond)
	wantRejected(t, call(f.code(aliceSecret, 0)), http.StatusUnauthorized, apiError{fieldAuthorization, MsgTokenExpired})
	// Expired and a wrong code: both are named.
	wantRejected(t, f.accounts(t, map[string]string{"Authorization": "Bearer " + token}), http.StatusUnauthorized,
		apiError{fieldAuthorization, MsgTokenExpired}, apiError{fieldOtp, MsgRequired})
}

func TestAccountsNoSkew(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{SkewSteps: -1})
	token := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	for _, off := range []int{-1, 1} {
		a := f.accounts(t, map[string]string{"Authorization": "Bearer " + token, "otp": f.code(aliceSecret, off)})
		wantRejected(t, a, http.StatusUnauthorized, apiError{fieldOtp, MsgOtpIncorrect})
	}
}

func TestMethodsAndPaths(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, LoginPath, http.StatusMethodNotAllowed},
		{http.MethodPut, LoginPath, http.StatusMethodNotAllowed},
		{http.MethodPost, AccountsPath, http.StatusMethodNotAllowed},
		{http.MethodPost, "/api/v1/auth/login", http.StatusNotFound},
		{http.MethodPost, LoginPath + "/", http.StatusNotFound},
		{http.MethodGet, "/", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(tt.method, f.url+tt.path, strings.NewReader(`{}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("got HTTP %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

func TestSetPassword(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	token := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	if !f.sim.SetPassword("alice", "rotated") {
		t.Fatalf("SetPassword(alice): got false, want true")
	}
	if f.sim.SetPassword("nobody", "x") {
		t.Errorf("SetPassword(nobody): got true, want false")
	}
	wantRejected(t, f.login(t, "alice", "alice-pw", f.code(aliceSecret, 1)), http.StatusBadRequest, apiError{"", MsgBadCredentials})
	f.mustLogin(t, "alice", "rotated", f.code(aliceSecret, 1))
	// Sessions already issued survive the change.
	if a := f.accounts(t, map[string]string{"Authorization": "Bearer " + token, "otp": f.code(aliceSecret, 0)}); a.status != http.StatusOK {
		t.Errorf("old session after SetPassword: got HTTP %d %v, want 200", a.status, a.Errors)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	post := func(ctx context.Context) (*http.Response, []byte, error) {
		body := `{"username":"alice","password":"alice-pw","otp":"` + f.code(aliceSecret, 0) + `"}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+LoginPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		return resp, raw, err
	}

	t.Run("status", func(t *testing.T) {
		f.sim.SetFault(Fault{Status: http.StatusServiceUnavailable, Body: `{"message":"down"}`})
		resp, raw, err := post(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusServiceUnavailable || string(raw) != `{"message":"down"}` {
			t.Errorf("got HTTP %d %q, want 503 {\"message\":\"down\"}", resp.StatusCode, raw)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		f.sim.SetFault(Fault{Garbage: true})
		resp, raw, err := post(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || json.Valid(raw) {
			t.Errorf("got HTTP %d %q, want 200 and a body that is not JSON", resp.StatusCode, raw)
		}
	})
	// hangs posts a login and gives up only once the simulator has counted
	// it: a fixed client timeout could fire before the request arrives.
	hangs := func(t *testing.T) {
		t.Helper()
		before := f.sim.LoginAttempts()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { _, _, err := post(ctx); done <- err }()
		deadline := time.Now().Add(10 * time.Second)
		for f.sim.LoginAttempts() == before {
			select {
			case err := <-done:
				t.Fatalf("the login answered (%v), want it to hang", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the login never reached the simulator")
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case err := <-done:
			t.Fatalf("the login answered (%v), want it to hang", err)
		case <-time.After(20 * time.Millisecond):
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("got error %v, want context.Canceled", err)
		}
	}
	t.Run("hang", func(t *testing.T) {
		f.sim.SetFault(Fault{Hang: true})
		hangs(t)
	})
	t.Run("hang wins over garbage and status", func(t *testing.T) {
		f.sim.SetFault(Fault{Hang: true, Garbage: true, Status: 500})
		hangs(t)
	})
	t.Run("cleared", func(t *testing.T) {
		f.sim.SetFault(Fault{})
		resp, raw, err := post(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(raw, []byte(`"status":"1"`)) {
			t.Errorf("got HTTP %d %s, want a successful login", resp.StatusCode, raw)
		}
	})
	// Faulted requests are attempts, but neither logins nor rejections, and do not lock.
	if got := f.sim.LoginAttempts(); got != 5 {
		t.Errorf("LoginAttempts: got %d, want 5", got)
	}
	if got := f.sim.Logins(); got != 1 {
		t.Errorf("Logins: got %d, want 1", got)
	}
	if got := f.sim.FailedLogins(); got != 0 {
		t.Errorf("FailedLogins: got %d, want 0", got)
	}
}

// TestFaultRejectStatus: with RejectStatus, refusals keep their envelope and still count
// towards the lockout, under another HTTP status; a good login is untouched.
func TestFaultRejectStatus(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Options{MaxFailures: 3})
			f.sim.SetFault(Fault{RejectStatus: status})
			code := f.code(aliceSecret, 0)
			wantRejected(t, f.login(t, "alice", "alice-pw", wrongCode(code)), status, apiError{"", MsgOtpIncorrect})
			wantRejected(t, f.postLogin(t, "text/plain", `{}`), status, apiError{"", MsgUnsupportedMediaType})
			f.mustLogin(t, "alice", "alice-pw", code)
			for range 2 {
				wantRejected(t, f.login(t, "alice", "alice-pw", wrongCode(code)), status, apiError{"", MsgOtpIncorrect})
			}
			wantRejected(t, f.login(t, "alice", "alice-pw", wrongCode(code)), status, apiError{"", MsgLocked})
			if !f.sim.Locked("alice") {
				t.Errorf("Locked after 3 refusals under HTTP %d: got false, want true", status)
			}
			if got := f.sim.FailedLogins(); got != 5 {
				t.Errorf("FailedLogins: got %d, want 5", got)
			}
		})
	}
}

func TestFaultLeavesAccountsAlone(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	token := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	f.sim.SetFault(Fault{Status: http.StatusInternalServerError})
	if a := f.accounts(t, map[string]string{"Authorization": "Bearer " + token, "otp": f.code(aliceSecret, 0)}); a.status != http.StatusOK {
		t.Errorf("accounts during a login fault: got HTTP %d %v, want 200", a.status, a.Errors)
	}
}

// TestConcurrentLogins hammers one step's code from many goroutines: exactly one login may
// use it, however the requests interleave.
func TestConcurrentLogins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MaxFailures: -1})
	code := f.code(aliceSecret, 0)
	const n = 50
	var wg sync.WaitGroup
	tokens := make(chan string, n)
	codes := make(chan string, n)
	for range n {
		wg.Go(func() {
			body := `{"username":"alice","password":"alice-pw","otp":"` + code + `"}`
			resp, err := http.Post(f.url+LoginPath, "application/json", strings.NewReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var a answer
			if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
				t.Error(err)
				return
			}
			if a.Status == "1" {
				var d loginDetails
				json.Unmarshal(a.Details, &d)
				tokens <- d.AccessToken
				return
			}
			codes <- strings.Join(a.codes(), ",")
		})
		// Protected calls and counter reads race with the logins.
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, f.url+AccountsPath, nil)
			req.Header.Set("Authorization", "Bearer nope")
			req.Header.Set("otp", code)
			if resp, err := http.DefaultClient.Do(req); err != nil {
				t.Error(err)
			} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("accounts with an unknown token: got HTTP %d, want 401", resp.StatusCode)
			}
			f.sim.Locked("alice")
			f.sim.LoginAttempts()
		})
	}
	wg.Wait()
	close(tokens)
	close(codes)
	if got := len(tokens); got != 1 {
		t.Errorf("successful logins with one code: got %d, want 1", got)
	}
	for c := range codes {
		if c != MsgOtpAlreadyUsed {
			t.Errorf("losing login: got %q, want %s", c, MsgOtpAlreadyUsed)
		}
	}
	if got := f.sim.Logins(); got != 1 {
		t.Errorf("Logins: got %d, want 1", got)
	}
	if got := f.sim.FailedLogins(); got != n-1 {
		t.Errorf("FailedLogins: got %d, want %d", got, n-1)
	}
	if got := f.sim.LoginAttempts(); got != n {
		t.Errorf("LoginAttempts: got %d, want %d", got, n)
	}
}

func TestEnvelopeIDsIncrease(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	a := f.login(t, "alice", "wrong", "000000")
	b := f.accounts(t, nil)
	if b.ID <= a.ID {
		t.Errorf("ids: got %d then %d, want increasing", a.ID, b.ID)
	}
}

func TestNewPanics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		users []User
	}{
		{"bad secret", []User{{Username: "a", TOTPSecret: "not base32!"}}},
		{"empty secret", []User{{Username: "a"}}},
		{"empty username", []User{{TOTPSecret: aliceSecret}}},
		{"duplicate username", []User{{Username: "a", TOTPSecret: aliceSecret}, {Username: "a", TOTPSecret: bobSecret}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Errorf("New: got no panic, want one")
				}
			}()
			New(Options{Users: tt.users})
		})
	}
}

func TestSecretsNeverEchoed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	for _, a := range []answer{
		f.login(t, "alice", "wrong", f.code(aliceSecret, 0)),
		f.login(t, "alice", "alice-pw", "000000"),
		f.postLogin(t, "application/json", `{"username":"alice","password":"alice-pw","otp":123}`),
	} {
		for _, secret := range []string{"alice-pw", "wrong", aliceSecret} {
			if bytes.Contains(a.raw, []byte(secret)) {
				t.Errorf("answer %s contains %q, want no secret echoed", a.raw, secret)
			}
		}
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	alice := f.mustLogin(t, "alice", "alice-pw", f.code(aliceSecret, 0))
	headers := map[string]string{"Authorization": "Bearer " + alice, "otp": f.code(aliceSecret, 0)}
	if a := f.accounts(t, headers); a.status != http.StatusOK {
		t.Fatalf("before the revocation: got HTTP %d errors %v, want 200", a.status, a.Errors)
	}
	if !f.sim.Revoke(alice) {
		t.Errorf("Revoke of a live session: got false, want true")
	}
	wantRejected(t, f.accounts(t, headers), http.StatusUnauthorized, apiError{fieldAuthorization, MsgTokenInvalid})
	if f.sim.Revoke(alice) || f.sim.Revoke("nope") {
		t.Errorf("Revoke of a dead or unknown session: got true, want false")
	}
	if got := f.sim.AccountCalls(); got != 2 {
		t.Errorf("got AccountCalls %d, want 2 (the refused one included)", got)
	}
}
