package inslysim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// maxBody bounds request bodies; real requests are a few hundred bytes.
const maxBody = 64 << 10

// authenticationResult is the "authentication_result" object of a successful
// login or refresh. Absent fields are omitted, as the service omits them.
type authenticationResult struct {
	AccessToken  string `json:"access_token"`
	ExpiresIn    int64  `json:"expires_in"`
	IDToken      string `json:"id_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	TokenType    string `json:"token_type"`
}

type loginAnswer struct {
	AuthenticationResult *authenticationResult `json:"authentication_result,omitempty"`
	ChallengeName        string                `json:"challenge_name,omitempty"`
	ChallengeParameters  map[string]string     `json:"challenge_parameters,omitempty"`
}

// identifier wraps an identifier endpoint with what all three share: the
// attempt counter, faults, the tenant and the content type.
func (s *Server) identifier(ep Endpoint, attempts *atomic.Int64, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		if s.applyFault(ep, w, r) {
			return
		}
		if r.PathValue("tenant") != s.tenant {
			writeError(w, http.StatusBadRequest, CodeUndefined, "Tenant not found.")
			return
		}
		if !isJSON(r.Header.Get("Content-Type")) {
			writeError(w, http.StatusBadRequest, CodeUndefined, "Content-Type must be application/json.")
			return
		}
		h(w, r)
	}
}

// isJSON reports whether ct is application/json with at most a UTF-8 charset
// parameter.
func isJSON(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// field is one member of a request body: its exact JSON name, where to decode
// it, and whether it must be present and non-empty.
type field struct {
	name     string
	dst      any
	required bool
}

// readBody decodes r's JSON object into fields, matching names exactly and
// refusing unknown members, and answers 400 itself when the body is wrong.
// It reports whether the handler may go on.
func readBody(w http.ResponseWriter, r *http.Request, fields ...field) bool {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeUndefined, "Request body is too large or unreadable.")
		return false
	}
	var members map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&members); err != nil || members == nil {
		writeError(w, http.StatusBadRequest, CodeUndefined, "Request body must be a JSON object.")
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) { // trailing data
		writeError(w, http.StatusBadRequest, CodeUndefined, "Request body must be a JSON object.")
		return false
	}
	var errs []apiError
	for name := range members {
		if !slices.ContainsFunc(fields, func(f field) bool { return f.name == name }) {
			errs = append(errs, apiError{Code: CodeUndefined, Message: "This field was not expected.", Params: []string{name}})
		}
	}
	for _, f := range fields {
		v, ok := members[f.name]
		if ok {
			if err := json.Unmarshal(v, f.dst); err != nil {
				errs = append(errs, apiError{Code: CodeUndefined, Message: "This value has the wrong type.", Params: []string{f.name}})
				continue
			}
		}
		if s, isString := f.dst.(*string); f.required && (!ok || isString && *s == "") {
			errs = append(errs, apiError{Code: CodeUndefined, Message: "This value should not be blank.", Params: []string{f.name}})
		}
	}
	if errs != nil {
		slices.SortFunc(errs, func(a, b apiError) int { return strings.Compare(a.Params[0], b.Params[0]) })
		writeErrors(w, http.StatusBadRequest, errs)
		return false
	}
	return true
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var email, password string
	var meta map[string]string
	if !readBody(w, r,
		field{name: "username", dst: &email, required: true},
		field{name: "password", dst: &password, required: true},
		field{name: "meta_data", dst: &meta},
	) {
		return
	}

	s.mu.Lock()
	u := s.users[strings.ToLower(email)]
	var code string
	switch {
	case u == nil:
		code = CodeUserNotFound
	case !equalSecret(u.Password, password):
		// Cognito checks the password before the account's state, so a
		// wrong password never reveals that state.
		code = CodeNotAuthorized
	case u.ResetRequired:
		code = CodePasswordResetRequired
	case u.Unconfirmed:
		code = CodeUserNotConfirmed
	}
	if code != "" {
		s.mu.Unlock()
		writeCode(w, http.StatusBadRequest, code)
		return
	}
	if u.Challenge != "" {
		ans := loginAnswer{ChallengeName: u.Challenge, ChallengeParameters: challengeParameters(u)}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, ans)
		return
	}
	now := s.now()
	res, err := s.issueUserTokens(u, now, now)
	if err == nil {
		res.RefreshToken = newRefreshToken()
		s.refresh[res.RefreshToken] = &refreshRecord{user: u, authTime: now, expires: now.Add(s.refreshTTL)}
	}
	s.mu.Unlock()
	if err != nil {
		writeCode(w, http.StatusInternalServerError, CodeUndefined)
		return
	}
	s.logins.Add(1)
	writeJSON(w, http.StatusOK, loginAnswer{AuthenticationResult: res})
}

// challengeParameters returns what Cognito sends with a challenge. Callers
// hold s.mu.
func challengeParameters(u *user) map[string]string {
	p := map[string]string{"USER_ID_FOR_SRP": u.Username}
	if u.Challenge == "NEW_PASSWORD_REQUIRED" {
		p["requiredAttributes"] = "[]"
		attrs, _ := json.Marshal(map[string]string{"email": u.Email})
		p["userAttributes"] = string(attrs)
	}
	return p
}

// issueUserTokens mints a user's access and ID tokens. Callers hold s.mu.
func (s *Server) issueUserTokens(u *user, now, authTime time.Time) (*authenticationResult, error) {
	access, err := s.accessToken(u, now, authTime)
	if err != nil {
		return nil, err
	}
	id, err := s.idToken(u, now, authTime)
	if err != nil {
		return nil, err
	}
	return &authenticationResult{
		AccessToken: access,
		ExpiresIn:   int64(s.accessTTL / time.Second),
		IDToken:     id,
		TokenType:   "Bearer",
	}, nil
}

func (s *Server) handleClient(w http.ResponseWriter, r *http.Request) {
	var id, secret, scope string
	if !readBody(w, r,
		field{name: "client_id", dst: &id, required: true},
		field{name: "client_secret", dst: &secret, required: true},
		field{name: "scope", dst: &scope, required: true},
	) {
		return
	}
	s.mu.Lock()
	c, known := s.clients[id]
	s.mu.Unlock()
	if !known || !equalSecret(c.Secret, secret) {
		writeError(w, http.StatusBadRequest, CodeNotAuthorized, "NotAuthorizedException: Client authentication failed.")
		return
	}
	// Cognito takes a space-separated list of scopes, each of which must be
	// allowed for the client.
	scopes := strings.Fields(scope)
	for _, sc := range scopes {
		if !slices.Contains(c.Scopes, sc) {
			writeError(w, http.StatusBadRequest, CodeNotAuthorized, "NotAuthorizedException: Invalid scope requested.", sc)
			return
		}
	}
	tok, err := s.clientAccessToken(id, strings.Join(scopes, " "), s.now())
	if err != nil {
		writeCode(w, http.StatusInternalServerError, CodeUndefined)
		return
	}
	s.clientLogins.Add(1)
	res := &authenticationResult{AccessToken: tok, ExpiresIn: int64(s.accessTTL / time.Second), TokenType: "Bearer"}
	if s.flat {
		writeJSON(w, http.StatusOK, res)
		return
	}
	writeJSON(w, http.StatusOK, loginAnswer{AuthenticationResult: res})
}

func (s *Server) handleRefresh(w http.ResponseWriter, r *http.Request) {
	var token, username string
	if !readBody(w, r,
		field{name: "refresh_token", dst: &token, required: true},
		field{name: "username", dst: &username, required: true},
	) {
		return
	}
	s.mu.Lock()
	now := s.now()
	rec := s.refresh[token]
	var msg string
	switch {
	case rec == nil:
		msg = "NotAuthorizedException: Invalid Refresh Token"
	case rec.user.Username != username:
		// The service signs the refresh with a SECRET_HASH computed from
		// the username it is given; Cognito recomputes it from the token's
		// user, so any other name (the e-mail, say) fails this way.
		msg = "NotAuthorizedException: Unable to verify secret hash for client " + s.appClient
	case rec.revoked:
		msg = "NotAuthorizedException: Refresh Token has been revoked"
	case !now.Before(rec.expires):
		msg = "NotAuthorizedException: Refresh Token has expired"
	}
	if msg != "" {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, CodeNotAuthorized, msg)
		return
	}
	res, err := s.issueUserTokens(rec.user, now, rec.authTime)
	if err == nil && s.rotate {
		delete(s.refresh, token)
		res.RefreshToken = newRefreshToken()
		s.refresh[res.RefreshToken] = &refreshRecord{user: rec.user, authTime: rec.authTime, expires: now.Add(s.refreshTTL)}
	}
	s.mu.Unlock()
	if err != nil {
		writeCode(w, http.StatusInternalServerError, CodeUndefined)
		return
	}
	s.refreshes.Add(1)
	writeJSON(w, http.StatusOK, loginAnswer{AuthenticationResult: res})
}

// policiesAnswer is the protected endpoint's answer: who the token belongs
// to, so a test can tell a user's token from a client's.
type policiesAnswer struct {
	// User is the token's "username" claim for a user, its client_id for an
	// application.
	User     string   `json:"user"`
	Tenant   string   `json:"tenant"`
	Policies []string `json:"policies"`
}

func (s *Server) handlePolicies(w http.ResponseWriter, r *http.Request) {
	s.policyCalls.Add(1)
	unauthorized := func(msg string) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="insly"`)
		writeError(w, http.StatusUnauthorized, CodeNotAuthorized, msg)
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		unauthorized("NotAuthorizedException: Missing Authentication Token")
		return
	}
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		unauthorized("NotAuthorizedException: Invalid Access Token")
		return
	}
	claims, err := s.verifyAccess(tok)
	if errors.Is(err, errExpired) {
		unauthorized("NotAuthorizedException: Access Token has expired")
		return
	}
	if err != nil {
		unauthorized("NotAuthorizedException: Invalid Access Token")
		return
	}
	s.mu.Lock()
	revoked := s.revoked[tok]
	s.mu.Unlock()
	if revoked {
		unauthorized("NotAuthorizedException: Access Token has been revoked")
		return
	}
	tenant, _ := claims[TenantClaim].(string)
	if h := r.Header.Get("X-TENANT-ID"); h == "" || h != tenant {
		writeError(w, http.StatusForbidden, CodeNotAuthorized, "NotAuthorizedException: Access Token does not belong to tenant.", h)
		return
	}
	// Insly's docs say every call made with the token carries
	// "Content-Type: application/json; charset=UTF-8": a client that does
	// not send it cannot count on the real API taking the call.
	if !isJSON(r.Header.Get("Content-Type")) {
		writeError(w, http.StatusBadRequest, CodeUndefined, "Content-Type must be application/json.")
		return
	}
	who, _ := claims["username"].(string)
	if who == "" {
		who, _ = claims["client_id"].(string)
	}
	writeJSON(w, http.StatusOK, policiesAnswer{User: who, Tenant: tenant, Policies: []string{}})
}
