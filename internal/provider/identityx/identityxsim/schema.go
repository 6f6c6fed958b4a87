package identityxsim

import (
	"context"
	"net/url"
	"slices"
	"strings"
)

// schemaSDL is the subset of the real IdentityX schema the simulator serves, with the real
// names, input shapes and nullability.
const schemaSDL = `
schema {
  query: Query
  mutation: Mutation
}

type Query {
  activeUser: User!
  activeAppUser: AppUser
}

type Mutation {
  sendUserLoginLink(input: SendUserLoginLinkMutationInput!): String
  userLogin(input: UserLoginMutationInput!): UserAuthentication!
  userLogout: String!
  createActiveUserApiToken: String!
  sendAppUserLoginLink(input: SendAppUserLoginLinkMutationInput!): String
  loginAppUser(input: LoginAppUserMutationInput!): AppUserAuthentication!
  logoutAppUser(input: LogoutAppUserMutationInput!): String!
}

type User {
  id: String!
  email: String!
}

type UserAuthToken {
  id: String!
  value: String!
}

type UserAuthentication {
  user: User!
  token: UserAuthToken!
}

type AppUser {
  id: String!
  email: String!
}

type AppUserAuthToken {
  id: String!
  value: String!
}

type AppUserAuthentication {
  user: AppUser!
  token: AppUserAuthToken!
}

input SendUserLoginLinkMutationInput {
  email: String!
}

input UserLoginMutationInput {
  token: String!
}

input SendAppUserLoginLinkMutationInput {
  email: String!
  authUrl: String!
  source: String
  redirectTo: String
  appContextId: String
}

input LoginAppUserMutationInput {
  token: String!
}

input LogoutAppUserMutationInput {
  token: String!
}
`

// Messages of the errors a client is expected to tell apart. The first three are the real
// server's wording.
const (
	msgNoAuth       = "No user authentication was provided with this request."
	msgBadWord      = "Invalid authorization type. Allowed types are OrgUser AppUser OrgUserApiToken"
	msgWrongType    = "The wrong user authorization type was provided."
	msgNoApp        = "Unable to find an application for this request."
	msgBadToken     = "The provided token is invalid, expired or has been revoked."
	msgBadLink      = "The login link is invalid, has expired or has already been used."
	msgAppMismatch  = "The x-app-id header does not match the application of the authenticated user."
	msgUnknownEmail = "No user was found for the provided email address."
)

// gqlError is a resolver error carrying an Apollo-style extensions.code.
type gqlError struct {
	code string
	msg  string
}

func (e *gqlError) Error() string { return e.msg }

// Extensions is read by graphql-go to fill the error's "extensions" member.
func (e *gqlError) Extensions() map[string]any { return map[string]any{"code": e.code} }

func unauthenticated(msg string) error { return &gqlError{code: "UNAUTHENTICATED", msg: msg} }
func forbidden(msg string) error       { return &gqlError{code: "FORBIDDEN", msg: msg} }
func badInput(msg string) error        { return &gqlError{code: "BAD_USER_INPUT", msg: msg} }

// authFailed counts a refused credential and returns err.
func (s *Server) authFailed(err error) error {
	s.authFailures.Add(1)
	return err
}

// authenticate checks the Authorization header the way the real server does and returns the
// token's principal if its word is one of allowed. AppUser callers must also send the x-app-id
// of their own app.
func (s *Server) authenticate(ctx context.Context, allowed ...string) (principal, error) {
	ri := requestFrom(ctx)
	if ri.authorization == "" {
		return principal{}, s.authFailed(badInput(msgNoAuth))
	}
	// The real server does `const [type, token] = authorization.split(' ')`.
	parts := strings.Split(ri.authorization, " ")
	word, raw := parts[0], ""
	if len(parts) > 1 {
		raw = parts[1]
	}
	switch word {
	case kindOrgUser, kindAppUser, kindAPIToken:
	default:
		return principal{}, s.authFailed(unauthenticated(msgBadWord))
	}
	p, ok := s.verify(raw, word, "", false)
	if !ok {
		return principal{}, s.authFailed(unauthenticated(msgBadToken))
	}
	if !slices.Contains(allowed, word) {
		return principal{}, s.authFailed(unauthenticated(msgWrongType))
	}
	if word == kindAppUser {
		appID, _, err := s.requireApp(ctx)
		if err != nil {
			return principal{}, s.authFailed(err)
		}
		if appID != p.appID {
			return principal{}, s.authFailed(forbidden(msgAppMismatch))
		}
	}
	return p, nil
}

