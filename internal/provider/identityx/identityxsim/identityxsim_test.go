package identityxsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

const (
	orgEmail   = "ops@example.com"
	otherEmail = "second@example.com"
	appA       = "app-a"
	appB       = "app-b"
	appEmail   = "reader@example.com"
	authURL    = "https://reader.example.com/auth?from=mail"
)

const (
	qActiveUser    = `query { activeUser { id email } }`
	qActiveAppUser = `query { activeAppUser { id email } }`
	mSendLink      = `mutation Send($email: String!) { sendUserLoginLink(input: {email: $email}) }`
	mUserLogin     = `mutation Login($token: String!) { userLogin(input: {token: $token}) { token { id value } user { id email } } }`
	mUserLogout    = `mutation { userLogout }`
	mAPIToken      = `mutation { createActiveUserApiToken }`
	mSendAppLink   = `mutation SendApp($email: String!, $authUrl: String!) { sendAppUserLoginLink(input: {email: $email, authUrl: $authUrl}) }`
	mLoginAppUser  = `mutation LoginApp($token: String!) { loginAppUser(input: {token: $token}) { token { id value } user { id email } } }`
	mLogoutAppUser = `mutation LogoutApp($token: String!) { logoutAppUser(input: {token: $token}) }`
)

func newClock() *clocktest.Clock { return clocktest.New(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)) }

func testOptions(clock *clocktest.Clock) Options {
	o := Options{
		Users: []User{{ID: "org-1", Email: orgEmail}, {ID: "org-2", Email: otherEmail}},
		Apps: []App{
			{ID: appA, Users: []User{{ID: "app-user-1", Email: appEmail}}},
			{ID: appB, Users: []User{{ID: "app-user-2", Email: "other-reader@example.com"}}},
		},
	}
	if clock != nil {
		o.Now = clock.Now
	}
	return o
}

func start(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	sim := New(o)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	return sim, ts.URL + "/graphql"
}

// respError is one entry of a GraphQL "errors" list as a client sees it.
type respError struct {
	Message    string `json:"message"`
	Extensions struct {
		Code string `json:"code"`
	} `json:"extensions"`
}

type gqlResp struct {
	status int
	raw    []byte
	Data   json.RawMessage `json:"data"`
	Errors []respError     `json:"errors"`
}

// code is the first error's extensions.code, or "" when the answer has no errors.
func (r gqlResp) code() string {
	if len(r.Errors) == 0 {
		return ""
	}
	return r.Errors[0].Extensions.Code
}

type headers map[string]string

// do posts a GraphQL request with plain net/http, as any client would.
func do(t *testing.T, endpoint, query string, vars map[string]any, h headers) gqlResp {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h {
		req.Header.Set(k, v)
	}
	return send(t, req)
}

func send(t *testing.T, req *http.Request) gqlResp {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := gqlResp{status: res.StatusCode, raw: raw}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, raw)
	}
	return r
}

// field decodes data.<name> into v.
func (r gqlResp) field(t *testing.T, name string, v any) {
	t.Helper()
	var data map[string]json.RawMessage
	if err := json.Unmarshal(r.Data, &data); err != nil || data == nil {
		t.Fatalf("data is not an object: %s", r.raw)
	}
	if err := json.Unmarshal(data[name], v); err != nil {
		t.Fatalf("data.%s: %v: %s", name, err, r.raw)
	}
}

// mustOK fails unless the answer is HTTP 200 without errors.
func (r gqlResp) mustOK(t *testing.T) gqlResp {
	t.Helper()
	if r.status != http.StatusOK || len(r.Errors) != 0 {
		t.Fatalf("got status %d body %s, want 200 without errors", r.status, r.raw)
	}
	return r
}

// mustFail fails unless the answer is HTTP 200 with a first error of the given code.
func (r gqlResp) mustFail(t *testing.T, code string) gqlResp {
	t.Helper()
	if r.status != http.StatusOK || r.code() != code {
		t.Fatalf("got status %d code %q body %s, want 200 with code %q", r.status, r.code(), r.raw, code)
	}
	return r
}

type userOut struct {
	ID    string `json:"id"`
	Email string `json:"email"`
}

type authOut struct {
	Token struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	} `json:"token"`
	User userOut `json:"user"`
}

func activeUser(t *testing.T, endpoint string, h headers) gqlResp {
	t.Helper()
	return do(t, endpoint, qActiveUser, nil, h)
}

func TestProtectedQueriesAcceptEachCredentialKind(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	tests := []struct {
		name      string
		query     string
		field     string
		h         headers
		wantID    string
		wantEmail string
	}{
		{"OrgUser", qActiveUser, "activeUser",
			headers{"Authorization": "OrgUser " + sim.IssueOrgUserToken(orgEmail)}, "org-1", orgEmail},
		{"OrgUserApiToken", qActiveUser, "activeUser",
			headers{"Authorization": "OrgUserApiToken " + sim.IssueAPIToken(otherEmail)}, "org-2", otherEmail},
		{"AppUser", qActiveAppUser, "activeAppUser",
			headers{"Authorization": "AppUser " + sim.IssueAppUserToken(appA, appEmail), "x-app-id": appA}, "app-user-1", appEmail},
		{"OrgUser with x-org-id and email in another case", qActiveUser, "activeUser",
			headers{"Authorization": "OrgUser " + sim.IssueOrgUserToken("OPS@Example.com"), "x-org-id": "org"}, "org-1", orgEmail},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := do(t, endpoint, tc.query, nil, tc.h).mustOK(t)
			var u userOut
			r.field(t, tc.field, &u)
			if u.ID != tc.wantID || u.Email != tc.wantEmail {
				t.Errorf("got user %+v, want id %q email %q", u, tc.wantID, tc.wantEmail)
			}
		})
	}
}

