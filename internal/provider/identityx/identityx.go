// Package identityx vends IdentityX (parameter1) credentials: long-lived
// JWTs presented as "Authorization: <Word> <jwt>" to a GraphQL API, where
// Word is OrgUserApiToken, OrgUser or AppUser. IdentityX splits the header
// on one space and requires that exact word, so "Bearer" must never be
// added, and AppUser calls also need x-app-id.
//
// These tokens do not expire and cannot be obtained unattended: OrgUser
// and AppUser tokens come from a magic link a person reads (the Enroller
// drives that one-time enrolment for the CLI), and an OrgUserApiToken is
// made with an OrgUser token. So the Client does not log in: it presents
// the configured token to a cheap query (activeUser, activeAppUser) and
// vends it when IdentityX accepts it. The token it returns never expires
// but asks the cache to check it again every check_interval, so a revoked
// token turns into a rejection (and the provider's health NOT_SERVING)
// instead of being vended for ever.
package identityx

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Credential is a kind of IdentityX credential, as named in the config.
type Credential string

// The credentials IdentityX accepts.
const (
	// OrgUserAPIToken is an organisation user's permanent API token, made
	// by createActiveUserApiToken: the unattended credential.
	OrgUserAPIToken Credential = "org_user_api_token"
	// OrgUser is an organisation user's token from a magic-link login
	// (userLogin), valid until it is logged out.
	OrgUser Credential = "org_user"
	// AppUser is an application user's token from a magic-link login
	// (loginAppUser), valid with its application's x-app-id until it is
	// logged out.
	AppUser Credential = "app_user"
)

// Word is the Authorization scheme word IdentityX requires for c.
func (c Credential) Word() string {
	switch c {
	case OrgUserAPIToken:
		return "OrgUserApiToken"
	case OrgUser:
		return "OrgUser"
	case AppUser:
		return "AppUser"
	}
	return ""
}

// ReasonConfigRejected is the error reason when IdentityX refuses what the
// configuration makes tokenvend send, rather than the token itself: an
// app_id it does not know, or an endpoint that is not its GraphQL URL.
const ReasonConfigRejected = "CONFIG_REJECTED"

// DefaultCheckInterval is how often a vended token is checked by default.
const DefaultCheckInterval = time.Hour

// MinCheckInterval bounds check_interval from below: each check is a query
// to IdentityX.
const MinCheckInterval = time.Minute

// Config holds the kind's keys.
type Config struct {
	// Endpoint is the GraphQL URL, e.g. https://identity-x.example.com/graphql.
	Endpoint   string     `yaml:"endpoint"`
	Credential Credential `yaml:"credential"`
	// Token is the long-lived JWT itself, without any Authorization word.
	Token secret.Secret `yaml:"token"`
	// AppID is sent as x-app-id; required for app_user.
	AppID string `yaml:"app_id"`
	// OrgID, when set, is sent as x-org-id.
	OrgID string `yaml:"org_id"`
	// CheckInterval is how often the token is checked again (1h).
	CheckInterval time.Duration `yaml:"check_interval"`
}

// Validate checks c and fills its defaults.
func (c *Config) Validate() error {
	var errs []error
	if err := config.CheckURL(c.Endpoint); err != nil {
		errs = append(errs, config.Errorf("endpoint", "%v", err))
	}
	switch {
	case c.Credential == "":
		errs = append(errs, config.Errorf("credential", "is required: one of %s, %s, %s", OrgUserAPIToken, OrgUser, AppUser))
	case c.Credential.Word() == "":
		errs = append(errs, config.Errorf("credential", "unknown credential %q: want one of %s, %s, %s", string(c.Credential), OrgUserAPIToken, OrgUser, AppUser))
	}
	if v, err := c.Token.Value(); err != nil {
		errs = append(errs, config.Errorf("token", "%v", err))
	} else if err := checkJWT(v); err != nil {
		errs = append(errs, config.Errorf("token", "%v", err))
	}
	if c.Credential == AppUser && c.AppID == "" {
		errs = append(errs, config.Errorf("app_id", "is required for credential %s: the id of the application the user belongs to", AppUser))
	}
	if err := checkHeaderValue(c.AppID); err != nil {
		errs = append(errs, config.Errorf("app_id", "%v", err))
	}
	if err := checkHeaderValue(c.OrgID); err != nil {
		errs = append(errs, config.Errorf("org_id", "%v", err))
	}
	switch {
	case c.CheckInterval == 0:
		c.CheckInterval = DefaultCheckInterval
	case c.CheckInterval < MinCheckInterval:
		errs = append(errs, config.Errorf("check_interval", "must be at least %s: every check is a query to IdentityX", MinCheckInterval))
	}
	return errors.Join(errs...)
}

