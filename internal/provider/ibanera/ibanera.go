// Package ibanera logs in to the Ibanera customer API: a JSON login with
// a username, a password and a TOTP code (RFC 6238: HMAC-SHA1, 6 digits,
// 30-second steps), answering a session token. Every authorised call then
// needs both the session (Authorization: Bearer) and a TOTP code valid
// now (header otp).
//
// The scheme is split in two because its parts live for different times.
// The session is an ordinary token: the Cache keeps it and refreshes it
// with a new login (Ibanera documents no refresh endpoint). The otp header
// lives for one step, so it cannot be cached: the Client is also the
// broker's PerCall, and Finish adds a code to every answer after the
// cache.
//
// Three rules keep the account safe. A handed-out code has at least the
// skew allowance left in its step, or tokenvend waits for the next step:
// Ibanera may accept a code one step old or ahead, but does not promise
// to, so no code is handed out early. Two logins never send the code of
// the same step, since the upstream may refuse a code already used. And
// every refusal of a login is a rejection, never retried: failed logins
// lock the account, and Account_Locked holds the provider's logins for as
// long as the lock lasts.
package ibanera

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Config holds the kind's keys.
type Config struct {
	// BaseURL is the API root; the login is POST {base_url}/api/v1/public/auth/login.
	BaseURL  string        `yaml:"base_url"`
	Username string        `yaml:"username"`
	Password secret.Secret `yaml:"password"`
	// TOTPSecret is the account's Base32 TOTP shared secret, as an
	// authenticator app takes it (any case, padding and spaces optional).
	TOTPSecret secret.Secret `yaml:"totp_secret"`
	// TOTPSkewAllowance is the least time a handed-out code has left in
	// its step (3s): room for the caller's request to reach the upstream
	// and for the two clocks to disagree. With less left, tokenvend waits
	// for the next step.
	TOTPSkewAllowance time.Duration `yaml:"totp_skew_allowance"`
	// LockoutHold is how long every login of the provider is held after
	// the upstream answers Account_Locked (10m, Ibanera's lock time).
	LockoutHold time.Duration `yaml:"lockout_hold"`
	// MaxFailedLogins is how many logins in a row the same credentials may
	// fail before tokenvend stops sending them until they change. With
	// the memory store the count is per process (default 2): times the
	// replicas it must stay below the upstream's lockout threshold (5
	// failures). With a shared store (Share) it is the fleet's, charged
	// before each login is sent (default 3). The cache's backoff spaces
	// attempts out, but does not stop them, and a failure count that never
	// decays would lock the account in the end.
	MaxFailedLogins int `yaml:"max_failed_logins"`
}

// Defaults and bounds of the optional keys.
const (
	DefaultSkewAllowance = 3 * time.Second
	// MaxSkewAllowance is half a step: a larger allowance would make most
	// callers wait.
	MaxSkewAllowance   = Step / 2
	DefaultLockoutHold = 10 * time.Minute
	// DefaultMaxFailedLogins keeps two replicas, each with its own count,
	// below Ibanera's lock at 5 failures.
	DefaultMaxFailedLogins = 2
	// DefaultSharedMaxFailedLogins is the fleet's count with a shared
	// store: one below the most allowed (4), so that a failover of Redis
	// that loses one charge still stays below the lock.
	DefaultSharedMaxFailedLogins = 3
)

// Step is the TOTP time step.
const Step = 30 * time.Second

// LoginPath is where the login is, under base_url.
const LoginPath = "/api/v1/public/auth/login"

// Header is the per-call header that carries the TOTP code.
const Header = "otp"

// Reasons of this kind's own, beyond token's.
const (
	// ReasonAccountSuppressed: Ibanera suppressed the account.
	ReasonAccountSuppressed = "ACCOUNT_SUPPRESSED"
)

