package kycsim

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// audience is fastapi-users' default token_audience.
const audience = "fastapi-users:auth"

// issuedClaims is the payload fastapi-users' JWTStrategy writes, with the
// claims in its order. It is not jwt.RegisteredClaims because that type's
// audience encoding depends on a package-wide setting another package could
// change; fastapi-users always writes a list.
type issuedClaims struct {
	Sub string           `json:"sub"`
	Aud []string         `json:"aud"`
	Exp *jwt.NumericDate `json:"exp,omitempty"`
}

func (c issuedClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.Exp, nil }
func (c issuedClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return nil, nil }
func (c issuedClaims) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (c issuedClaims) GetIssuer() (string, error)                   { return "", nil }
func (c issuedClaims) GetSubject() (string, error)                  { return c.Sub, nil }
func (c issuedClaims) GetAudience() (jwt.ClaimStrings, error)       { return c.Aud, nil }

// issue signs a token for the user with this id.
func (s *Server) issue(id string) (string, error) {
	c := issuedClaims{Sub: id, Aud: []string{audience}}
	if !s.omitExp {
		// PyJWT writes exp as whole seconds, dropping the fraction.
		exp := s.now().Add(time.Duration(s.lifetime.Load())).Unix()
		c.Exp = jwt.NewNumericDate(time.Unix(exp, 0))
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.secret)
}

// verify returns a copy of the user a token names, if the token is one this
// server would accept: HS256 with its secret, an audience that includes
// fastapi-users:auth, not expired (an exp at or before now is expired, as in
// PyJWT) nor not-yet-valid by the simulator's clock, and a sub that parses
// as a UUID of a known user. The user's active and verified flags are the
// caller's to check.
func (s *Server) verify(token string) (account, bool) {
	var c jwt.RegisteredClaims
	if _, err := s.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) {
		return s.secret, nil
	}); err != nil {
		return account{}, false
	}
	id, ok := parseUUID(c.Subject)
	if !ok {
		return account{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.byID[id]
	if !ok || s.revoked[token] {
		return account{}, false
	}
	return *a, true
}

// newUUID returns a random (version 4) UUID in canonical form, as Python's
// uuid.uuid4 gives fastapi-users.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:]) // never returns an error
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b[:])
}

func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// parseUUID reads a UUID as Python's uuid.UUID(str) does, which is how
// fastapi-users parses sub: "urn:" and "uuid:" are dropped, then braces at
// either end and every hyphen, and 32 hex digits must remain. It returns the
// canonical form.
func parseUUID(s string) (string, bool) {
	s = strings.ReplaceAll(s, "urn:", "")
	s = strings.ReplaceAll(s, "uuid:", "")
	s = strings.Trim(s, "{}")
	s = strings.ReplaceAll(s, "-", "")
	if len(s) != 32 {
		return "", false
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return "", false
	}
	return formatUUID(b), true
}
