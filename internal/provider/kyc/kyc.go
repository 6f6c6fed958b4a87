// Package kyc logs in to a KYC API built on fastapi-users (JWT strategy,
// bearer transport): a form-encoded password login that answers a JWT
// whose only lifetime is its exp claim. There is no refresh: a new token
// is a new login.
package kyc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Config holds the kind's keys.
type Config struct {
	// BaseURL is the API root; the login is POST {base_url}/auth/jwt/login.
	BaseURL  string        `yaml:"base_url"`
	Username string        `yaml:"username"`
	Password secret.Secret `yaml:"password"`
	// TokenTTL is the lifetime assumed when a token carries no exp (1h).
	TokenTTL time.Duration `yaml:"token_ttl"`
}

// DefaultTokenTTL is used when neither the token nor the config says.
const DefaultTokenTTL = time.Hour

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
	if c.TokenTTL < 0 {
		errs = append(errs, config.Errorf("token_ttl", "must be positive"))
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = DefaultTokenTTL
	}
	return errors.Join(errs...)
}

// Client is the kyc Source.
type Client struct {
	cfg      Config
	loginURL string
	hc       *http.Client
	now      func() time.Time
}

// New returns a Client for a validated config. hc carries the login
// requests (and their tracing); now is the clock.
func New(cfg Config, hc *http.Client, now func() time.Time) *Client {
	return &Client{
		cfg:      cfg,
		loginURL: strings.TrimRight(cfg.BaseURL, "/") + "/auth/jwt/login",
		hc:       hc,
		now:      now,
	}
}

// Token logs in. The scope is always empty: kyc has none.
func (c *Client) Token(ctx context.Context, _ token.Request) (*token.Token, error) {
	password, err := c.cfg.Password.Value()
	if err != nil {
		return nil, token.SecretUnreadable("password", err)
	}
	form := url.Values{"username": {c.cfg.Username}, "password": {password}, "grant_type": {"password"}}
	issued := c.now()
	status, body, err := upstream.Post(ctx, c.hc, c.loginURL, "application/x-www-form-urlencoded", []byte(form.Encode()), nil)
	if err != nil {
		return nil, err
	}
	switch {
	case status == http.StatusOK:
		return c.parse(body, issued)
	case status == http.StatusBadRequest:
		return nil, rejection(body)
	case status == http.StatusUnprocessableEntity:
		// The upstream refuses the shape of our request: repeating it
		// cannot help, so it is held like a rejection.
		return nil, token.Rejected("LOGIN_REQUEST_REFUSED", "422",
			"the upstream refused the login request as malformed (HTTP 422): check base_url points at a fastapi-users JWT login")
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return nil, token.Rejected(token.ReasonCredentialsRejected, fmt.Sprint(status),
			fmt.Sprintf("the upstream refused the login (HTTP %d): an operator must check the configured username and password", status))
	default:
		return nil, upstream.Unexpected(status)
	}
}

func (c *Client) parse(body []byte, issued time.Time) (*token.Token, error) {
	var ok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(body, &ok); err != nil || ok.AccessToken == "" {
		return nil, upstream.Garbage("a login answer without an access_token")
	}
	if !strings.EqualFold(ok.TokenType, "bearer") {
		return nil, upstream.Garbage(fmt.Sprintf("token_type %.20q where bearer was expected", ok.TokenType))
	}
	expiry := issued.Add(c.cfg.TokenTTL)
	// The answer has no lifetime: the token's own exp says. It is read,
	// not verified: tokenvend does not hold the upstream's signing key.
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(ok.AccessToken, &claims); err != nil {
		return nil, upstream.Garbage("an access_token that is not a JWT")
	}
	if claims.ExpiresAt != nil {
		expiry = claims.ExpiresAt.Time
	}
	return &token.Token{
		AccessToken: ok.AccessToken,
		Type:        "Bearer",
		Headers:     map[string]string{"Authorization": "Bearer " + ok.AccessToken},
		IssuedAt:    issued,
		Expiry:      expiry,
	}, nil
}

// rejection reads fastapi-users' 400 answer: {"detail": "LOGIN_..."}.
func rejection(body []byte) error {
	var e struct {
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Detail == "" {
		return upstream.Garbage("an HTTP 400 without a detail")
	}
	switch e.Detail {
	case "LOGIN_BAD_CREDENTIALS":
		return token.Rejected(token.ReasonCredentialsRejected, e.Detail,
			"the upstream rejected the configured username or password, or the user is inactive (LOGIN_BAD_CREDENTIALS): an operator must fix the credentials")
	case "LOGIN_USER_NOT_VERIFIED":
		return token.Rejected(token.ReasonAccountNotVerified, e.Detail,
			"the upstream account is not verified (LOGIN_USER_NOT_VERIFIED): an operator must verify it")
	default:
		return token.Rejected(token.ReasonCredentialsRejected, upstream.Code(e.Detail),
			"the upstream rejected the login: an operator must check the configured credentials")
	}
}