func TestProtectedQueriesRefuse(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	other := New(testOptions(nil)) // same users, different signing key
	org := sim.IssueOrgUserToken(orgEmail)
	api := sim.IssueAPIToken(orgEmail)
	app := sim.IssueAppUserToken(appA, appEmail)
	revokedOrg := sim.IssueOrgUserToken(orgEmail)
	revokedAPI := sim.IssueAPIToken(otherEmail)
	revokedApp := sim.IssueAppUserToken(appA, appEmail)
	for _, tok := range []string{revokedOrg, revokedAPI, revokedApp} {
		if !sim.Revoke(tok) {
			t.Fatal("Revoke of a live token: got false, want true")
		}
	}
	// A token with the right claims signed by someone else must not pass.
	forged, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"kind": "OrgUser", "jti": "0123456789abcdef01234567", "sub": "org-1",
	}).SignedString([]byte("not the key"))
	if err != nil {
		t.Fatal(err)
	}
	// An unsigned ("alg: none") token with a live token's claims must not pass either.
	unverified, _, err := jwt.NewParser().ParseUnverified(org, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, unverified.Claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		query    string
		h        headers
		wantCode string
		wantMsg  string
		wantData string
	}{
		{"no Authorization", qActiveUser, headers{}, "BAD_USER_INPUT", msgNoAuth, "null"},
		{"Bearer word", qActiveUser, headers{"Authorization": "Bearer " + org}, "UNAUTHENTICATED", msgBadWord, "null"},
		{"Bearer before OrgUser", qActiveUser, headers{"Authorization": "Bearer OrgUser " + org}, "UNAUTHENTICATED", msgBadWord, "null"},
		{"Bearer before AppUser", qActiveAppUser,
			headers{"Authorization": "Bearer AppUser " + app, "x-app-id": appA}, "UNAUTHENTICATED", msgBadWord, `{"activeAppUser":null}`},
		{"Bearer before OrgUserApiToken", qActiveUser, headers{"Authorization": "Bearer OrgUserApiToken " + api}, "UNAUTHENTICATED", msgBadWord, "null"},
		{"word in lower case", qActiveUser, headers{"Authorization": "orguser " + org}, "UNAUTHENTICATED", msgBadWord, "null"},
		{"bare JWT", qActiveUser, headers{"Authorization": org}, "UNAUTHENTICATED", msgBadWord, "null"},
		{"word without token", qActiveUser, headers{"Authorization": "OrgUser"}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"two spaces", qActiveUser, headers{"Authorization": "OrgUser  " + org}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"AppUser token as OrgUser", qActiveUser, headers{"Authorization": "OrgUser " + app}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"OrgUser token as OrgUserApiToken", qActiveUser, headers{"Authorization": "OrgUserApiToken " + org}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"API token as OrgUser", qActiveUser, headers{"Authorization": "OrgUser " + api}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"OrgUser token as AppUser", qActiveAppUser,
			headers{"Authorization": "AppUser " + org, "x-app-id": appA}, "UNAUTHENTICATED", msgBadToken, `{"activeAppUser":null}`},
		{"AppUser on activeUser", qActiveUser,
			headers{"Authorization": "AppUser " + app, "x-app-id": appA}, "UNAUTHENTICATED", msgWrongType, "null"},
		{"OrgUser on activeAppUser", qActiveAppUser,
			headers{"Authorization": "OrgUser " + org, "x-app-id": appA}, "UNAUTHENTICATED", msgWrongType, `{"activeAppUser":null}`},
		{"AppUser without x-app-id", qActiveAppUser, headers{"Authorization": "AppUser " + app}, "BAD_USER_INPUT", msgNoApp, `{"activeAppUser":null}`},
		{"AppUser with unknown x-app-id", qActiveAppUser,
			headers{"Authorization": "AppUser " + app, "x-app-id": "nope"}, "BAD_USER_INPUT", msgNoApp, `{"activeAppUser":null}`},
		{"AppUser with another app's x-app-id", qActiveAppUser,
			headers{"Authorization": "AppUser " + app, "x-app-id": appB}, "FORBIDDEN", msgAppMismatch, `{"activeAppUser":null}`},
		{"revoked OrgUser", qActiveUser, headers{"Authorization": "OrgUser " + revokedOrg}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"revoked OrgUserApiToken", qActiveUser, headers{"Authorization": "OrgUserApiToken " + revokedAPI}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"revoked AppUser", qActiveAppUser,
			headers{"Authorization": "AppUser " + revokedApp, "x-app-id": appA}, "UNAUTHENTICATED", msgBadToken, `{"activeAppUser":null}`},
		{"forged signature", qActiveUser, headers{"Authorization": "OrgUser " + forged}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"alg none", qActiveUser, headers{"Authorization": "OrgUser " + none}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"token of another server", qActiveUser,
			headers{"Authorization": "OrgUser " + other.IssueOrgUserToken(orgEmail)}, "UNAUTHENTICATED", msgBadToken, "null"},
		{"not a JWT", qActiveUser, headers{"Authorization": "OrgUser abc"}, "UNAUTHENTICATED", msgBadToken, "null"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := do(t, endpoint, tc.query, nil, tc.h).mustFail(t, tc.wantCode)
			if got := r.Errors[0].Message; got != tc.wantMsg {
				t.Errorf("got message %q, want %q", got, tc.wantMsg)
			}
			if got := string(r.Data); got != tc.wantData {
				t.Errorf("got data %s, want %s", got, tc.wantData)
			}
			if strings.Contains(string(r.raw), "eyJ") {
				t.Errorf("answer echoes a token: %s", r.raw)
			}
		})
	}
}