// checkJWT catches the common mistake of storing the whole header value
// ("Bearer ...", "OrgUser ..."): IdentityX reads only the second word, so
// such a token would be refused as if it had been revoked.
func checkJWT(v string) error {
	if strings.ContainsAny(v, " \t\r\n") {
		return errors.New("must be the token alone, without an Authorization word such as OrgUser or Bearer, and without spaces")
	}
	return nil
}

func checkHeaderValue(v string) error {
	if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return errors.New("must be printable ASCII without spaces")
	}
	return nil
}

// Client is the identityx Source.
type Client struct {
	cfg   Config
	word  string
	query string
	hc    *http.Client
	now   func() time.Time
}

// New returns a Client for a validated config. hc carries the checks (and
// their tracing); now is the clock.
func New(cfg Config, hc *http.Client, now func() time.Time) *Client {
	c := &Client{cfg: cfg, word: cfg.Credential.Word(), hc: hc, now: now, query: "query { activeUser { id } }"}
	if cfg.Credential == AppUser {
		c.query = "query { activeAppUser { id } }"
	}
	return c
}

// Token checks the configured token with IdentityX and returns it with the
// headers a call needs. It reads the token secret every time, so a token
// re-enrolled into a secret file is picked up at the next check. IdentityX
// has no scope: the request's scope is always empty.
func (c *Client) Token(ctx context.Context, _ token.Request) (*token.Token, error) {
	jwt, err := c.cfg.Token.Value()
	if err != nil {
		return nil, token.SecretUnreadable("token", err)
	}
	if err := checkJWT(jwt); err != nil {
		return nil, token.Rejected(ReasonConfigRejected, "", "the configured token "+err.Error())
	}
	headers := map[string]string{"Authorization": c.word + " " + jwt}
	if c.cfg.AppID != "" {
		headers["x-app-id"] = c.cfg.AppID
	}
	if c.cfg.OrgID != "" {
		headers["x-org-id"] = c.cfg.OrgID
	}
	issued := c.now()
	type user struct {
		ID string `json:"id"`
	}
	var data struct {
		ActiveUser    *user `json:"activeUser"`
		ActiveAppUser *user `json:"activeAppUser"`
	}
	g, err := call(ctx, c.hc, c.cfg.Endpoint, headers, c.query, nil, &data)
	if err != nil {
		return nil, err
	}
	if g != nil {
		return nil, c.rejection(g)
	}
	who := data.ActiveUser
	if c.cfg.Credential == AppUser {
		who = data.ActiveAppUser
	}
	if who == nil || who.ID == "" {
		return nil, upstream.Garbage("an answer naming no active user")
	}
	return &token.Token{
		AccessToken: jwt,
		Type:        c.word,
		Headers:     headers,
		IssuedAt:    issued,
		CheckEvery:  c.cfg.CheckInterval,
	}, nil
}

// rejection classifies a GraphQL error answered to the check.
func (c *Client) rejection(g *gqlError) error {
	switch g.Code {
	case codeUnauthenticated:
		return token.Rejected(token.ReasonCredentialsRejected, g.Code, fmt.Sprintf(
			"IdentityX no longer accepts the configured %s token (UNAUTHENTICATED): it was revoked (logged out or deleted), or it is not an %s token; "+
				"an operator must enrol again (tokenvend identityx login or api-token) and store the new token", c.word, c.word))
	case codeForbidden:
		return token.Rejected(token.ReasonCredentialsRejected, g.Code,
			"IdentityX refused the configured AppUser token for this app_id (FORBIDDEN): the token belongs to another application; an operator must check app_id")
	case codeBadUserInput:
		return token.Rejected(ReasonConfigRejected, g.Code,
			"IdentityX refused the check as bad input (BAD_USER_INPUT): app_id names no IdentityX application, or the Authorization header did not reach it; an operator must check app_id and endpoint")
	default:
		return otherError(g)
	}
}
