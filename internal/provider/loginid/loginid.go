// Package loginid mints LoginID API service tokens: short ES256 JWTs that
// the caller's backend signs itself with the private key of an API
// credential, and sends as "Authorization: Bearer <jwt>". Nothing is
// fetched from LoginID: a token is {<scope claim>: scope, nonce, iat,
// client_id?, username?} under the header {"alg":"ES256","typ":"JWT"}.
//
// LoginID accepts each token once (it remembers the nonce) and for five
// minutes after its iat, so a token can never be cached: the provider is
// single-use, and tokenvend mints a new token for every request. That makes
// minting this provider's hot path, and the package is shaped by it: the key
// is parsed once (and again only when a rotated {file: ...} secret changes
// it, which is looked at every KeyRecheck, not on every call), each
// allowed scope's part of the payload is built once,
// the JOSE header is encoded once, and a mint builds the token in one buffer
// that the access token and the Authorization header share. What is left
// per call is a random nonce, the clock, one ECDSA signature and a few
// small allocations (see BenchmarkMint next to BenchmarkECDSASignDeterministic).
package loginid

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Config holds the kind's keys.
type Config struct {
	// PrivateKey is the API credential's P-256 private key, PEM (PKCS#8 or
	// SEC1), with real newlines or as one line with literal `\n`.
	PrivateKey secret.Secret `yaml:"private_key"`
	// ClientID, when set, is sent as the client_id claim.
	ClientID string `yaml:"client_id"`
	// Scopes are the scopes callers may ask for; one is required per call.
	Scopes []string `yaml:"scopes"`
	// ScopeClaim names the claim that carries the scope: "type" (LoginID's
	// server SDKs, the default) or "scope" (newer docs).
	ScopeClaim string `yaml:"scope_claim"`
	// TokenLifetime is how long LoginID accepts a token after its iat, and
	// so what expire_time reports (5m).
	TokenLifetime time.Duration `yaml:"token_lifetime"`

	// key is the key Validate parsed, so that New uses exactly the key
	// that was validated without resolving the secret again.
	key *loadedKey
}

// Defaults.
const (
	DefaultScopeClaim    = "type"
	DefaultTokenLifetime = 5 * time.Minute
)

// KeyRecheck is how often the private_key secret is resolved again after
// start-up, so that a rotated {file: ...} key takes effect without a
// restart, as other kinds' file secrets do at their next login. Resolving it on every mint would put a file read on
// the hot path; the key is parsed again only when the value has changed.
const KeyRecheck = 10 * time.Second

// ReasonKeyUnusable is the error reason when the private_key secret,
// resolved again after a rotation, no longer holds a usable key.
const ReasonKeyUnusable = "PRIVATE_KEY_UNUSABLE"

// maxScope is the longest scope the broker lets through.
const maxScope = 256

// Validate checks c, fills its defaults and parses the private key, so
// that a bad key is a start-up error (and one `tokenvend check` reports).
func (c *Config) Validate() error {
	var errs []error
	if v, err := c.PrivateKey.Value(); err != nil {
		errs = append(errs, config.Errorf("private_key", "%v", err))
	} else if k, err := ParsePrivateKey(v); err != nil {
		errs = append(errs, config.Errorf("private_key", "%v", err))
	} else {
		c.key = &loadedKey{value: v, key: k}
	}
	if len(c.Scopes) == 0 {
		errs = append(errs, config.Errorf("scopes", "at least one scope is required: list the scopes callers may ask for, e.g. [users.retrieve]"))
	}
	seen := map[string]bool{}
	for i, s := range c.Scopes {
		path := fmt.Sprintf("scopes[%d]", i)
		switch {
		case s == "" || len(s) > maxScope || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f }):
			errs = append(errs, config.Errorf(path, "must be 1 to %d printable ASCII characters, no spaces", maxScope))
		case seen[s]:
			errs = append(errs, config.Errorf(path, "%q is listed twice", s))
		}
		seen[s] = true
	}
	switch c.ScopeClaim {
	case "":
		c.ScopeClaim = DefaultScopeClaim
	case "type", "scope":
	default:
		errs = append(errs, config.Errorf("scope_claim", `must be "type" (LoginID's server SDKs) or "scope" (newer docs)`))
	}
	if c.TokenLifetime < 0 {
		errs = append(errs, config.Errorf("token_lifetime", "must be positive"))
	}
	if c.TokenLifetime == 0 {
		c.TokenLifetime = DefaultTokenLifetime
	}
	return errors.Join(errs...)
}

