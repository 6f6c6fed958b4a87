package loginidsim

import (
	"bytes"
	"container/heap"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rejection is a refused request: the HTTP status and the JSON body.
type rejection struct {
	status  int
	Code    string
	Message string
}

func unauthorized(code, msg string) *rejection {
	return &rejection{http.StatusUnauthorized, code, msg}
}

// claims holds what an accepted token tells the endpoint.
type claims struct {
	username string
	userID   string
}

// authorize checks the request's bearer token for an endpoint that needs
// scope.
//
// The checks run in this order: header, signature, claim syntax, time window,
// nonce, client_id, scope. A token's nonce is burnt once its signature is
// valid, its claims are well formed and its iat is inside the window, even if
// client_id or scope then refuse it: only the credential's owner can make
// such a token, and the real API spends the nonce before it looks at what
// the token may do, so a client that retries the same token after a 403
// must be told it replayed. A token refused earlier, for a bad signature or
// outside its window, leaves the nonce unused: a forger must not be able to
// burn someone else's nonce, and a token outside its window can never be
// accepted anyway. Checking the window before the nonce also means that a
// replay of a token too old to be accepted is reported as expired, whether
// or not its nonce has been forgotten yet.
func (s *Server) authorize(r *http.Request, scope string) (claims, *rejection) {
	vals := r.Header.Values("Authorization")
	switch len(vals) {
	case 0:
		return claims{}, unauthorized(CodeUnauthorized, "missing bearer token")
	case 1:
	default:
		return claims{}, unauthorized(CodeUnauthorized, "more than one Authorization header")
	}
	scheme, tok, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return claims{}, unauthorized(CodeUnauthorized, "authorization scheme must be Bearer")
	}
	if tok == "" {
		return claims{}, unauthorized(CodeUnauthorized, "missing bearer token")
	}

	h, p, sig, ok := splitJWS(tok)
	if !ok {
		return claims{}, unauthorized(CodeInvalidToken, "token is not a compact JWS")
	}
	hdr, err := decodeSegment(h)
	if err != nil {
		return claims{}, unauthorized(CodeInvalidToken, "token header is not base64url")
	}
	if msg := checkHeader(hdr); msg != "" {
		return claims{}, unauthorized(CodeInvalidToken, msg)
	}
	payload, err := decodeSegment(p)
	if err != nil {
		return claims{}, unauthorized(CodeInvalidToken, "token payload is not base64url")
	}
	rawSig, err := decodeSegment(sig)
	if err != nil {
		return claims{}, unauthorized(CodeInvalidToken, "token signature is not base64url")
	}
	if !s.verify(tok[:len(h)+1+len(p)], rawSig) {
		return claims{}, unauthorized(CodeInvalidSignature, "token signature is invalid")
	}
	// Only now that the signature is good is the payload read.
	c, rej := s.parseClaims(payload)
	if rej != nil {
		return claims{}, rej
	}

	now := s.now()
	iat := time.Unix(c.iat, 0)
	if now.Sub(iat) > s.maxAge {
		return claims{}, unauthorized(CodeTokenExpired, "token is expired")
	}
	if iat.Sub(now) > s.skew {
		return claims{}, unauthorized(CodeTokenNotYetValid, "token iat is in the future")
	}
	if c.hasExp && !now.Before(time.Unix(c.exp, 0)) {
		return claims{}, unauthorized(CodeTokenExpired, "token is expired")
	}

	// Remember the nonce for as long as the token could be accepted, plus
	// the skew, so that it is forgotten only when it can no longer matter.
	if !s.nonces.use(c.nonce, iat.Add(s.maxAge+s.skew), now) {
		return claims{}, unauthorized(CodeTokenReplayed, "token nonce has already been used")
	}

	if s.clientID != "" && c.clientID != s.clientID {
		return claims{}, unauthorized(CodeInvalidClient, "token client_id does not match the credential")
	}
	if c.scope != scope {
		return claims{}, &rejection{http.StatusForbidden, CodeForbidden, "this endpoint requires scope " + scope}
	}
	return claims{username: c.username, userID: c.userID}, nil
}

// splitJWS splits a compact JWS into its three segments.
func splitJWS(tok string) (header, payload, sig string, ok bool) {
	header, rest, ok1 := strings.Cut(tok, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig, ".") || header == "" || payload == "" || sig == "" {
		return "", "", "", false
	}
	return header, payload, sig, true
}

var b64 = base64.RawURLEncoding.Strict()

// decodeSegment decodes one unpadded base64url segment. The alphabet is
// checked first because the decoder silently skips CR and LF.
func decodeSegment(seg string) ([]byte, error) {
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, errors.New("not base64url")
		}
	}
	return b64.DecodeString(seg)
}

