package identityxsim

import (
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token kinds, carried in the "kind" claim. The first three are also the Authorization words
// that present them; link tokens are never accepted in a header.
const (
	kindOrgUser  = "OrgUser"
	kindAppUser  = "AppUser"
	kindAPIToken = "OrgUserApiToken"
	kindUserLink = "OrgUserLoginLink"
	kindAppLink  = "AppUserLoginLink"
)

// claims are the simulator's JWT claims. App tokens name their app in iss, as the real
// service's AppUser tokens do.
type claims struct {
	Kind  string `json:"kind"`
	Email string `json:"email,omitempty"`
	jwt.RegisteredClaims
}

// tokenRecord is the server-side state of one issued token, keyed by jti: a JWT whose record
// is missing or dead is refused even though its signature is good.
type tokenRecord struct {
	kind   string
	userID string
	email  string
	appID  string // the issuing app for AppUser and app-link tokens
	dead   bool   // revoked, logged out, or (for a link) already exchanged
}

// principal is a verified token: its jti and a copy of its record.
type principal struct {
	jti string
	tokenRecord
}

// apiToken is an organisation user's current OrgUserApiToken.
type apiToken struct {
	jti, value string
}

// issueLocked signs and records a new token; ttl zero means it never expires. s.mu must be held.
func (s *Server) issueLocked(kind string, u User, appID string, ttl time.Duration) (value, jti string) {
	now := s.now()
	jti = randomID()
	c := claims{
		Kind:  kind,
		Email: u.Email,
		RegisteredClaims: jwt.RegisteredClaims{
			ID:       jti,
			Subject:  u.ID,
			Issuer:   appID,
			IssuedAt: jwt.NewNumericDate(now),
		},
	}
	if ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	value, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.key)
	if err != nil {
		panic("identityxsim: signing a token: " + err.Error())
	}
	s.tokens[jti] = &tokenRecord{kind: kind, userID: u.ID, email: u.Email, appID: appID}
	return value, jti
}

// parse checks a JWT's signature, algorithm and (when present) expiry by the server's clock.
func (s *Server) parse(raw string, opts ...jwt.ParserOption) (*claims, bool) {
	c := &claims{}
	opts = append(opts, jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithTimeFunc(s.now))
	_, err := jwt.ParseWithClaims(raw, c, func(*jwt.Token) (any, error) { return s.key, nil }, opts...)
	if err != nil || c.ID == "" {
		return nil, false
	}
	return c, true
}

// verify returns the live token raw of the given kind. With consume, the token is killed in
// the same critical section, so a link token is exchanged at most once even under races.
// With wantApp non-empty the token must have been issued by that app.
func (s *Server) verify(raw, kind, wantApp string, consume bool) (principal, bool) {
	c, ok := s.parse(raw)
	if !ok || c.Kind != kind {
		return principal{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.tokens[c.ID]
	if rec == nil || rec.dead || rec.kind != kind || (wantApp != "" && rec.appID != wantApp) {
		return principal{}, false
	}
	if consume {
		rec.dead = true
	}
	return principal{jti: c.ID, tokenRecord: *rec}, true
}

// revokeJTI kills the token with that jti and reports whether it was live.
func (s *Server) revokeJTI(jti string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.tokens[jti]
	if rec == nil || rec.dead {
		return false
	}
	rec.dead = true
	return true
}

// Revoke kills token (any kind, including an unused link token) as if its owner had logged out
// or an administrator had deleted it, and reports whether it was a live token of this server.
// A revoked OrgUserApiToken is replaced by a new one at the next createActiveUserApiToken.
func (s *Server) Revoke(token string) bool {
	c, ok := s.parse(token, jwt.WithoutClaimsValidation())
	if !ok {
		return false
	}
	return s.revokeJTI(c.ID)
}

// apiTokenFor returns u's live API token, creating it if u has none: the real mutation is
// idempotent, so a second call hands back the same JWT.
func (s *Server) apiTokenFor(u User) (value, jti string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.apiTokens[u.ID]; ok {
		if rec := s.tokens[t.jti]; rec != nil && !rec.dead {
			return t.value, t.jti
		}
	}
	value, jti = s.issueLocked(kindAPIToken, u, "", 0)
	s.apiTokens[u.ID] = apiToken{jti: jti, value: value}
	return value, jti
}

// IssueOrgUserToken returns a new long-lived OrgUser token for the organisation user email, as
// userLogin would, without the magic link. It panics if there is no such user.
func (s *Server) IssueOrgUserToken(email string) string {
	u := s.mustOrgUser(email)
	s.mu.Lock()
	defer s.mu.Unlock()
	v, _ := s.issueLocked(kindOrgUser, u, "", 0)
	return v
}

// IssueAppUserToken returns a new long-lived AppUser token for the user email of app appID, as
// loginAppUser would. It panics if there is no such app or user.
func (s *Server) IssueAppUserToken(appID, email string) string {
	users, ok := s.apps[appID]
	if !ok {
		panic(fmt.Sprintf("identityxsim: IssueAppUserToken: no app %q", appID))
	}
	u, ok := users[normEmail(email)]
	if !ok {
		panic(fmt.Sprintf("identityxsim: IssueAppUserToken: app %q has no user %q", appID, email))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, _ := s.issueLocked(kindAppUser, u, appID, 0)
	return v
}

// IssueAPIToken returns the organisation user's OrgUserApiToken, as createActiveUserApiToken
// would: the existing one if it is still live. It panics if there is no such user.
func (s *Server) IssueAPIToken(email string) string {
	v, _ := s.apiTokenFor(s.mustOrgUser(email))
	return v
}

func (s *Server) mustOrgUser(email string) User {
	u, ok := s.orgUsers[normEmail(email)]
	if !ok {
		panic(fmt.Sprintf("identityxsim: no organisation user %q", email))
	}
	return u
}