// loadedKey is a parsed private key and the secret value it came from.
type loadedKey struct {
	value string
	key   *ecdsa.PrivateKey
	// recheck is when the secret is next resolved again.
	recheck time.Time
}

// Client is the loginid Source: it mints a token per call and never asks
// the network for anything.
type Client struct {
	secret   secret.Secret
	lifetime time.Duration
	now      func() time.Time
	// heads holds, per allowed scope, the start of the payload up to the
	// nonce's value: {"type":"users.create","nonce":"
	heads map[string]string
	// tail is the part of the payload after iat that every token has:
	// ,"client_id":"..." or nothing.
	tail string

	key    atomic.Pointer[loadedKey]
	reload sync.Mutex
}

// New returns a Client for cfg, validating it first unless Validate
// already has. now is the clock of iat and of the key's recheck.
func New(cfg Config, now func() time.Time) (*Client, error) {
	if cfg.key == nil {
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
	}
	c := &Client{
		secret:   cfg.PrivateKey,
		lifetime: cfg.TokenLifetime,
		now:      now,
		heads:    make(map[string]string, len(cfg.Scopes)),
	}
	for _, s := range cfg.Scopes {
		c.heads[s] = `{` + string(appendString(nil, cfg.ScopeClaim)) + `:` + string(appendString(nil, s)) + `,"nonce":"`
	}
	if cfg.ClientID != "" {
		c.tail = `,"client_id":` + string(appendString(nil, cfg.ClientID))
	}
	k := *cfg.key
	k.recheck = now().Add(KeyRecheck)
	c.key.Store(&k)
	return c, nil
}

// Token mints a token for r.Scope, naming r.Subject as its username when
// there is one. The broker has already checked the scope against the
// allowed ones; it is checked again here because a scope outside the
// configured list must never be signed.
func (c *Client) Token(ctx context.Context, r token.Request) (*token.Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	head, ok := c.heads[r.Scope]
	if !ok {
		if r.Scope == "" {
			return nil, &token.Error{Kind: token.KindInvalid, Reason: "INVALID_SCOPE", Message: "a LoginID service token needs a scope"}
		}
		return nil, &token.Error{Kind: token.KindDenied, Reason: "SCOPE_NOT_ALLOWED", Message: "this scope is not in the provider's scopes"}
	}
	now := c.now()
	k, err := c.current(now)
	if err != nil {
		return nil, err
	}
	iat := now.Unix()
	header, err := c.mint(k, head, r.Subject, iat)
	if err != nil {
		return nil, err
	}
	issued := time.Unix(iat, 0).UTC()
	return &token.Token{
		AccessToken: header[len(bearer):],
		Type:        "Bearer",
		Headers:     map[string]string{"Authorization": header},
		IssuedAt:    issued,
		Expiry:      issued.Add(c.lifetime),
	}, nil
}

// current returns the key to sign with, resolving the secret again when
// KeyRecheck has passed since it last was.
func (c *Client) current(now time.Time) (*ecdsa.PrivateKey, error) {
	k := c.key.Load()
	if now.Before(k.recheck) {
		return k.key, nil
	}
	c.reload.Lock()
	defer c.reload.Unlock()
	if k = c.key.Load(); now.Before(k.recheck) {
		return k.key, nil // another caller has just rechecked
	}
	// A failure leaves the stored key alone, so the next call looks
	// again: a fixed secret takes effect at once.
	v, err := c.secret.Value()
	if err != nil {
		return nil, token.SecretUnreadable("private_key", err)
	}
	next := &loadedKey{value: k.value, key: k.key, recheck: now.Add(KeyRecheck)}
	if v != k.value {
		key, err := ParsePrivateKey(v)
		if err != nil {
			return nil, token.Rejected(ReasonKeyUnusable, "",
				"the configured private_key has changed and is no longer usable ("+err.Error()+"): an operator must fix it")
		}
		next.value, next.key = v, key
	}
	c.key.Store(next)
	return next.key, nil
}

