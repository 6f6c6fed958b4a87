package identityx_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/identityx"
	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
	"github.com/tokenvend/tokenvend/internal/token"
)

func newEnroller(t *testing.T, endpoint string) *identityx.Enroller {
	t.Helper()
	e, err := identityx.NewEnroller(endpoint, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// linkToken reads the link token of the last mail to email from the
// simulator's outbox.
func linkToken(t *testing.T, sim *identityxsim.Server, email string) string {
	t.Helper()
	lt, ok := sim.LastLinkToken(email)
	if !ok {
		t.Fatalf("no magic link was mailed to %s", email)
	}
	return lt
}

// accepted reports whether the simulator's protected query accepts jwt as
// credential kind c.
func accepted(t *testing.T, srvURL string, c credential) bool {
	t.Helper()
	h := map[string]string{"Authorization": c.word + " " + c.jwt}
	if c.appID != "" {
		h["x-app-id"] = c.appID
	}
	status, a := gql(t, srvURL+"/graphql", h, c.query)
	return status == http.StatusOK && len(a.Errors) == 0
}

func TestEnrolOrgUserThenAPIToken(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	e := newEnroller(t, srv.URL+"/graphql")
	ctx := t.Context()

	if err := e.SendUserLink(ctx, "OPS@example.com"); err != nil {
		t.Fatalf("SendUserLink: %v", err)
	}
	link := linkToken(t, sim, identityxsim.DefaultOrgUserEmail)
	orgTok, err := e.UserLogin(ctx, link)
	if err != nil {
		t.Fatalf("UserLogin: %v", err)
	}
	if !accepted(t, srv.URL, credential{word: "OrgUser", jwt: orgTok, query: "{ activeUser { id } }"}) {
		t.Fatal("the OrgUser token from UserLogin is not accepted by activeUser")
	}
	// A link is used once.
	if _, err := e.UserLogin(ctx, link); err == nil {
		t.Error("second UserLogin with the same link: got a token, want a rejection")
	} else {
		checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), link)
	}

	apiTok, err := e.CreateAPIToken(ctx, orgTok)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	apiCred := credential{kind: identityx.OrgUserAPIToken, word: "OrgUserApiToken", jwt: apiTok, query: "{ activeUser { id } }"}
	if !accepted(t, srv.URL, apiCred) {
		t.Fatal("the API token is not accepted by activeUser")
	}
	// The enrolled token is what the provider is configured with.
	if _, err := clientFor(t, srv, apiCred).Token(ctx, token.Request{}); err != nil {
		t.Errorf("Client with the enrolled API token: %v", err)
	}
	if again, err := e.CreateAPIToken(ctx, orgTok); err != nil || again != apiTok {
		t.Errorf("second CreateAPIToken: got a different token or %v, want the same token again", err)
	}
	// Only an OrgUser token can make one.
	_, err = e.CreateAPIToken(ctx, apiTok)
	checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), apiTok)
	sim.Revoke(orgTok)
	_, err = e.CreateAPIToken(ctx, orgTok)
	checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), orgTok)
}

func TestEnrolAppUser(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	e := newEnroller(t, srv.URL+"/graphql")
	ctx := t.Context()
	const authURL = "https://app.example.com/auth"

	if err := e.SendAppUserLink(ctx, identityxsim.DefaultAppID, identityxsim.DefaultAppUserEmail, authURL); err != nil {
		t.Fatalf("SendAppUserLink: %v", err)
	}
	out := sim.Outbox()
	if len(out) != 1 || out[0].AppID != identityxsim.DefaultAppID || !strings.HasPrefix(out[0].Link, authURL+"?") {
		t.Fatalf("outbox: got %+v, want one mail for the app with a link to %s", out, authURL)
	}
	link := linkToken(t, sim, identityxsim.DefaultAppUserEmail)
	// A link only works for the app it was mailed for.
	_, err := e.AppUserLogin(ctx, otherAppID, link)
	checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), link)

	appTok, err := e.AppUserLogin(ctx, identityxsim.DefaultAppID, link)
	if err != nil {
		t.Fatalf("AppUserLogin: %v", err)
	}
	c := credential{kind: identityx.AppUser, word: "AppUser", appID: identityxsim.DefaultAppID, jwt: appTok, query: "{ activeAppUser { id } }"}
	if !accepted(t, srv.URL, c) {
		t.Fatal("the AppUser token is not accepted by activeAppUser")
	}
	if _, err := clientFor(t, srv, c).Token(ctx, token.Request{}); err != nil {
		t.Errorf("Client with the enrolled AppUser token: %v", err)
	}
}