// requireApp returns the app named by x-app-id and its users.
func (s *Server) requireApp(ctx context.Context) (string, map[string]User, error) {
	id := requestFrom(ctx).appID
	users, ok := s.apps[id]
	if id == "" || !ok {
		return "", nil, badInput(msgNoApp)
	}
	return id, users, nil
}

// sendLink records a magic-link mail.
func (s *Server) sendLink(m Mail) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outbox = append(s.outbox, m)
}

// withToken returns base with the "token" (and optionally "redirectTo") query parameters set.
func withToken(base *url.URL, token string, redirectTo *string) string {
	u := *base
	q := u.Query()
	q.Set("token", token)
	if redirectTo != nil && *redirectTo != "" {
		q.Set("redirectTo", *redirectTo)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// resolver is the root resolver for both Query and Mutation.
type resolver struct{ s *Server }

type userResolver struct{ u User }

func (r *userResolver) ID() string    { return r.u.ID }
func (r *userResolver) Email() string { return r.u.Email }

type tokenResolver struct{ id, value string }

func (r *tokenResolver) ID() string    { return r.id }
func (r *tokenResolver) Value() string { return r.value }

type authResolver struct {
	user  *userResolver
	token *tokenResolver
}

func (r *authResolver) User() *userResolver   { return r.user }
func (r *authResolver) Token() *tokenResolver { return r.token }

type emailInput struct{ Input struct{ Email string } }

type tokenInput struct{ Input struct{ Token string } }

type appLinkInput struct {
	Input struct {
		Email        string
		AuthURL      string
		Source       *string
		RedirectTo   *string
		AppContextID *string
	}
}

func ok() *string { s := "ok"; return &s }

// ActiveUser answers the organisation user behind an OrgUser or OrgUserApiToken credential.
func (r *resolver) ActiveUser(ctx context.Context) (*userResolver, error) {
	p, err := r.s.authenticate(ctx, kindOrgUser, kindAPIToken)
	if err != nil {
		return nil, err
	}
	return &userResolver{User{ID: p.userID, Email: p.email}}, nil
}

// ActiveAppUser answers the app user behind an AppUser credential.
func (r *resolver) ActiveAppUser(ctx context.Context) (*userResolver, error) {
	p, err := r.s.authenticate(ctx, kindAppUser)
	if err != nil {
		return nil, err
	}
	return &userResolver{User{ID: p.userID, Email: p.email}}, nil
}

// SendUserLoginLink mails an organisation user a one-time link token.
func (r *resolver) SendUserLoginLink(args emailInput) (*string, error) {
	s := r.s
	u, found := s.orgUsers[normEmail(args.Input.Email)]
	if !found {
		return nil, badInput(msgUnknownEmail)
	}
	base, err := url.Parse(s.userLoginURL)
	if err != nil {
		return nil, &gqlError{code: "INTERNAL_SERVER_ERROR", msg: "The login page URL is misconfigured."}
	}
	s.mu.Lock()
	token, _ := s.issueLocked(kindUserLink, u, "", s.linkTTL)
	s.mu.Unlock()
	link := withToken(base, token, nil)
	s.sendLink(Mail{
		To:      u.Email,
		Subject: "Your IdentityX login link",
		Body:    "Click the link below to log in. It can be used once and expires in one hour.\n\n" + link + "\n",
		Link:    link,
	})
	return ok(), nil
}

// UserLogin exchanges an organisation-user link token for a long-lived OrgUser token.
func (r *resolver) UserLogin(args tokenInput) (*authResolver, error) {
	s := r.s
	p, valid := s.verify(args.Input.Token, kindUserLink, "", true)
	if !valid {
		return nil, s.authFailed(unauthenticated(msgBadLink))
	}
	u := User{ID: p.userID, Email: p.email}
	s.mu.Lock()
	value, jti := s.issueLocked(kindOrgUser, u, "", 0)
	s.mu.Unlock()
	s.logins.Add(1)
	return &authResolver{user: &userResolver{u}, token: &tokenResolver{id: jti, value: value}}, nil
}

// UserLogout revokes the OrgUser token the request was made with.
func (r *resolver) UserLogout(ctx context.Context) (string, error) {
	p, err := r.s.authenticate(ctx, kindOrgUser)
	if err != nil {
		return "", err
	}
	r.s.revokeJTI(p.jti)
	return "ok", nil
}

// CreateActiveUserApiToken returns the caller's permanent API token, creating it once.
func (r *resolver) CreateActiveUserApiToken(ctx context.Context) (string, error) {
	p, err := r.s.authenticate(ctx, kindOrgUser)
	if err != nil {
		return "", err
	}
	value, _ := r.s.apiTokenFor(User{ID: p.userID, Email: p.email})
	return value, nil
}

// SendAppUserLoginLink mails an app user a one-time link token appended to authUrl.
func (r *resolver) SendAppUserLoginLink(ctx context.Context, args appLinkInput) (*string, error) {
	s := r.s
	appID, users, err := s.requireApp(ctx)
	if err != nil {
		return nil, err
	}
	u, found := users[normEmail(args.Input.Email)]
	if !found {
		return nil, badInput(msgUnknownEmail)
	}
	base, err := url.Parse(args.Input.AuthURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, badInput("The authUrl must be an absolute http or https URL.")
	}
	s.mu.Lock()
	token, _ := s.issueLocked(kindAppLink, u, appID, s.linkTTL)
	s.mu.Unlock()
	link := withToken(base, token, args.Input.RedirectTo)
	s.sendLink(Mail{
		To:      u.Email,
		AppID:   appID,
		Subject: "Your login link",
		Body:    "Click the link below to log in. It can be used once and expires in one hour.\n\n" + link + "\n",
		Link:    link,
	})
	return ok(), nil
}

// LoginAppUser exchanges an app-user link token, for the app in x-app-id, for a long-lived
// AppUser token.
func (r *resolver) LoginAppUser(ctx context.Context, args tokenInput) (*authResolver, error) {
	s := r.s
	appID, _, err := s.requireApp(ctx)
	if err != nil {
		return nil, err
	}
	p, valid := s.verify(args.Input.Token, kindAppLink, appID, true)
	if !valid {
		return nil, s.authFailed(unauthenticated(msgBadLink))
	}
	u := User{ID: p.userID, Email: p.email}
	s.mu.Lock()
	value, jti := s.issueLocked(kindAppUser, u, appID, 0)
	s.mu.Unlock()
	s.logins.Add(1)
	return &authResolver{user: &userResolver{u}, token: &tokenResolver{id: jti, value: value}}, nil
}

// LogoutAppUser revokes the given AppUser token of the app in x-app-id. Logging out a token
// that is already logged out succeeds, so a retried logout is harmless.
func (r *resolver) LogoutAppUser(ctx context.Context, args tokenInput) (string, error) {
	s := r.s
	appID, _, err := s.requireApp(ctx)
	if err != nil {
		return "", err
	}
	c, valid := s.parse(args.Input.Token)
	if !valid || c.Kind != kindAppUser || c.Issuer != appID {
		return "", s.authFailed(unauthenticated(msgBadToken))
	}
	s.revokeJTI(c.ID)
	return "ok", nil
}