func TestStrayAuthorizationDoesNotBreakPublicMutation(t *testing.T) {
	t.Parallel()
	_, endpoint := start(t, testOptions(nil))
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, headers{"Authorization": "Bearer junk"}).mustOK(t)
}

func TestOrgUserEnrolment(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(newClock()))

	var sent *string
	do(t, endpoint, mSendLink, map[string]any{"email": "Ops@Example.com"}, nil).mustOK(t).field(t, "sendUserLoginLink", &sent)
	if sent == nil || *sent != "ok" {
		t.Fatalf("sendUserLoginLink: got %v, want \"ok\"", sent)
	}
	box := sim.Outbox()
	if len(box) != 1 {
		t.Fatalf("got %d mails, want 1", len(box))
	}
	m := box[0]
	if m.To != orgEmail || m.AppID != "" || !strings.HasPrefix(m.Link, DefaultUserLoginURL+"?token=") || !strings.Contains(m.Body, m.Link) {
		t.Fatalf("got mail %+v, want one to %s linking to %s with the link in the body", m, orgEmail, DefaultUserLoginURL)
	}
	link, ok := sim.LastLinkToken(orgEmail)
	if !ok {
		t.Fatal("LastLinkToken: got no token, want one")
	}
	u, _ := url.Parse(m.Link)
	if got := u.Query().Get("token"); got != link {
		t.Fatalf("LastLinkToken: got %q, want the link's token %q", link, got)
	}
	// A link token is not a credential.
	activeUser(t, endpoint, headers{"Authorization": "OrgUser " + link}).mustFail(t, "UNAUTHENTICATED")

	var login authOut
	do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil).mustOK(t).field(t, "userLogin", &login)
	if login.User != (userOut{ID: "org-1", Email: orgEmail}) {
		t.Errorf("userLogin user: got %+v, want org-1 %s", login.User, orgEmail)
	}
	if login.Token.ID == "" || login.Token.ID == login.Token.Value {
		t.Fatalf("userLogin token: got id %q value %q, want a record id distinct from the JWT", login.Token.ID, login.Token.Value)
	}
	if sim.Logins() != 1 {
		t.Errorf("Logins: got %d, want 1", sim.Logins())
	}

	t.Run("link is single-use", func(t *testing.T) {
		do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil).mustFail(t, "UNAUTHENTICATED")
	})
	t.Run("token.value is the credential", func(t *testing.T) {
		var got userOut
		activeUser(t, endpoint, headers{"Authorization": "OrgUser " + login.Token.Value}).mustOK(t).field(t, "activeUser", &got)
		if got.Email != orgEmail {
			t.Errorf("activeUser: got %+v, want %s", got, orgEmail)
		}
	})
	t.Run("token.id is not", func(t *testing.T) {
		activeUser(t, endpoint, headers{"Authorization": "OrgUser " + login.Token.ID}).mustFail(t, "UNAUTHENTICATED")
	})

	orgH := headers{"Authorization": "OrgUser " + login.Token.Value}
	var api1, api2 string
	do(t, endpoint, mAPIToken, nil, orgH).mustOK(t).field(t, "createActiveUserApiToken", &api1)
	do(t, endpoint, mAPIToken, nil, orgH).mustOK(t).field(t, "createActiveUserApiToken", &api2)
	if api1 == "" || api1 != api2 {
		t.Fatalf("createActiveUserApiToken twice: got %q then %q, want the same token", api1, api2)
	}
	if got := sim.IssueAPIToken(orgEmail); got != api1 {
		t.Errorf("IssueAPIToken: got a different token than createActiveUserApiToken, want the same")
	}
	apiH := headers{"Authorization": "OrgUserApiToken " + api1}
	activeUser(t, endpoint, apiH).mustOK(t)
	t.Run("API token cannot mint API tokens", func(t *testing.T) {
		do(t, endpoint, mAPIToken, nil, apiH).mustFail(t, "UNAUTHENTICATED")
	})
	t.Run("createActiveUserApiToken without credential", func(t *testing.T) {
		if r := do(t, endpoint, mAPIToken, nil, nil).mustFail(t, "BAD_USER_INPUT"); string(r.Data) != "null" {
			t.Errorf("got data %s, want null", r.Data)
		}
	})

	var out string
	do(t, endpoint, mUserLogout, nil, orgH).mustOK(t).field(t, "userLogout", &out)
	if out != "ok" {
		t.Errorf("userLogout: got %q, want \"ok\"", out)
	}
	activeUser(t, endpoint, orgH).mustFail(t, "UNAUTHENTICATED")
	do(t, endpoint, mUserLogout, nil, orgH).mustFail(t, "UNAUTHENTICATED")
	// The API token outlives the session that created it.
	activeUser(t, endpoint, apiH).mustOK(t)

	// Once revoked, the API token is refused and the next call makes a new one.
	if !sim.Revoke(api1) {
		t.Fatal("Revoke API token: got false, want true")
	}
	if sim.Revoke(api1) {
		t.Error("Revoke twice: got true, want false")
	}
	activeUser(t, endpoint, apiH).mustFail(t, "UNAUTHENTICATED")
	var api3 string
	do(t, endpoint, mAPIToken, nil, headers{"Authorization": "OrgUser " + sim.IssueOrgUserToken(orgEmail)}).
		mustOK(t).field(t, "createActiveUserApiToken", &api3)
	if api3 == "" || api3 == api1 {
		t.Fatalf("createActiveUserApiToken after revocation: got %q, want a new token", api3)
	}
	activeUser(t, endpoint, headers{"Authorization": "OrgUserApiToken " + api3}).mustOK(t)
}