// Validate checks c and fills its defaults.
func (c *Config) Validate() error {
	var errs []error
	if err := config.CheckURL(c.BaseURL); err != nil {
		errs = append(errs, config.Errorf("base_url", "%v", err))
	}
	if c.Username == "" {
		errs = append(errs, config.Errorf("username", "is required"))
	}
	if _, err := c.Password.Value(); err != nil {
		errs = append(errs, config.Errorf("password", "%v", err))
	}
	if v, err := c.TOTPSecret.Value(); err != nil {
		errs = append(errs, config.Errorf("totp_secret", "%v", err))
	} else if _, err := normaliseSecret(v); err != nil {
		errs = append(errs, config.Errorf("totp_secret", "%v", err))
	}
	switch {
	case c.TOTPSkewAllowance < 0:
		errs = append(errs, config.Errorf("totp_skew_allowance", "must not be negative"))
	case c.TOTPSkewAllowance >= MaxSkewAllowance:
		errs = append(errs, config.Errorf("totp_skew_allowance", "must be less than %s (half a TOTP step)", MaxSkewAllowance))
	case c.TOTPSkewAllowance == 0:
		c.TOTPSkewAllowance = DefaultSkewAllowance
	}
	switch {
	case c.LockoutHold < 0:
		errs = append(errs, config.Errorf("lockout_hold", "must be positive"))
	case c.LockoutHold == 0:
		c.LockoutHold = DefaultLockoutHold
	}
	switch {
	case c.MaxFailedLogins < 0 || c.MaxFailedLogins > 4:
		errs = append(errs, config.Errorf("max_failed_logins", "must be from 1 to 4: Ibanera locks the account at 5 failures"))
	}
	return errors.Join(errs...)
}

// normaliseSecret returns a Base32 secret in the form the TOTP library
// decodes (upper case, padded, no spaces), or an error that never holds
// the secret.
func normaliseSecret(s string) (string, error) {
	s = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return unicode.ToUpper(r)
	}, s)
	s = strings.TrimRight(s, "=")
	if s == "" {
		return "", errors.New("is empty")
	}
	// Pad rather than decode unpadded: the unpadded decoder accepts
	// impossible lengths and drops their bits.
	if n := len(s) % 8; n != 0 {
		s += strings.Repeat("=", 8-n)
	}
	if _, err := base32.StdEncoding.DecodeString(s); err != nil {
		return "", errors.New("is not a Base32 TOTP secret")
	}
	return s, nil
}

// Client is the ibanera Source, and the PerCall that adds the otp header.
type Client struct {
	cfg      Config
	loginURL string
	hc       *http.Client
	now      func() time.Time
	sleep    func(ctx context.Context, d time.Duration) error

	// login is held by the one login in progress (a channel, so waiting
	// for it honours the context); it guards lastStep.
	login chan struct{}
	// lastStep is the TOTP step of the last code sent to the login, -1
	// before the first.
	lastStep int64
	// fails counts the logins in a row that the upstream refused with
	// the same credentials, and steps hands out TOTP steps: the process's
	// own (a MemoryStore) unless Share gave the fleet's. lost counts for
	// this process alone while the shared ones cannot be reached.
	fails     token.Failures
	steps     token.Steps
	lost      *token.MemoryStore
	maxFailed int
	// lastRefusal is the last refusal of the credentials, for the message
	// of logins no longer sent; login guards it.
	lastRefusal *token.Error
}

// New returns a Client for a validated config. hc carries the login
// requests; now is the clock; sleep waits (until the next TOTP step) or
// until its context ends.
func New(cfg Config, hc *http.Client, now func() time.Time, sleep func(ctx context.Context, d time.Duration) error) *Client {
	c := &Client{
		cfg:      cfg,
		loginURL: strings.TrimRight(cfg.BaseURL, "/") + LoginPath,
		hc:       hc,
		now:      now,
		sleep:    sleep,
		login:    make(chan struct{}, 1),
		lastStep: -1,
	}
	mem := token.NewMemoryStore(now)
	c.fails, c.steps, c.lost = mem, mem, token.NewMemoryStore(now)
	c.maxFailed = cmp.Or(cfg.MaxFailedLogins, DefaultMaxFailedLogins)
	return c
}

// Share makes the failed-login count and the TOTP steps the fleet's (a
// shared store's): max_failed_logins then counts every replica's
// failures (default 3), and no two replicas' logins use the same step.
// While the store cannot be reached, this process allows itself at most
// one failed login of its own.
func (c *Client) Share(f token.Failures, s token.Steps) {
	c.fails, c.steps = f, s
	c.maxFailed = cmp.Or(c.cfg.MaxFailedLogins, DefaultSharedMaxFailedLogins)
}