// checkHeader returns why the JOSE header is refused, or "" when it is
// exactly {"alg":"ES256","typ":"JWT"} (members in any order).
func checkHeader(b []byte) string {
	hdr, err := decodeObject(b)
	if err != nil {
		return "token header is not a JSON object"
	}
	if alg, _ := hdr["alg"].(string); alg != "ES256" {
		return "token alg must be ES256"
	}
	if typ, _ := hdr["typ"].(string); typ != "JWT" {
		return "token typ must be JWT"
	}
	if len(hdr) != 2 {
		return "token header must hold only alg and typ"
	}
	return ""
}

// verify checks a JWS ES256 signature: 64 bytes, r then s, each a 32-byte
// big-endian integer, over SHA-256 of the signing input.
func (s *Server) verify(signingInput string, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	digest := sha256.Sum256([]byte(signingInput))
	r := new(big.Int).SetBytes(sig[:32])
	ss := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(s.pub, digest[:], r, ss)
}

// tokenClaims is the parsed payload of a signed token.
type tokenClaims struct {
	scope    string
	nonce    string
	iat      int64
	exp      int64
	hasExp   bool
	clientID string
	username string
	userID   string
}

// parseClaims checks the claims' syntax. Claims it does not know are
// ignored, as a JWT verifier must.
func (s *Server) parseClaims(b []byte) (tokenClaims, *rejection) {
	var c tokenClaims
	m, err := decodeObject(b)
	if err != nil {
		return c, unauthorized(CodeInvalidToken, "token payload is not a JSON object")
	}
	var ok bool
	if c.nonce, ok = m["nonce"].(string); !ok || c.nonce == "" {
		return c, unauthorized(CodeInvalidToken, "token nonce claim is missing")
	}
	if c.iat, ok = integer(m["iat"]); !ok {
		return c, unauthorized(CodeInvalidToken, "token iat claim must be an integer")
	}
	if v, present := m["exp"]; present {
		if c.exp, ok = integer(v); !ok {
			return c, unauthorized(CodeInvalidToken, "token exp claim must be an integer")
		}
		c.hasExp = true
	}
	// An absent scope claim is a missing scope (403); a non-string one is a
	// malformed token (401).
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{s.scopeClaim, &c.scope},
		{"client_id", &c.clientID},
		{"username", &c.username},
		{"user_id", &c.userID},
	} {
		v, present := m[f.name]
		if !present {
			continue
		}
		if *f.dst, ok = v.(string); !ok {
			return c, unauthorized(CodeInvalidToken, "token "+f.name+" claim must be a string")
		}
	}
	return c, nil
}

// integer returns v as an int64 when it is a JSON integer. LoginID's SDKs
// write iat in whole seconds, so a fraction or exponent is refused.
func integer(v any) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(n.String(), 10, 64)
	return i, err == nil
}

// decodeObject decodes one JSON object and nothing after it. Numbers are
// kept as json.Number. A member name that appears twice is refused rather
// than resolved, so that two parsers cannot read different claims from the
// same token.
func decodeObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not an object")
	}
	m := make(map[string]any)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := t.(string)
		if !ok {
			return nil, errors.New("bad member name")
		}
		if _, dup := m[name]; dup {
			return nil, errors.New("duplicate member " + strconv.Quote(name))
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		m[name] = v
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, errors.New("unterminated object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return m, nil
}

// nonceStore remembers used nonces until they can no longer matter, so its
// size is bounded by the number of tokens accepted within one
// MaxAge + Skew window.
type nonceStore struct {
	mu   sync.Mutex
	seen map[string]time.Time // nonce -> when it may be forgotten
	exp  expiryHeap
}

// use records nonce until forgetAt and reports whether it was unused.
// Nonces whose time has passed are forgotten first.
func (n *nonceStore) use(nonce string, forgetAt, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(n.exp) > 0 && now.After(n.exp[0].at) {
		e := heap.Pop(&n.exp).(expiry)
		delete(n.seen, e.nonce)
	}
	if _, used := n.seen[nonce]; used {
		return false
	}
	n.seen[nonce] = forgetAt
	heap.Push(&n.exp, expiry{forgetAt, nonce})
	return true
}

// size returns how many nonces are remembered.
func (n *nonceStore) size() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.seen)
}

type expiry struct {
	at    time.Time
	nonce string
}

// expiryHeap is a min-heap of nonces by the time they may be forgotten.
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = expiry{}
	*h = old[:len(old)-1]
	return e
}