func TestAppUserEnrolment(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(newClock()))
	vars := map[string]any{"email": appEmail, "authUrl": authURL}

	t.Run("send without x-app-id", func(t *testing.T) {
		r := do(t, endpoint, mSendAppLink, vars, nil).mustFail(t, "BAD_USER_INPUT")
		if string(r.Data) != `{"sendAppUserLoginLink":null}` {
			t.Errorf("got data %s, want the field null", r.Data)
		}
	})
	do(t, endpoint, mSendAppLink, vars, headers{"x-app-id": appA}).mustOK(t)
	box := sim.Outbox()
	if len(box) != 1 {
		t.Fatalf("got %d mails, want 1", len(box))
	}
	m := box[0]
	u, err := url.Parse(m.Link)
	if err != nil {
		t.Fatal(err)
	}
	if m.To != appEmail || m.AppID != appA || u.Host != "reader.example.com" || u.Path != "/auth" || u.Query().Get("from") != "mail" {
		t.Fatalf("got mail %+v, want one to %s for %s linking to %s", m, appEmail, appA, authURL)
	}
	link, ok := sim.LastLinkToken(appEmail)
	if !ok || link != u.Query().Get("token") {
		t.Fatalf("LastLinkToken: got %q %v, want the link's token", link, ok)
	}

	t.Run("login without x-app-id", func(t *testing.T) {
		do(t, endpoint, mLoginAppUser, map[string]any{"token": link}, nil).mustFail(t, "BAD_USER_INPUT")
	})
	t.Run("login with another app", func(t *testing.T) {
		do(t, endpoint, mLoginAppUser, map[string]any{"token": link}, headers{"x-app-id": appB}).mustFail(t, "UNAUTHENTICATED")
	})
	t.Run("org login with an app link", func(t *testing.T) {
		do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil).mustFail(t, "UNAUTHENTICATED")
	})

	// The refused attempts above did not use the link up.
	var login authOut
	do(t, endpoint, mLoginAppUser, map[string]any{"token": link}, headers{"x-app-id": appA}).mustOK(t).field(t, "loginAppUser", &login)
	if login.User != (userOut{ID: "app-user-1", Email: appEmail}) || login.Token.ID == "" || login.Token.ID == login.Token.Value {
		t.Fatalf("loginAppUser: got %+v, want app-user-1 and a token whose id is not its value", login)
	}
	do(t, endpoint, mLoginAppUser, map[string]any{"token": link}, headers{"x-app-id": appA}).mustFail(t, "UNAUTHENTICATED")

	appH := headers{"Authorization": "AppUser " + login.Token.Value, "x-app-id": appA}
	var got userOut
	do(t, endpoint, qActiveAppUser, nil, appH).mustOK(t).field(t, "activeAppUser", &got)
	if got.Email != appEmail {
		t.Errorf("activeAppUser: got %+v, want %s", got, appEmail)
	}
	do(t, endpoint, qActiveAppUser, nil, headers{"Authorization": "AppUser " + login.Token.ID, "x-app-id": appA}).mustFail(t, "UNAUTHENTICATED")
	do(t, endpoint, qActiveAppUser, nil, headers{"Authorization": "AppUser " + login.Token.Value}).mustFail(t, "BAD_USER_INPUT")

	t.Run("logout needs the token's own app", func(t *testing.T) {
		do(t, endpoint, mLogoutAppUser, map[string]any{"token": login.Token.Value}, headers{"x-app-id": appB}).mustFail(t, "UNAUTHENTICATED")
		do(t, endpoint, mLogoutAppUser, map[string]any{"token": login.Token.Value}, nil).mustFail(t, "BAD_USER_INPUT")
		do(t, endpoint, qActiveAppUser, nil, appH).mustOK(t)
	})
	var out string
	do(t, endpoint, mLogoutAppUser, map[string]any{"token": login.Token.Value}, headers{"x-app-id": appA}).mustOK(t).field(t, "logoutAppUser", &out)
	if out != "ok" {
		t.Errorf("logoutAppUser: got %q, want \"ok\"", out)
	}
	do(t, endpoint, qActiveAppUser, nil, appH).mustFail(t, "UNAUTHENTICATED")
	// Logging out again is harmless.
	do(t, endpoint, mLogoutAppUser, map[string]any{"token": login.Token.Value}, headers{"x-app-id": appA}).mustOK(t)
}