// Token logs in with a code of a step no earlier login used, waiting for
// the next step when needed. The scope is always empty: ibanera has none.
func (c *Client) Token(ctx context.Context, _ token.Request) (*token.Token, error) {
	password, err := c.cfg.Password.Value()
	if err != nil {
		return nil, token.SecretUnreadable("password", err)
	}
	key, err := c.totpKey()
	if err != nil {
		return nil, err
	}

	select {
	case c.login <- struct{}{}:
	case <-ctx.Done():
		return nil, token.Unavailable("the login timed out waiting for another login to finish", ctx.Err())
	}
	defer func() { <-c.login }()

	sum := sha256.Sum256([]byte(c.cfg.Username + "\x00" + password + "\x00" + key))
	creds := hex.EncodeToString(sum[:])
	fails, n, ok := c.charge(ctx, creds)
	if !ok {
		return nil, c.refused(n)
	}
	sent := false
	defer func() {
		if !sent {
			c.refund(ctx, fails, creds)
		}
	}()

	code, step, err := c.reserved(ctx, key)
	switch {
	case errors.Is(err, errTooLate):
		return nil, token.Unavailable("the next TOTP step begins after the login timeout: the login will be tried again", err)
	case token.KindOf(err) != token.KindInternal:
		return nil, err
	case err != nil:
		return nil, token.Unavailable("the login was stopped while waiting for a fresh TOTP step", err)
	}
	// Remembered whatever the outcome: a login that fails in transit
	// may still have used the code.
	c.lastStep = step

	body, err := json.Marshal(struct {
		Username string `json:"username"`
		Password string `json:"password"`
		OTP      string `json:"otp"`
	}{c.cfg.Username, password, code})
	if err != nil {
		return nil, err
	}
	issued := c.now()
	status, answer, err := upstream.Post(ctx, c.hc, c.loginURL, "application/json", body, nil)
	if err != nil {
		return nil, err
	}
	tok, err := c.parse(status, answer, issued)
	sent = true
	c.settle(ctx, fails, creds, err)
	return tok, err
}

// charge counts the login as failed before it is sent (see
// token.Failures), on the shared count, or on this process's alone
// (at most one) while the shared one cannot be reached. It returns the
// count charged, n, and ok: false when the login must not be sent.
func (c *Client) charge(ctx context.Context, creds string) (token.Failures, int, bool) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	n, ok, err := c.fails.ChargeFailure(sctx, creds, c.maxFailed)
	cancel()
	if err == nil {
		return c.fails, n, ok
	}
	n, ok, _ = c.lost.ChargeFailure(ctx, creds, 1)
	return c.lost, n, ok
}

// storeTimeout bounds a call to a shared store: a dead Redis must not eat
// the login's time.
const storeTimeout = 500 * time.Millisecond

// settle keeps the charge of a login the upstream refused the
// credentials of, and takes it back otherwise; a success clears the
// count. Only a refusal of the credentials themselves counts: a lock
// placed by someone else, or an account state, is not fixed by changing
// them.
func (c *Client) settle(ctx context.Context, fails token.Failures, creds string, err error) {
	var e *token.Error
	switch {
	case err == nil:
		c.lastRefusal = nil
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		defer cancel()
		_ = c.fails.ClearFailures(sctx, creds)
		_ = c.lost.ClearFailures(sctx, creds)
	case errors.As(err, &e) && e.Reason == token.ReasonCredentialsRejected:
		c.lastRefusal = e
	default:
		c.refund(ctx, fails, creds)
	}
}

func (c *Client) refund(ctx context.Context, fails token.Failures, creds string) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	_ = fails.RefundFailure(sctx, creds)
}

// refused is the answer to a login not sent: n logins with these
// credentials were refused in a row.
func (c *Client) refused(n int) *token.Error {
	e := token.Rejected(token.ReasonCredentialsRejected, "", "")
	if c.lastRefusal != nil {
		r := *c.lastRefusal
		e = &r
	}
	e.Message = fmt.Sprintf("the upstream refused these credentials %d times in a row", n)
	if e.Upstream != "" {
		e.Message += " (" + e.Upstream + ")"
	}
	e.Message += ", and Ibanera locks the account after 5 failures: tokenvend will not send them again until the configured password or totp_secret changes"
	return e
}

// reserved returns the code of the first step no earlier login used, in
// this process (lastStep) and in the fleet (a reserved step), waiting
// for a later step when another replica has this one. A store that
// cannot be reached reserves nothing: this process's lastStep still
// applies.
func (c *Client) reserved(ctx context.Context, key string) (string, int64, error) {
	after := c.lastStep
	for {
		code, step, _, err := c.code(ctx, key, after)
		if err != nil {
			return "", 0, err
		}
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		ok, err := c.steps.ReserveStep(sctx, step, 2*Step)
		cancel()
		if ok || err != nil {
			return code, step, nil
		}
		after = step
	}
}

