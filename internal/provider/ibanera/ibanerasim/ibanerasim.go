// Package ibanerasim is a strict, in-process fake of the Ibanera customer API's login scheme
// (docs: ../shared/upstreams.md section 4): a JSON login with username, password and a TOTP
// code, and a protected endpoint that needs both the session (Authorization: Bearer) and a
// TOTP code valid now (header otp) on every call.
//
// It is as strict as the real service is documented to be, and stricter where that catches
// client bugs: the login needs Content-Type application/json and exactly the field names
// "username", "password" and "otp" (case-sensitive) as JSON strings; a TOTP code is valid only
// in its 30-second step plus a configurable skew; a code already used for a successful login is
// refused; failed logins count towards a lockout that refuses even the right password until it
// ends. Every answer uses the documented envelope
// {"id", "details", "status": "1"|"0", "errors": [{"fieldName", "messageCode"}]}.
//
// The TOTP check is implemented by hand (see Code), independently of the library the client
// uses. The simulator never logs and never echoes a secret.
package ibanerasim

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mount paths, relative to the server root, as upstreams.md gives them.
const (
	LoginPath    = "/api/v1/public/auth/login"
	AccountsPath = "/api/v1/customer/accounts"
)

// Message codes. The first five are documented by Ibanera; the rest are this simulator's
// choice for answers the documentation leaves open (a client must treat any unknown code as a
// rejection).
const (
	MsgRequired             = "Required"
	MsgBadCredentials       = "Username_Or_Password_Incorrect"
	MsgNotVerified          = "Account_Not_Verified"
	MsgSuppressed           = "Account_Suppressed"
	MsgLocked               = "Account_Locked"
	MsgOtpIncorrect         = "Otp_Incorrect"
	MsgOtpAlreadyUsed       = "Otp_Already_Used"
	MsgInvalidFormat        = "Invalid_Format"         // a field is not a JSON string
	MsgInvalidRequest       = "Invalid_Request"        // the body is not one JSON object
	MsgUnsupportedMediaType = "Unsupported_Media_Type" // Content-Type is not application/json
	MsgTokenInvalid         = "Token_Invalid"          // unknown session or not a Bearer credential
	MsgTokenExpired         = "Token_Expired"          // the session's lifetime has passed
)

const (
	fieldAuthorization       = "Authorization"
	fieldOtp                 = "otp"
	maxBodyBytes       int64 = 1 << 20
)

// Defaults for the zero Options.
const (
	DefaultSessionTTL  = time.Hour
	DefaultRefreshTTL  = 24 * time.Hour
	DefaultMaxFailures = 5
	DefaultLockFor     = 10 * time.Minute
	DefaultSkewSteps   = 1
)

// User is one customer account.
type User struct {
	Username string
	Password string
	// TOTPSecret is the account's Base32 shared secret (any case, padding optional).
	TOTPSecret string
	// Unverified makes every login with the right password answer Account_Not_Verified.
	Unverified bool
	// Suppressed makes every login with the right password answer Account_Suppressed.
	Suppressed bool
}