func TestAppLinkRedirectTo(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	q := `mutation { sendAppUserLoginLink(input: {email: "reader@example.com", authUrl: "http://localhost:8080/auth", source: "cli", redirectTo: "/home", appContextId: "x"}) }`
	do(t, endpoint, q, nil, headers{"x-app-id": appA}).mustOK(t)
	u, err := url.Parse(sim.Outbox()[0].Link)
	if err != nil {
		t.Fatal(err)
	}
	if u.Host != "localhost:8080" || u.Query().Get("redirectTo") != "/home" || u.Query().Get("token") == "" {
		t.Errorf("got link %s, want localhost:8080/auth with redirectTo and token", u)
	}
}

func TestLinkExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ttl     time.Duration
		advance time.Duration
		wantOK  bool
	}{
		{"default TTL, just in time", 0, 59 * time.Minute, true},
		{"default TTL, too late", 0, 61 * time.Minute, false},
		{"custom TTL, in time", 5 * time.Minute, 4 * time.Minute, true},
		{"custom TTL, too late", 5 * time.Minute, 6 * time.Minute, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newClock()
			o := testOptions(clock)
			o.LinkTTL = tc.ttl
			sim, endpoint := start(t, o)
			do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
			do(t, endpoint, mSendAppLink, map[string]any{"email": appEmail, "authUrl": authURL}, headers{"x-app-id": appA}).mustOK(t)
			orgLink, _ := sim.LastLinkToken(orgEmail)
			appLink, _ := sim.LastLinkToken(appEmail)
			clock.Advance(tc.advance)
			org := do(t, endpoint, mUserLogin, map[string]any{"token": orgLink}, nil)
			app := do(t, endpoint, mLoginAppUser, map[string]any{"token": appLink}, headers{"x-app-id": appA})
			if tc.wantOK {
				org.mustOK(t)
				app.mustOK(t)
				return
			}
			if r := org.mustFail(t, "UNAUTHENTICATED"); string(r.Data) != "null" || r.Errors[0].Message != msgBadLink {
				t.Errorf("got data %s message %q, want null and %q", r.Data, r.Errors[0].Message, msgBadLink)
			}
			app.mustFail(t, "UNAUTHENTICATED")
		})
	}
}

func TestLongLivedTokensDoNotExpire(t *testing.T) {
	t.Parallel()
	clock := newClock()
	sim, endpoint := start(t, testOptions(clock))
	org := sim.IssueOrgUserToken(orgEmail)
	api := sim.IssueAPIToken(orgEmail)
	app := sim.IssueAppUserToken(appA, appEmail)
	clock.Advance(10 * 365 * 24 * time.Hour)
	activeUser(t, endpoint, headers{"Authorization": "OrgUser " + org}).mustOK(t)
	activeUser(t, endpoint, headers{"Authorization": "OrgUserApiToken " + api}).mustOK(t)
	do(t, endpoint, qActiveAppUser, nil, headers{"Authorization": "AppUser " + app, "x-app-id": appA}).mustOK(t)
}

func TestTokenClaims(t *testing.T) {
	t.Parallel()
	clock := newClock()
	sim, endpoint := start(t, testOptions(clock))
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
	link, _ := sim.LastLinkToken(orgEmail)
	tests := []struct {
		name    string
		token   string
		kind    string
		iss     string
		wantExp bool
	}{
		{"OrgUser", sim.IssueOrgUserToken(orgEmail), "OrgUser", "", false},
		{"OrgUserApiToken", sim.IssueAPIToken(orgEmail), "OrgUserApiToken", "", false},
		{"AppUser", sim.IssueAppUserToken(appA, appEmail), "AppUser", appA, false},
		{"link", link, "OrgUserLoginLink", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, _, err := jwt.NewParser().ParseUnverified(tc.token, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			c := tok.Claims.(jwt.MapClaims)
			if tok.Method.Alg() != "HS256" || c["jti"] == "" || c["kind"] != tc.kind {
				t.Errorf("got alg %s claims %v, want HS256 with a jti and kind %s", tok.Method.Alg(), c, tc.kind)
			}
			if iss, _ := c["iss"].(string); iss != tc.iss {
				t.Errorf("got iss %q, want %q", iss, tc.iss)
			}
			exp, err := c.GetExpirationTime()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !tc.wantExp && exp != nil:
				t.Errorf("got exp %v, want none", exp)
			case tc.wantExp && (exp == nil || !exp.Equal(clock.Now().Add(time.Hour))):
				t.Errorf("got exp %v, want %v", exp, clock.Now().Add(time.Hour))
			}
		})
	}
}