// Finish adds the otp header for now to a (cached) session, and brings its
// expiry forward to the end of the code's step. A code with less than the
// skew allowance left is not handed out: Finish waits for the next step,
// unless the caller's deadline comes first (context.DeadlineExceeded, at
// once, without waiting).
func (c *Client) Finish(ctx context.Context, t *token.Token) (*token.Token, error) {
	key, err := c.totpKey()
	if err != nil {
		return nil, err
	}
	code, _, end, err := c.code(ctx, key, -1)
	switch {
	case errors.Is(err, errTooLate):
		return nil, fmt.Errorf("ibanera: the current TOTP code is about to expire and the next one starts after the caller's deadline: %w", context.DeadlineExceeded)
	case err != nil:
		return nil, err
	}
	out := t.WithHeaders(map[string]string{Header: code})
	if out.Expiry.IsZero() || end.Before(out.Expiry) {
		out.Expiry = end
	}
	return out, nil
}

// totpKey resolves the TOTP secret at every use, so a rotated secret file
// takes effect at once.
func (c *Client) totpKey() (string, error) {
	v, err := c.cfg.TOTPSecret.Value()
	if err != nil {
		return "", token.SecretUnreadable("totp_secret", err)
	}
	key, err := normaliseSecret(v)
	if err != nil {
		return "", token.Rejected(token.ReasonSecretUnreadable, "", "the configured totp_secret "+err.Error()+": an operator must fix it")
	}
	return key, nil
}

// errTooLate: the step to wait for begins after the context's deadline.
var errTooLate = errors.New("the next TOTP step begins after the deadline")

// code returns the TOTP code of the first step after step `after` that
// has at least the skew allowance left, with the step and its end,
// waiting for that step if it has not begun. It does not wait past ctx's
// deadline: when the wait would outlast it, it returns errTooLate at once.
func (c *Client) code(ctx context.Context, key string, after int64) (string, int64, time.Time, error) {
	for {
		now := c.now()
		step := stepOf(now)
		end := stepStart(step + 1)
		if step > after && end.Sub(now) >= c.cfg.TOTPSkewAllowance {
			code, err := totp.GenerateCodeCustom(key, now, totp.ValidateOpts{
				Period: uint(Step / time.Second), Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1,
			})
			if err != nil { // cannot happen: the key was checked
				return "", 0, time.Time{}, token.Rejected(token.ReasonSecretUnreadable, "", "the configured totp_secret cannot be used: an operator must fix it")
			}
			return code, step, end, nil
		}
		wait := stepStart(max(step, after) + 1).Sub(now)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return "", 0, time.Time{}, errTooLate
		}
		if err := c.sleep(ctx, wait); err != nil {
			return "", 0, time.Time{}, err
		}
	}
}

// stepOf returns the RFC 6238 step counter floor(unix / 30) (for times
// after 1970, which are all tokenvend meets).
func stepOf(t time.Time) int64 {
	return t.Unix() / int64(Step/time.Second)
}

func stepStart(step int64) time.Time {
	return time.Unix(step*int64(Step/time.Second), 0).UTC()
}

// envelope is the one shape of every Ibanera answer.
type envelope struct {
	Details json.RawMessage `json:"details"`
	// Status is "1" (success) or "0"; the HTTP status alone is not
	// trusted to say which.
	Status json.RawMessage `json:"status"`
	Errors []struct {
		FieldName   string `json:"fieldName"`
		MessageCode string `json:"messageCode"`
	} `json:"errors"`
}

// status reads the envelope's status, a string ("1") as documented or a
// bare number; "" when it is neither.
func (e *envelope) status() string {
	var s string
	if err := json.Unmarshal(e.Status, &s); err == nil {
		return s
	}
	var n json.Number
	if err := json.Unmarshal(e.Status, &n); err == nil {
		return n.String()
	}
	return ""
}

