package identityx

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Enroller runs the one-time enrolment that gives an operator a long-lived
// IdentityX token to store as the provider's secret: a magic link mailed
// to a person, its exchange for an OrgUser or AppUser token, and the
// creation of an OrgUserApiToken with an OrgUser token. It keeps nothing:
// every token goes back to the caller.
//
// Operations use inline input objects with variables for the values, so
// they depend on the schema's field names only, not on its input type
// names. Failures are *token.Error values whose messages never hold a
// token.
type Enroller struct {
	endpoint string
	hc       *http.Client
}

// NewEnroller returns an Enroller for the GraphQL URL endpoint.
func NewEnroller(endpoint string, hc *http.Client) (*Enroller, error) {
	if err := config.CheckURL(endpoint); err != nil {
		return nil, fmt.Errorf("endpoint %v", err)
	}
	return &Enroller{endpoint: endpoint, hc: hc}, nil
}

// SendUserLink asks IdentityX to mail the organisation user email a
// one-hour magic link (sendUserLoginLink).
func (e *Enroller) SendUserLink(ctx context.Context, email string) error {
	var data struct {
		Sent *string `json:"sendUserLoginLink"`
	}
	g, err := call(ctx, e.hc, e.endpoint, nil,
		`mutation SendLink($email: String!) { sendUserLoginLink(input: {email: $email}) }`,
		map[string]any{"email": email}, &data)
	return sendResult(g, err, data.Sent, "organisation user")
}

// SendAppUserLink asks IdentityX to mail the user email of application
// appID a one-hour magic link (sendAppUserLoginLink): authURL with the
// link token appended as its "token" parameter.
func (e *Enroller) SendAppUserLink(ctx context.Context, appID, email, authURL string) error {
	if err := checkAppID(appID); err != nil {
		return err
	}
	var data struct {
		Sent *string `json:"sendAppUserLoginLink"`
	}
	g, err := call(ctx, e.hc, e.endpoint, map[string]string{"x-app-id": appID},
		`mutation SendLink($email: String!, $authUrl: String!) { sendAppUserLoginLink(input: {email: $email, authUrl: $authUrl}) }`,
		map[string]any{"email": email, "authUrl": authURL}, &data)
	return sendResult(g, err, data.Sent, "application user")
}

func sendResult(g *gqlError, err error, sent *string, who string) error {
	switch {
	case err != nil:
		return err
	case g == nil && sent == nil:
		return upstream.Garbage("an empty answer to the link request")
	case g == nil:
		return nil
	case g.Code == codeBadUserInput:
		return token.Rejected(ReasonConfigRejected, g.Code, fmt.Sprintf(
			"IdentityX refused to send the link (BAD_USER_INPUT): no %s has that e-mail address, or the app id or auth URL is not one IdentityX accepts", who))
	default:
		return otherError(g)
	}
}

// UserLogin exchanges an organisation user's link token for a long-lived
// OrgUser token (userLogin) and returns it: the answer's token.value, not
// its token.id.
func (e *Enroller) UserLogin(ctx context.Context, linkToken string) (string, error) {
	var data struct {
		Auth *authentication `json:"userLogin"`
	}
	g, err := call(ctx, e.hc, e.endpoint, nil,
		`mutation Login($token: String!) { userLogin(input: {token: $token}) { token { value } } }`,
		map[string]any{"token": linkToken}, &data)
	return loginResult(g, err, data.Auth)
}

// AppUserLogin exchanges an application user's link token, for
// application appID, for a long-lived AppUser token (loginAppUser) and
// returns it.
func (e *Enroller) AppUserLogin(ctx context.Context, appID, linkToken string) (string, error) {
	if err := checkAppID(appID); err != nil {
		return "", err
	}
	var data struct {
		Auth *authentication `json:"loginAppUser"`
	}
	g, err := call(ctx, e.hc, e.endpoint, map[string]string{"x-app-id": appID},
		`mutation Login($token: String!) { loginAppUser(input: {token: $token}) { token { value } } }`,
		map[string]any{"token": linkToken}, &data)
	return loginResult(g, err, data.Auth)
}

type authentication struct {
	Token *struct {
		Value string `json:"value"`
	} `json:"token"`
}

func loginResult(g *gqlError, err error, auth *authentication) (string, error) {
	switch {
	case err != nil:
		return "", err
	case g == nil && (auth == nil || auth.Token == nil || auth.Token.Value == ""):
		return "", upstream.Garbage("a login answer without token.value")
	case g == nil:
		if checkJWT(auth.Token.Value) != nil {
			return "", upstream.Garbage("a token.value with spaces in it")
		}
		return auth.Token.Value, nil
	case g.Code == codeUnauthenticated:
		return "", token.Rejected(token.ReasonCredentialsRejected, g.Code,
			"IdentityX refused the link token (UNAUTHENTICATED): it is not a link for this user kind or app, has expired (links last one hour) or was already used; send a new link")
	case g.Code == codeBadUserInput:
		return "", token.Rejected(ReasonConfigRejected, g.Code,
			"IdentityX refused the login (BAD_USER_INPUT): the app id names no IdentityX application")
	default:
		return "", otherError(g)
	}
}

// CreateAPIToken returns the permanent OrgUserApiToken of the organisation
// user behind orgUserToken, an OrgUser token (createActiveUserApiToken).
// IdentityX makes it once: while it lives, the same token comes back.
func (e *Enroller) CreateAPIToken(ctx context.Context, orgUserToken string) (string, error) {
	if err := checkJWT(orgUserToken); err != nil {
		return "", errors.New("the OrgUser token " + err.Error())
	}
	var data struct {
		Token *string `json:"createActiveUserApiToken"`
	}
	g, err := call(ctx, e.hc, e.endpoint, map[string]string{"Authorization": OrgUser.Word() + " " + orgUserToken},
		`mutation { createActiveUserApiToken }`, nil, &data)
	switch {
	case err != nil:
		return "", err
	case g == nil && (data.Token == nil || *data.Token == "" || checkJWT(*data.Token) != nil):
		return "", upstream.Garbage("an answer without an API token")
	case g == nil:
		return *data.Token, nil
	case g.Code == codeUnauthenticated:
		return "", token.Rejected(token.ReasonCredentialsRejected, g.Code,
			"IdentityX refused the OrgUser token (UNAUTHENTICATED): it was revoked, or it is not an OrgUser token (an API token cannot create one); log in again with a new link")
	default:
		return "", otherError(g)
	}
}

func checkAppID(appID string) error {
	if appID == "" || strings.ContainsFunc(appID, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return errors.New("the app id must be printable ASCII without spaces")
	}
	return nil
}