func TestSingleUseUnderConcurrency(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
	link, _ := sim.LastLinkToken(orgEmail)
	const n = 16
	results := make(chan gqlResp, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { results <- do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil) })
	}
	wg.Wait()
	close(results)
	wins := 0
	for r := range results {
		if r.code() == "" {
			wins++
		}
	}
	if wins != 1 {
		t.Errorf("got %d successful logins with one link, want 1", wins)
	}
}

func TestInputErrors(t *testing.T) {
	t.Parallel()
	_, endpoint := start(t, testOptions(nil))
	tests := []struct {
		name     string
		query    string
		vars     map[string]any
		h        headers
		wantData string
	}{
		{"unknown org user", mSendLink, map[string]any{"email": "nobody@example.com"}, nil, `{"sendUserLoginLink":null}`},
		{"app user is not an org user", mSendLink, map[string]any{"email": appEmail}, nil, `{"sendUserLoginLink":null}`},
		{"org user is not an app user", mSendAppLink, map[string]any{"email": otherEmail, "authUrl": authURL},
			headers{"x-app-id": appA}, `{"sendAppUserLoginLink":null}`},
		{"user of another app", mSendAppLink, map[string]any{"email": appEmail, "authUrl": authURL},
			headers{"x-app-id": appB}, `{"sendAppUserLoginLink":null}`},
		{"unknown app", mSendAppLink, map[string]any{"email": appEmail, "authUrl": authURL},
			headers{"x-app-id": "nope"}, `{"sendAppUserLoginLink":null}`},
		{"relative authUrl", mSendAppLink, map[string]any{"email": appEmail, "authUrl": "/auth"},
			headers{"x-app-id": appA}, `{"sendAppUserLoginLink":null}`},
		{"non-http authUrl", mSendAppLink, map[string]any{"email": appEmail, "authUrl": "javascript:alert(1)"},
			headers{"x-app-id": appA}, `{"sendAppUserLoginLink":null}`},
		{"login with unknown app", mLoginAppUser, map[string]any{"token": "x"}, headers{"x-app-id": "nope"}, "null"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := do(t, endpoint, tc.query, tc.vars, tc.h).mustFail(t, "BAD_USER_INPUT")
			if string(r.Data) != tc.wantData {
				t.Errorf("got data %s, want %s", r.Data, tc.wantData)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	_, endpoint := start(t, testOptions(nil))
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		wantStatus  int
		wantCode    string
	}{
		{"GET", http.MethodGet, "", "", http.StatusMethodNotAllowed, "BAD_REQUEST"},
		{"form content type", http.MethodPost, "application/x-www-form-urlencoded", `query=%7BactiveUser%7Bid%7D%7D`, http.StatusBadRequest, "BAD_REQUEST"},
		{"text content type", http.MethodPost, "text/plain", `{"query":"{ activeUser { id } }"}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"no content type", http.MethodPost, "", `{"query":"{ activeUser { id } }"}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"not JSON", http.MethodPost, "application/json", `query { activeUser { id } }`, http.StatusBadRequest, "BAD_REQUEST"},
		{"JSON array (batch)", http.MethodPost, "application/json", `[{"query":"{ activeUser { id } }"}]`, http.StatusBadRequest, "BAD_REQUEST"},
		{"two JSON values", http.MethodPost, "application/json", `{"query":"{ activeUser { id } }"} {}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"no query", http.MethodPost, "application/json", `{"variables":{}}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"query under another name", http.MethodPost, "application/json", `{"q":"{ activeUser { id } }"}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"variables not an object", http.MethodPost, "application/json", `{"query":"{ activeUser { id } }","variables":[1]}`, http.StatusBadRequest, "BAD_REQUEST"},
		{"syntax error", http.MethodPost, "application/json", `{"query":"{ activeUser { id "}`, http.StatusBadRequest, "GRAPHQL_PARSE_FAILED"},
		{"unknown field", http.MethodPost, "application/json", `{"query":"{ currentUser { id } }"}`, http.StatusBadRequest, "GRAPHQL_VALIDATION_FAILED"},
		{"wrong input field", http.MethodPost, "application/json",
			`{"query":"mutation { sendUserLoginLink(input: {mail: \"ops@example.com\"}) }"}`, http.StatusBadRequest, "GRAPHQL_VALIDATION_FAILED"},
		{"input not wrapped", http.MethodPost, "application/json",
			`{"query":"mutation { sendUserLoginLink(email: \"ops@example.com\") }"}`, http.StatusBadRequest, "GRAPHQL_VALIDATION_FAILED"},
		{"missing variable", http.MethodPost, "application/json",
			`{"query":"mutation L($token: String!) { userLogin(input: {token: $token}) { token { value } } }"}`, http.StatusBadRequest, "GRAPHQL_VALIDATION_FAILED"},
		{"token has no user field", http.MethodPost, "application/json",
			`{"query":"mutation { userLogin(input: {token: \"x\"}) { token { value user } } }"}`, http.StatusBadRequest, "GRAPHQL_VALIDATION_FAILED"},
		{"variable of the wrong type", http.MethodPost, "application/json",
			`{"query":"mutation L($token: String!) { userLogin(input: {token: $token}) { token { value } } }","variables":{"token":5}}`,
			http.StatusBadRequest, "BAD_USER_INPUT"},
		{"unknown operationName", http.MethodPost, "application/json",
			`{"query":"query A { activeUser { id } }","operationName":"B"}`, http.StatusBadRequest, "BAD_REQUEST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequest(tc.method, endpoint, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			r := send(t, req)
			if r.status != tc.wantStatus || r.code() != tc.wantCode {
				t.Errorf("got status %d code %q (%s), want %d %q", r.status, r.code(), r.raw, tc.wantStatus, tc.wantCode)
			}
			if r.Data != nil {
				t.Errorf("got data %s, want no data member", r.Data)
			}
		})
	}
	t.Run("unknown path", func(t *testing.T) {
		t.Parallel()
		res, err := http.Post(strings.TrimSuffix(endpoint, "/graphql")+"/api/graphql", "application/json", strings.NewReader(`{"query":"{ activeUser { id } }"}`))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("got status %d, want 404", res.StatusCode)
		}
	})
	t.Run("content type with charset and operationName", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequest(http.MethodPost, endpoint,
			strings.NewReader(`{"query":"query A { activeUser { id } } query B { activeAppUser { id } }","operationName":"A"}`))
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		r := send(t, req).mustFail(t, "BAD_USER_INPUT")
		if r.Errors[0].Message != msgNoAuth {
			t.Errorf("got %q, want the activeUser error %q", r.Errors[0].Message, msgNoAuth)
		}
	})
}

func TestFaults(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	token := sim.IssueOrgUserToken(orgEmail)
	post := func(ctx context.Context) (*http.Response, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(`{"query":"{ activeUser { id } }"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "OrgUser "+token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		return res, b, err
	}

	// Faults are server-wide, so these steps run in order.
	sim.SetFault(Fault{Status: http.StatusServiceUnavailable, Body: "maintenance"})
	res, body, err := post(context.Background())
	if err != nil || res.StatusCode != http.StatusServiceUnavailable || string(body) != "maintenance" {
		t.Fatalf("status fault: got %v %v %q, want 503 \"maintenance\"", res, err, body)
	}
	sim.SetFault(Fault{Status: http.StatusBadGateway})
	if res, body, _ = post(context.Background()); res.StatusCode != http.StatusBadGateway || string(body) != "Bad Gateway" {
		t.Fatalf("status fault without body: got %d %q, want 502 \"Bad Gateway\"", res.StatusCode, body)
	}

	sim.SetFault(Fault{Garbage: true})
	res, body, err = post(context.Background())
	if err != nil || res.StatusCode != http.StatusOK || json.Valid(body) {
		t.Fatalf("garbage fault: got %v %v %q, want 200 with a non-JSON body", res, err, body)
	}

	sim.SetFault(Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, _, err = post(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang fault: got %v, want the client's deadline exceeded", err)
	}

	// A hanging request is let go when the fault is replaced.
	hung := make(chan int, 1)
	go func() {
		res, _, err := post(context.Background())
		if err != nil {
			hung <- 0
			return
		}
		hung <- res.StatusCode
	}()
	for sim.Queries() < 5 { // wait until the request has reached the handler
		runtime.Gosched()
	}
	sim.SetFault(Fault{})
	if got := <-hung; got != http.StatusServiceUnavailable {
		t.Fatalf("hang released by SetFault: got status %d, want 503", got)
	}

	if res, body, err = post(context.Background()); err != nil || res.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"activeUser"`)) {
		t.Fatalf("cleared fault: got %v %v %s, want the normal answer", res, err, body)
	}
	if got := sim.Queries(); got != 6 {
		t.Errorf("Queries: got %d, want 6 (faulted requests count too)", got)
	}
	if got := sim.AuthFailures(); got != 0 {
		t.Errorf("AuthFailures: got %d, want 0", got)
	}
}

func TestCounters(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	org := sim.IssueOrgUserToken(orgEmail)
	activeUser(t, endpoint, headers{"Authorization": "OrgUser " + org}).mustOK(t)                     // ok
	activeUser(t, endpoint, headers{"Authorization": "Bearer " + org}).mustFail(t, "UNAUTHENTICATED") // failure 1
	activeUser(t, endpoint, nil).mustFail(t, "BAD_USER_INPUT")                                        // failure 2
	do(t, endpoint, mUserLogin, map[string]any{"token": org}, nil).mustFail(t, "UNAUTHENTICATED")     // failure 3: not a link
	do(t, endpoint, mSendLink, map[string]any{"email": "x@example.com"}, nil).mustFail(t, "BAD_USER_INPUT")
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
	link, _ := sim.LastLinkToken(orgEmail)
	do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil).mustOK(t)
	if got := sim.Queries(); got != 7 {
		t.Errorf("Queries: got %d, want 7", got)
	}
	if got := sim.AuthFailures(); got != 3 {
		t.Errorf("AuthFailures: got %d, want 3", got)
	}
	if got := sim.Logins(); got != 1 {
		t.Errorf("Logins: got %d, want 1", got)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, Options{})
	activeUser(t, endpoint, headers{"Authorization": "OrgUser " + sim.IssueOrgUserToken(DefaultOrgUserEmail)}).mustOK(t)
	var u userOut
	do(t, endpoint, qActiveAppUser, nil, headers{
		"Authorization": "AppUser " + sim.IssueAppUserToken(DefaultAppID, DefaultAppUserEmail),
		"x-app-id":      DefaultAppID,
	}).mustOK(t).field(t, "activeAppUser", &u)
	if u != (userOut{ID: DefaultAppUserID, Email: DefaultAppUserEmail}) {
		t.Errorf("got %+v, want the default app user", u)
	}
	if _, ok := sim.LastLinkToken(DefaultOrgUserEmail); ok {
		t.Error("LastLinkToken before any mail: got a token, want none")
	}

	// Users without an id get one; an empty non-nil list means no users.
	s2 := New(Options{Users: []User{{Email: "a@example.com"}}, Apps: []App{}})
	if s2.mustOrgUser("a@example.com").ID == "" {
		t.Error("generated id: got empty, want a random id")
	}
	if len(s2.apps) != 0 {
		t.Errorf("got %d apps, want 0", len(s2.apps))
	}
}

func TestPanicsOnMisuse(t *testing.T) {
	t.Parallel()
	sim := New(testOptions(nil))
	tests := []struct {
		name string
		f    func()
	}{
		{"IssueOrgUserToken unknown user", func() { sim.IssueOrgUserToken("nobody@example.com") }},
		{"IssueAPIToken unknown user", func() { sim.IssueAPIToken("nobody@example.com") }},
		{"IssueAppUserToken unknown app", func() { sim.IssueAppUserToken("nope", appEmail) }},
		{"IssueAppUserToken user of another app", func() { sim.IssueAppUserToken(appB, appEmail) }},
		{"duplicate e-mail", func() { New(Options{Users: []User{{Email: "a@x"}, {Email: "A@x"}}}) }},
		{"empty e-mail", func() { New(Options{Users: []User{{ID: "1"}}}) }},
		{"duplicate app", func() { New(Options{Apps: []App{{ID: "a"}, {ID: "a"}}}) }},
		{"empty app id", func() { New(Options{Apps: []App{{}}}) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Error("got no panic, want one")
				}
			}()
			tc.f()
		})
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	clock := newClock()
	sim, endpoint := start(t, testOptions(clock))
	if sim.Revoke("garbage") {
		t.Error("Revoke(garbage): got true, want false")
	}
	if New(testOptions(nil)).Revoke(sim.IssueOrgUserToken(orgEmail)) {
		t.Error("Revoke of another server's token: got true, want false")
	}
	// An unused link can be revoked, even after it expired.
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
	link, _ := sim.LastLinkToken(orgEmail)
	clock.Advance(2 * time.Hour)
	if !sim.Revoke(link) {
		t.Error("Revoke of an expired unused link: got false, want true")
	}
	do(t, endpoint, mSendLink, map[string]any{"email": orgEmail}, nil).mustOK(t)
	link, _ = sim.LastLinkToken(orgEmail)
	sim.Revoke(link)
	do(t, endpoint, mUserLogin, map[string]any{"token": link}, nil).mustFail(t, "UNAUTHENTICATED")
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	sim, endpoint := start(t, testOptions(nil))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			org := sim.IssueOrgUserToken(orgEmail)
			h := headers{"Authorization": "OrgUser " + org}
			activeUser(t, endpoint, h).mustOK(t)
			var api string
			do(t, endpoint, mAPIToken, nil, h).mustOK(t).field(t, "createActiveUserApiToken", &api)
			activeUser(t, endpoint, headers{"Authorization": "OrgUserApiToken " + api}).mustOK(t)
			do(t, endpoint, mSendAppLink, map[string]any{"email": appEmail, "authUrl": authURL}, headers{"x-app-id": appA}).mustOK(t)
			_ = sim.Outbox()
			if i%2 == 0 {
				sim.Revoke(org)
			} else {
				do(t, endpoint, mUserLogout, nil, h).mustOK(t)
			}
			activeUser(t, endpoint, h).mustFail(t, "UNAUTHENTICATED")
			if i == 0 {
				sim.SetFault(Fault{})
			}
		})
	}
	wg.Wait()
	if got := len(sim.Outbox()); got != 8 {
		t.Errorf("got %d mails, want 8", got)
	}
	// Every worker asked for the API token of the same user: they all got one token.
	var first string
	for range 3 {
		got := sim.IssueAPIToken(orgEmail)
		if first != "" && got != first {
			t.Fatalf("IssueAPIToken: got two tokens for one user, want one")
		}
		first = got
	}
}