func (c *Client) parse(status int, body []byte, issued time.Time) (*token.Token, error) {
	var env envelope
	err := json.Unmarshal(body, &env)
	st := env.status()
	switch {
	case err == nil && st == "0":
		// A refusal is a refusal whatever HTTP status is wrapped around
		// it, a 5xx or 429 included, and whatever its code: retried as
		// transient, a wrong otp (whose code is undocumented) would be
		// sent again and again until Ibanera locks the account.
		return nil, c.rejection(&env)
	case status >= 500 || status == http.StatusTooManyRequests:
		// No refusal envelope: the upstream, or something before it,
		// failed, and says nothing of the credentials.
		return nil, upstream.Unexpected(status)
	case (err != nil || st != "1") && status/100 == 2:
		return nil, upstream.Garbage("an answer that is not an Ibanera envelope")
	case err != nil || st != "1":
		// Not Ibanera speaking (a proxy's page, a wrong base_url): the
		// login never reached the account.
		return nil, upstream.Unexpected(status)
	case status/100 != 2:
		return nil, upstream.Garbage(fmt.Sprintf("a success envelope with HTTP %d", status))
	}

	var d struct {
		AccessToken string `json:"accessToken"`
		ExpiresIn   int64  `json:"expiresIn"`
	}
	if err := json.Unmarshal(env.Details, &d); err != nil || d.AccessToken == "" {
		return nil, upstream.Garbage("a login answer without an accessToken")
	}
	if !headerSafe(d.AccessToken) {
		return nil, upstream.Garbage("an accessToken that cannot go into a header")
	}
	if d.ExpiresIn <= 0 || d.ExpiresIn > maxExpiresIn {
		return nil, upstream.Garbage("a login answer without a plausible expiresIn")
	}
	// The refresh token is dropped: no endpoint takes it.
	return &token.Token{
		AccessToken: d.AccessToken,
		Type:        "Bearer",
		Headers:     map[string]string{"Authorization": "Bearer " + d.AccessToken},
		IssuedAt:    issued,
		Expiry:      issued.Add(time.Duration(d.ExpiresIn) * time.Second),
	}, nil
}

// headerSafe reports whether s is visible ASCII without spaces.
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// maxExpiresIn bounds a session's lifetime (a year, in seconds): a larger
// value is garbage, and would overflow a time.Duration.
const maxExpiresIn = 366 * 24 * 3600

// Ibanera's documented message codes.
const (
	msgRequired       = "Required"
	msgBadCredentials = "Username_Or_Password_Incorrect"
	msgNotVerified    = "Account_Not_Verified"
	msgLocked         = "Account_Locked"
	msgSuppressed     = "Account_Suppressed"
)

// rejection classifies a status "0" login answer. Every one is a
// rejection, never retried: a failed login counts towards the lockout, and
// an unknown code (a wrong otp's is undocumented) may be one too. When the
// answer lists several codes the most serious wins.
func (c *Client) rejection(env *envelope) error {
	codes := map[string]bool{}
	first := ""
	for _, e := range env.Errors {
		codes[e.MessageCode] = true
		if first == "" {
			first = e.MessageCode
		}
	}
	switch {
	case codes[msgLocked]:
		e := token.Rejected(token.ReasonAccountLocked, msgLocked, fmt.Sprintf(
			"the upstream account is locked after too many failed logins (Account_Locked): tokenvend holds this provider's logins for %s; an operator must check the configured password and totp_secret before the lock ends",
			c.cfg.LockoutHold))
		e.Hold = c.cfg.LockoutHold
		return e
	case codes[msgSuppressed]:
		return token.Rejected(ReasonAccountSuppressed, msgSuppressed,
			"the upstream account is suppressed (Account_Suppressed): an operator must have Ibanera reinstate it")
	case codes[msgNotVerified]:
		return token.Rejected(token.ReasonAccountNotVerified, msgNotVerified,
			"the upstream account is not verified (Account_Not_Verified): an operator must complete its verification")
	case codes[msgBadCredentials]:
		return token.Rejected(token.ReasonCredentialsRejected, msgBadCredentials,
			"the upstream rejected the configured username or password (Username_Or_Password_Incorrect): an operator must fix them; tokenvend does not retry them, as failed logins lock the account")
	case codes[msgRequired]:
		return token.Rejected(token.ReasonCredentialsRejected, msgRequired,
			"the upstream says a login field is missing or blank (Required): an operator must check the configured username, password and totp_secret")
	case first == "":
		return token.Rejected(token.ReasonCredentialsRejected, "",
			"the upstream refused the login without saying why: an operator must check the configured username, password and totp_secret")
	default:
		return token.Rejected(token.ReasonCredentialsRejected, upstream.Code(first),
			"the upstream refused the login with a code tokenvend does not know (see upstream_code): an operator must check the configured username, password and totp_secret, and this host's clock, which TOTP codes depend on")
	}
}