// Options configures a Server. The zero value of each field gives the documented default.
type Options struct {
	// Users are the accounts that can log in. Usernames match exactly (case-sensitive).
	Users []User
	// SessionTTL is the access token's lifetime, reported as expiresIn (default 1h).
	SessionTTL time.Duration
	// RefreshTTL is reported as refreshTokenExpiresIn (default 24h). Ibanera documents no
	// refresh endpoint, so the refresh token is never accepted anywhere.
	RefreshTTL time.Duration
	// MaxFailures is how many consecutive failed logins lock an account (default 5; negative
	// never locks).
	MaxFailures int
	// LockFor is how long a locked account stays locked (default 10 minutes).
	LockFor time.Duration
	// SkewSteps is how many 30-second steps either side of the current one a code may be from
	// (default 1; negative accepts the current step only).
	SkewSteps int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Fault makes the login endpoint misbehave, for tests of how a client copes with an unhealthy
// upstream. The zero Fault means "behave normally". When several fields are set, Hang wins over
// Garbage, Garbage over Status, and Status over RejectStatus.
type Fault struct {
	// Status, when non-zero, answers every login with this HTTP status and Body.
	Status int
	// Body is the answer's body with Status (sent as application/json).
	Body string
	// Garbage answers 200 with a body that is not JSON.
	Garbage bool
	// Hang blocks the answer until the request's context is done.
	Hang bool
	// RejectStatus, when non-zero, sends every refused login (status "0") with this HTTP status
	// instead of 400, as an upstream or gateway that wraps its refusals in a 5xx or 429 would.
	// The login is checked, and a failure counted towards the lockout, as usual.
	RejectStatus int
}

// Server is the simulated Ibanera API. It implements http.Handler and is safe for concurrent
// use.
type Server struct {
	opts Options
	now  func() time.Time
	skew int64
	mux  *http.ServeMux

	mu       sync.Mutex
	accounts map[string]*account
	sessions map[string]session
	fault    Fault

	nextID        atomic.Int64
	loginAttempts atomic.Int64
	failedLogins  atomic.Int64
	logins        atomic.Int64
	accountCalls  atomic.Int64
}

// account is a User plus its mutable login state, guarded by Server.mu.
type account struct {
	username    string
	password    string
	key         []byte
	unverified  bool
	suppressed  bool
	failures    int                // consecutive failed logins
	lockedUntil time.Time          // zero or past: not locked
	usedSteps   map[int64]struct{} // steps whose code already served a successful login
}

type session struct {
	username string
	expires  time.Time
}

// New returns a Server for o. It panics if a user has an empty or duplicate username or a
// TOTPSecret that is not Base32: those are mistakes in a test's fixture, not runtime
// conditions.
func New(o Options) *Server {
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	if o.RefreshTTL <= 0 {
		o.RefreshTTL = DefaultRefreshTTL
	}
	if o.MaxFailures == 0 {
		o.MaxFailures = DefaultMaxFailures
	}
	if o.LockFor <= 0 {
		o.LockFor = DefaultLockFor
	}
	if o.SkewSteps == 0 {
		o.SkewSteps = DefaultSkewSteps
	}
	o.Users = append([]User(nil), o.Users...)
	s := &Server{
		opts:     o,
		now:      o.Now,
		skew:     int64(max(o.SkewSteps, 0)),
		accounts: make(map[string]*account, len(o.Users)),
		sessions: make(map[string]session),
	}
	if s.now == nil {
		s.now = time.Now
	}
	for i, u := range o.Users {
		if u.Username == "" {
			panic(fmt.Sprintf("ibanerasim: Users[%d]: empty username", i))
		}
		if _, dup := s.accounts[u.Username]; dup {
			panic(fmt.Sprintf("ibanerasim: Users[%d]: duplicate username %q", i, u.Username))
		}
		key, err := decodeSecret(u.TOTPSecret)
		if err != nil {
			panic(fmt.Sprintf("ibanerasim: Users[%d] (%q): %v", i, u.Username, err))
		}
		s.accounts[u.Username] = &account{
			username:   u.Username,
			password:   u.Password,
			key:        key,
			unverified: u.Unverified,
			suppressed: u.Suppressed,
			usedSteps:  make(map[int64]struct{}),
		}
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST "+LoginPath, s.handleLogin)
	s.mux.HandleFunc("GET "+AccountsPath, s.handleAccounts)
	return s
}

// ServeHTTP serves the login endpoint at LoginPath and the protected endpoint at AccountsPath.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// LoginAttempts returns how many requests reached the login endpoint, whatever their outcome
// (faulted ones included).
func (s *Server) LoginAttempts() int64 { return s.loginAttempts.Load() }

// FailedLogins returns how many login requests were answered with a rejection envelope
// (status "0"), for any reason: validation, credentials, account state, otp or lock.
func (s *Server) FailedLogins() int64 { return s.failedLogins.Load() }

// Revoke ends the session of accessToken, as a logout or an administrator
// would: the protected endpoint then refuses it with 401, as a token it
// does not know. It reports whether the session existed.
func (s *Server) Revoke(accessToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.sessions[accessToken]
	delete(s.sessions, accessToken)
	return ok
}

// AccountCalls returns the number of requests to the protected endpoint,
// refused ones included.
func (s *Server) AccountCalls() int64 { return s.accountCalls.Load() }

// Logins returns how many logins succeeded.
func (s *Server) Logins() int64 { return s.logins.Load() }

// Locked reports whether username is locked out now. An unknown username is never locked.
func (s *Server) Locked(username string) bool {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[username]
	return ok && now.Before(a.lockedUntil)
}

// SetPassword changes username's password from now on; sessions already issued stay valid. It
// reports whether the user exists.
func (s *Server) SetPassword(username, password string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[username]
	if ok {
		a.password = password
	}
	return ok
}

// SetFault makes the login endpoint answer as f says until the next SetFault; SetFault(Fault{})
// restores normal behaviour.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// apiError is one entry of the envelope's errors list.
type apiError struct {
	FieldName   string `json:"fieldName"`
	MessageCode string `json:"messageCode"`
}

// envelope is the one shape of every Ibanera answer.
type envelope struct {
	ID      int64      `json:"id"`
	Details any        `json:"details"`
	Status  string     `json:"status"`
	Errors  []apiError `json:"errors"`
}

// loginDetails is the success answer's details.
type loginDetails struct {
	AccessToken           string `json:"accessToken"`
	ExpiresIn             int64  `json:"expiresIn"`
	RefreshToken          string `json:"refreshToken"`
	RefreshTokenExpiresIn int64  `json:"refreshTokenExpiresIn"`
}

// accountsDetails is the protected endpoint's answer: who is logged in, and a token account list.
type accountsDetails struct {
	Username string        `json:"username"`
	Accounts []accountInfo `json:"accounts"`
}

type accountInfo struct {
	ID       int64  `json:"id"`
	Name     string `json:"name"`
	Currency string `json:"currency"`
}

func (s *Server) write(w http.ResponseWriter, status int, details any, errs []apiError) {
	env := envelope{ID: s.nextID.Add(1), Details: details, Status: "1", Errors: []apiError{}}
	if len(errs) > 0 {
		env.Status, env.Details, env.Errors = "0", nil, errs
	}
	body, err := json.Marshal(env)
	if err != nil { // cannot happen: every type above marshals
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(body)
}

// reject answers a failed login: HTTP 400 (or f.RejectStatus) with status "0".
func (s *Server) reject(w http.ResponseWriter, f Fault, errs ...apiError) {
	s.failedLogins.Add(1)
	status := http.StatusBadRequest
	if f.RejectStatus != 0 {
		status = f.RejectStatus
	}
	s.write(w, status, nil, errs)
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	s.loginAttempts.Add(1)
	s.mu.Lock()
	f := s.fault
	s.mu.Unlock()
	switch {
	case f.Hang:
		// Read the body first: the server notices a client giving up (and cancels the
		// request's context) only once the body has been consumed.
		io.Copy(io.Discard, io.LimitReader(r.Body, maxBodyBytes))
		<-r.Context().Done()
		return
	case f.Garbage:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
		return
	case f.Status != 0:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		io.WriteString(w, f.Body)
		return
	}

	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		s.reject(w, f, apiError{"", MsgUnsupportedMediaType})
		return
	}
	fields, errs, ok := readLogin(r.Body)
	if !ok {
		s.reject(w, f, apiError{"", MsgInvalidRequest})
		return
	}
	if len(errs) > 0 {
		s.reject(w, f, errs...)
		return
	}
	details, code := s.authenticate(fields[0], fields[1], fields[2])
	if code != "" {
		s.reject(w, f, apiError{"", code})
		return
	}
	s.logins.Add(1)
	s.write(w, http.StatusOK, details, nil)
}

// loginFields are the login body's fields, in the order readLogin returns them.
var loginFields = [...]string{"username", "password", "otp"}

// readLogin reads the login body: one JSON object whose fields are matched by exact name. It
// returns the three values, the per-field validation errors, and ok=false when the body is not
// a single JSON object.
func readLogin(body io.Reader) (vals [3]string, errs []apiError, ok bool) {
	dec := json.NewDecoder(io.LimitReader(body, maxBodyBytes))
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return vals, nil, false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return vals, nil, false // trailing data after the object
	}
	for i, name := range loginFields {
		v, present := raw[name]
		if !present || string(v) == "null" {
			errs = append(errs, apiError{name, MsgRequired})
			continue
		}
		if err := json.Unmarshal(v, &vals[i]); err != nil {
			errs = append(errs, apiError{name, MsgInvalidFormat})
			continue
		}
		if strings.TrimSpace(vals[i]) == "" {
			errs = append(errs, apiError{name, MsgRequired})
		}
	}
	return vals, errs, true
}

// authenticate checks a login and, on success, opens a session. It returns the message code of
// the rejection, or "" and the details.
//
// The order is chosen so that nothing about an account leaks without its password: lookup,
// lock, password, verification, suppression, then the code. A wrong password and a wrong or
// reused code count towards the lockout; the lock answers even the right password, and the
// attempt that reaches MaxFailures already answers Account_Locked (as ASP.NET Identity does).
func (s *Server) authenticate(username, password, otp string) (*loginDetails, string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[username]
	if !ok {
		return nil, MsgBadCredentials
	}
	if now.Before(a.lockedUntil) {
		return nil, MsgLocked
	}
	if !constantTimeEqual(password, a.password) {
		return nil, s.failLocked(a, now, MsgBadCredentials)
	}
	if a.unverified {
		return nil, MsgNotVerified
	}
	if a.suppressed {
		return nil, MsgSuppressed
	}
	step, matched, reused := s.matchLoginCode(a, otp, now)
	if !matched {
		code := MsgOtpIncorrect
		if reused {
			code = MsgOtpAlreadyUsed
		}
		return nil, s.failLocked(a, now, code)
	}
	// Remember the step so the same code cannot log in twice, and forget steps that can no
	// longer be presented.
	a.usedSteps[step] = struct{}{}
	for old := range a.usedSteps {
		if old < stepAt(now)-s.skew {
			delete(a.usedSteps, old)
		}
	}
	a.failures = 0

	s.sweepSessions(now)
	access, refresh := newToken(), newToken()
	s.sessions[access] = session{username: a.username, expires: now.Add(s.opts.SessionTTL)}
	return &loginDetails{
		AccessToken:           access,
		ExpiresIn:             int64(s.opts.SessionTTL / time.Second),
		RefreshToken:          refresh,
		RefreshTokenExpiresIn: int64(s.opts.RefreshTTL / time.Second),
	}, ""
}

// failLocked counts a failed login against a (s.mu held) and returns the code to answer with:
// code itself, or Account_Locked when this failure starts the lock.
func (s *Server) failLocked(a *account, now time.Time, code string) string {
	a.failures++
	if s.opts.MaxFailures > 0 && a.failures >= s.opts.MaxFailures {
		a.failures = 0
		a.lockedUntil = now.Add(s.opts.LockFor)
		return MsgLocked
	}
	return code
}

// matchLoginCode finds the step within the skew window whose code is otp and that has not
// served a login yet. reused reports that otp matched only steps already used.
func (s *Server) matchLoginCode(a *account, otp string, now time.Time) (step int64, matched, reused bool) {
	if !validCodeFormat(otp) {
		return 0, false, false
	}
	cur := stepAt(now)
	for st := cur - s.skew; st <= cur+s.skew; st++ {
		if !constantTimeEqual(hotp(a.key, st), otp) {
			continue
		}
		if _, used := a.usedSteps[st]; used {
			reused = true
			continue
		}
		return st, true, false
	}
	return 0, false, reused
}

// codeValidNow reports whether otp is a's code for a step within the skew window. Calls other
// than login may repeat a code: a client sends the current code with every call.
func (s *Server) codeValidNow(key []byte, otp string, now time.Time) bool {
	if !validCodeFormat(otp) {
		return false
	}
	cur := stepAt(now)
	for st := cur - s.skew; st <= cur+s.skew; st++ {
		if constantTimeEqual(hotp(key, st), otp) {
			return true
		}
	}
	return false
}

// sweepSessions drops expired sessions (s.mu held) once there are enough of them to matter, so
// a long test run does not grow the map without bound.
func (s *Server) sweepSessions(now time.Time) {
	if len(s.sessions) < 1024 {
		return
	}
	for tok, ss := range s.sessions {
		if !now.Before(ss.expires) {
			delete(s.sessions, tok)
		}
	}
}

func newToken() string {
	return rand.Text() + rand.Text() // 2 × 128 random bits, Base32
}

// handleAccounts is the protected endpoint. It needs a live session in Authorization (Bearer)
// and a code valid now for the session's user in the otp header; otherwise it answers 401 with
// every problem it found.
func (s *Server) handleAccounts(w http.ResponseWriter, r *http.Request) {
	s.accountCalls.Add(1)
	now := s.now()
	var errs []apiError
	var key []byte
	username := ""

	authz := r.Header.Get("Authorization")
	scheme, token, _ := strings.Cut(authz, " ")
	switch {
	case authz == "":
		errs = append(errs, apiError{fieldAuthorization, MsgRequired})
	case !strings.EqualFold(scheme, "Bearer") || token == "":
		errs = append(errs, apiError{fieldAuthorization, MsgTokenInvalid})
	default:
		s.mu.Lock()
		ss, ok := s.sessions[token]
		if ok && now.Before(ss.expires) {
			username, key = ss.username, s.accounts[ss.username].key
		}
		s.mu.Unlock()
		switch {
		case !ok:
			errs = append(errs, apiError{fieldAuthorization, MsgTokenInvalid})
		case username == "":
			errs = append(errs, apiError{fieldAuthorization, MsgTokenExpired})
		}
	}

	// Without a session there is no user to check a code against: only its presence is checked.
	otp := r.Header.Get(fieldOtp)
	switch {
	case otp == "":
		errs = append(errs, apiError{fieldOtp, MsgRequired})
	case username != "" && !s.codeValidNow(key, otp, now):
		errs = append(errs, apiError{fieldOtp, MsgOtpIncorrect})
	}

	if len(errs) > 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ibanera"`)
		s.write(w, http.StatusUnauthorized, nil, errs)
		return
	}
	s.write(w, http.StatusOK, accountsDetails{
		Username: username,
		Accounts: []accountInfo{{ID: 1, Name: "Main EUR", Currency: "EUR"}},
	}, nil)
}