func TestEnrolFailures(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	e := newEnroller(t, srv.URL+"/graphql")
	ctx := t.Context()
	tests := []struct {
		name string
		run  func() error
		want wantErr
	}{
		{"unknown org user", func() error { return e.SendUserLink(ctx, "nobody@example.com") },
			rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT")},
		{"unknown app user", func() error {
			return e.SendAppUserLink(ctx, identityxsim.DefaultAppID, "nobody@example.com", "https://app.example.com/auth")
		}, rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT")},
		{"unknown app", func() error {
			return e.SendAppUserLink(ctx, "5f00000000000000000000ff", identityxsim.DefaultAppUserEmail, "https://app.example.com/auth")
		}, rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT")},
		{"bad auth URL", func() error {
			return e.SendAppUserLink(ctx, identityxsim.DefaultAppID, identityxsim.DefaultAppUserEmail, "not a url")
		}, rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT")},
		{"login with a garbage link", func() error { _, err := e.UserLogin(ctx, "garbage"); return err },
			rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED")},
		{"app login for an unknown app", func() error { _, err := e.AppUserLogin(ctx, "5f00000000000000000000ff", "x"); return err },
			rejected(identityx.ReasonConfigRejected, "BAD_USER_INPUT")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.run(), tt.want)
		})
	}
	if got := len(sim.Outbox()); got != 0 {
		t.Errorf("outbox: got %d mails, want none", got)
	}

	// An expired link: the simulator's links live an hour by its clock.
	var late atomic.Int64
	sim2 := identityxsim.New(identityxsim.Options{Now: func() time.Time { return now.Add(time.Duration(late.Load())) }})
	srv2 := httptest.NewServer(sim2)
	t.Cleanup(srv2.Close)
	e2 := newEnroller(t, srv2.URL+"/graphql")
	if err := e2.SendUserLink(ctx, identityxsim.DefaultOrgUserEmail); err != nil {
		t.Fatal(err)
	}
	link := linkToken(t, sim2, identityxsim.DefaultOrgUserEmail)
	late.Store(int64(identityxsim.DefaultLinkTTL + time.Second))
	_, err := e2.UserLogin(ctx, link)
	if e := checkErr(t, err, rejected(token.ReasonCredentialsRejected, "UNAUTHENTICATED"), link); !strings.Contains(e.Message, "expired") {
		t.Errorf("Message %q: want it to say links expire", e.Message)
	}
}

func TestEnrolUpstreamDown(t *testing.T) {
	t.Parallel()
	sim, srv := startSim(t)
	e := newEnroller(t, srv.URL+"/graphql")
	sim.SetFault(identityxsim.Fault{Status: http.StatusBadGateway})
	orgTok := sim.IssueOrgUserToken(identityxsim.DefaultOrgUserEmail)
	_, err := e.CreateAPIToken(t.Context(), orgTok)
	checkErr(t, err, unavailable, orgTok)
	checkErr(t, e.SendUserLink(t.Context(), identityxsim.DefaultOrgUserEmail), unavailable)
	sim.SetFault(identityxsim.Fault{Garbage: true})
	_, err = e.UserLogin(t.Context(), "x")
	checkErr(t, err, unavailable)
}

func TestEnrollerRefusesBadInputLocally(t *testing.T) {
	t.Parallel()
	if _, err := identityx.NewEnroller("identity-x.example.com/graphql", http.DefaultClient); err == nil {
		t.Error("NewEnroller with a relative endpoint: got no error, want one")
	}
	sim, srv := startSim(t)
	e := newEnroller(t, srv.URL+"/graphql")
	if _, err := e.CreateAPIToken(t.Context(), "OrgUser eyJ.x.y"); err == nil || strings.Contains(err.Error(), "eyJ.x.y") {
		t.Errorf("CreateAPIToken with a header value: got %v, want an error without the token", err)
	}
	if err := e.SendAppUserLink(t.Context(), "", identityxsim.DefaultAppUserEmail, "https://app.example.com"); err == nil {
		t.Error("SendAppUserLink without an app id: got no error, want one")
	}
	if got := sim.Queries(); got != 0 {
		t.Errorf("simulator queries: got %d, want 0", got)
	}
}
