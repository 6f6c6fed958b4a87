package inslysim

import (
	"encoding/base64"
	"errors"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// userScope is the scope Cognito puts in access tokens issued to users.
const userScope = "aws.cognito.signin.user.admin"

// accessToken mints a user's access token, shaped like Cognito's: the
// "username" claim is the Cognito username, never the e-mail.
func (s *Server) accessToken(u *user, now, authTime time.Time) (string, error) {
	return s.sign(jwt.MapClaims{
		"iss":       s.issuer,
		"sub":       u.sub,
		"username":  u.Username,
		"client_id": s.appClient,
		"token_use": "access",
		"scope":     userScope,
		"auth_time": authTime.Unix(),
		"iat":       now.Unix(),
		"exp":       now.Add(s.accessTTL).Unix(),
		"jti":       newUUID(),
		TenantClaim: s.tenant,
	})
}

// idToken mints a user's ID token. It is not an access token: the protected
// endpoint refuses it, which catches a client that sends the wrong one.
func (s *Server) idToken(u *user, now, authTime time.Time) (string, error) {
	return s.sign(jwt.MapClaims{
		"iss":              s.issuer,
		"sub":              u.sub,
		"aud":              s.appClient,
		"cognito:username": u.Username,
		"email":            u.Email,
		"email_verified":   true,
		"token_use":        "id",
		"auth_time":        authTime.Unix(),
		"iat":              now.Unix(),
		"exp":              now.Add(s.accessTTL).Unix(),
		"jti":              newUUID(),
		TenantClaim:        s.tenant,
	})
}

// clientAccessToken mints an access token for the client-credentials grant.
// As in Cognito, it has no "username" claim and its subject is the client.
func (s *Server) clientAccessToken(clientID, scope string, now time.Time) (string, error) {
	return s.sign(jwt.MapClaims{
		"iss":       s.issuer,
		"sub":       clientID,
		"client_id": clientID,
		"token_use": "access",
		"scope":     scope,
		"auth_time": now.Unix(),
		"iat":       now.Unix(),
		"exp":       now.Add(s.accessTTL).Unix(),
		"jti":       newUUID(),
		TenantClaim: s.tenant,
	})
}

func (s *Server) sign(c jwt.MapClaims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.key)
}

// errExpired and errInvalid are why verifyAccess refuses a token; they choose
// the message of the 401.
var (
	errExpired = errors.New("expired")
	errInvalid = errors.New("invalid")
)

// verifyAccess checks that tok is an unexpired access token signed by this
// server and returns its claims.
func (s *Server) verifyAccess(tok string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return s.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithTimeFunc(s.now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuer(s.issuer),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, errExpired
	case err != nil:
		return nil, errInvalid
	}
	if use, _ := claims["token_use"].(string); use != "access" {
		return nil, errInvalid
	}
	return claims, nil
}

// newRefreshToken returns an opaque refresh token. Cognito's are encrypted
// JWEs (five dot-separated parts); this one looks alike so that a client
// cannot mistake it for a JWT it could read.
func newRefreshToken() string {
	enc := base64.RawURLEncoding.EncodeToString
	return "eyJjdHkiOiJKV1QiLCJlbmMiOiJBMjU2R0NNIiwiYWxnIjoiUlNBLU9BRVAifQ." +
		enc(randomBytes(256)) + "." + enc(randomBytes(12)) + "." + enc(randomBytes(96)) + "." + enc(randomBytes(16))
}