const bearer = "Bearer "

// nonceBytes is the nonce's entropy: 128 bits, as the issue requires at
// least, base64url-encoded to 22 characters.
const nonceBytes = 16

var (
	b64 = base64.RawURLEncoding
	// signingHead is the encoded JOSE header and the dot after it: it is
	// the same for every token.
	signingHead = b64.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`)) + "."
	// sigLen is the length of an encoded ES256 signature (64 bytes r||s).
	sigLen = b64.EncodedLen(64)
)

// mint returns "Bearer <jwt>". The payload is built in a stack buffer,
// and the token in one heap buffer that the access token, the header and
// the signing input share. The signature is ES256 in the 64-byte r||s
// form JWS requires rather than ASN.1 DER (see sign).
func (c *Client) mint(k *ecdsa.PrivateKey, head, subject string, iat int64) (string, error) {
	var nonce [nonceBytes]byte
	_, _ = rand.Read(nonce[:]) // never fails: crypto/rand crashes the program instead

	var pbuf [384]byte
	p := append(pbuf[:0], head...)
	p = b64.AppendEncode(p, nonce[:])
	p = append(p, `","iat":`...)
	p = strconv.AppendInt(p, iat, 10)
	p = append(p, c.tail...)
	if subject != "" {
		p = append(p, `,"username":`...)
		p = appendString(p, subject)
	}
	p = append(p, '}')

	var b strings.Builder
	b.Grow(len(bearer) + len(signingHead) + b64.EncodedLen(len(p)) + 1 + sigLen)
	b.WriteString(bearer)
	b.WriteString(signingHead)
	var ebuf [512]byte
	b.Write(b64.AppendEncode(ebuf[:0], p))
	// The Builder only ever appends, so this view of its first bytes
	// stays valid while the signature is added after them.
	sig, err := sign(k, b.String()[len(bearer):])
	if err != nil {
		return "", &token.Error{Kind: token.KindInternal, Reason: "INTERNAL", Message: "signing the service token failed", Err: err}
	}
	b.WriteByte('.')
	b.Write(b64.AppendEncode(ebuf[:0], sig))
	return b.String(), nil
}

// sign returns the ES256 signature of a JWS signing input as JWS writes
// it: r and s, 32 bytes each (RFC 7518, section 3.4), as golang-jwt's
// SigningMethodES256.Sign does, and verifiable by it (TestTokenShape).
//
// It signs with a deterministic k (RFC 6979: ecdsa.PrivateKey.Sign with no
// random source) where golang-jwt's Sign passes crypto/rand, with which
// crypto/ecdsa derives k from fresh entropy, the key and the digest through
// a SHA-512 HMAC-DRBG ("hedged" signing). That derivation was a quarter
// of the signature's CPU: hedged 33-43 us and 6.1 kB per signature,
// deterministic 27-29 us and 3.9 kB (BenchmarkECDSASign beside
// BenchmarkECDSASignDeterministic; bench/README.md, issue 18). Hedging guards against faults that make two signatures of the same
// message differ; no two tokens here share a message, since every
// payload carries its own 128-bit random nonce.
func sign(k *ecdsa.PrivateKey, signingInput string) ([]byte, error) {
	digest := sha256.Sum256([]byte(signingInput))
	der, err := k.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("the signature is not an ASN.1 (r, s): %v", err)
	}
	sig := make([]byte, 64)
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	return sig, nil
}

// appendString appends s as a JSON string. Scopes, client ids and
// usernames are plain text nearly always, so that case is one copy; a
// quote, a backslash, a control character or invalid UTF-8 is escaped.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
		}
		dst = append(dst, s[start:i]...)
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, `\u00`...)
			dst = append(dst, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
		default:
			dst = append(dst, `\ufffd`...) // invalid UTF-8, as encoding/json writes it
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
