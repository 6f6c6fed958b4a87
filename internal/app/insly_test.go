package app_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/provider/insly/inslysim"
)

const (
	inslyTenant   = "acme"
	inslyUser     = "svc@acme.example.com"
	inslyPassword = "insly pa55word"
	inslyClient   = "ledger-app"
	inslySecret   = "insly-client-secret"
)

// inslySim runs an identifier simulator for inslyTenant on the fake clock,
// with the service user, the client (granted auth/acme and ledger/read)
// and any extra users.
func inslySim(t *testing.T, clk *clocktest.Clock, mutate func(*inslysim.Options)) (*inslysim.Server, string) {
	t.Helper()
	o := inslysim.Options{
		Tenant: inslyTenant,
		Users:  []inslysim.User{{Email: inslyUser, Password: inslyPassword}},
		Clients: []inslysim.Client{
			{ID: inslyClient, Secret: inslySecret, Scopes: []string{"auth/" + inslyTenant, "ledger/read"}},
		},
		Now: clk.Now,
	}
	if mutate != nil {
		mutate(&o)
	}
	sim := inslysim.New(o)
	return sim, serve(t, sim)
}

// inslyPasswordProvider is a password-grant provider block.
func inslyPasswordProvider(name, url, tenant, user, password string) string {
	return fmt.Sprintf(`
  - name: %s
    kind: insly
    base_url: %s
    tenant: %s
    grant: password
    username: %s
    password: %q
    meta_data: {source: tokenvend}
`, name, url+inslysim.PathPrefix, tenant, user, password)
}

// inslyClientProvider is a client_credentials provider block.
func inslyClientProvider(name, url, secret string, scopes ...string) string {
	block := fmt.Sprintf(`
  - name: %s
    kind: insly
    base_url: %s
    tenant: %s
    grant: client_credentials
    client_id: %s
    client_secret: %q
`, name, url+inslysim.PathPrefix, inslyTenant, inslyClient, secret)
	if len(scopes) > 0 {
		block += "    scopes: [" + strings.Join(scopes, ", ") + "]\n"
	}
	return block
}

// restHeaders reads the headers of a REST token answer.
func restHeaders(t *testing.T, r restResult) map[string]string {
	t.Helper()
	out := map[string]string{}
	m, _ := r.Body["headers"].(map[string]any)
	for k, v := range m {
		out[k], _ = v.(string)
	}
	return out
}

// wantInslyHeaders checks that headers are exactly the three the upstream
// needs for accessToken.
func wantInslyHeaders(t *testing.T, via string, headers map[string]string, accessToken string) {
	t.Helper()
	want := map[string]string{"Authorization": "Bearer " + accessToken, "X-TENANT-ID": inslyTenant, "Content-Type": "application/json; charset=UTF-8"}
	if !maps.Equal(headers, want) {
		t.Errorf("%s headers: got %q, want %q", via, headers, want)
	}
}

// TestInslyBothGrantsEndToEnd gets a token of each grant (the
// client-credentials one from a nested and from a flat answer) over gRPC
// and REST and uses it on the protected endpoint, which needs both the
// bearer token and the tenant header.
func TestInslyBothGrantsEndToEnd(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := inslySim(t, clk, nil)
	flat, flatURL := inslySim(t, clk, func(o *inslysim.Options) { o.FlatClientAnswer = true })
	s := startService(t, clk, "providers:"+
		inslyPasswordProvider("insly-user", url, inslyTenant, inslyUser, inslyPassword)+
		inslyClientProvider("insly-app", url, inslySecret, "ledger/read")+
		inslyClientProvider("insly-flat", flatURL, inslySecret))
	cogUser, _ := sim.Username(inslyUser)

	for _, tc := range []struct {
		provider, scope, url, who string
	}{
		{"insly-user", "", url, cogUser},
		{"insly-app", "", url, inslyClient},
		{"insly-app", "ledger/read", url, inslyClient},
		{"insly-flat", "", flatURL, inslyClient},
	} {
		name := tc.provider + "/" + tc.scope
		resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: tc.provider, Scope: tc.scope})
		if err != nil {
			t.Fatalf("%s: GetToken: %v", name, err)
		}
		wantInslyHeaders(t, name+" gRPC", resp.GetHeaders(), resp.GetAccessToken())
		if got, want := resp.GetExpireTime().AsTime(), clk.Now().Add(inslysim.DefaultAccessTTL); !got.Equal(want) {
			t.Errorf("%s: expire_time: got %v, want %v (expires_in)", name, got, want)
		}
		if got := useHeaders(t, tc.url+inslysim.PoliciesPath, resp.GetHeaders()); got != http.StatusOK {
			t.Errorf("%s: protected endpoint with gRPC headers: got %d, want 200", name, got)
		}
		// Every header is needed: the bearer token alone is refused.
		if got := useHeaders(t, tc.url+inslysim.PoliciesPath, map[string]string{"Authorization": resp.GetHeaders()["Authorization"]}); got != http.StatusForbidden {
			t.Errorf("%s: protected endpoint without X-TENANT-ID: got %d, want 403", name, got)
		}
		// And the Content-Type that Insly's docs say every call carries.
		noType := maps.Clone(resp.GetHeaders())
		delete(noType, "Content-Type")
		if got := useHeaders(t, tc.url+inslysim.PoliciesPath, noType); got != http.StatusBadRequest {
			t.Errorf("%s: protected endpoint without Content-Type: got %d, want 400", name, got)
		}

		for _, call := range []struct{ method, path, body string }{
			{http.MethodGet, "/v1/providers/" + tc.provider + "/token?scope=" + tc.scope, ""},
			{http.MethodPost, "/v1/token", fmt.Sprintf(`{"provider":%q,"scope":%q}`, tc.provider, tc.scope)},
		} {
			r := s.rest(call.method, call.path, call.body)
			if r.Status != http.StatusOK {
				t.Fatalf("%s: %s %s: got %d %s, want 200", name, call.method, call.path, r.Status, r.Raw)
			}
			headers := restHeaders(t, r)
			wantInslyHeaders(t, name+" REST", headers, resp.GetAccessToken())
			if got := useHeaders(t, tc.url+inslysim.PoliciesPath, headers); got != http.StatusOK {
				t.Errorf("%s: protected endpoint with REST headers: got %d, want 200", name, got)
			}
		}
	}
	// One upstream login per provider and scope; the rest came from the cache.
	if sim.Logins() != 1 || sim.ClientLogins() != 2 || flat.ClientLogins() != 1 || sim.RefreshAttempts() != 0 {
		t.Errorf("upstream logins, client logins, flat client logins, refresh attempts: got %d, %d, %d, %d, want 1, 2, 1, 0",
			sim.Logins(), sim.ClientLogins(), flat.ClientLogins(), sim.RefreshAttempts())
	}

	// Scope rules: the password grant takes none; a client_credentials
	// provider takes its default and the scopes it lists, nothing else.
	attempts := sim.LoginAttempts() + sim.ClientLoginAttempts()
	for _, req := range []*tokenvendv1.GetTokenRequest{
		{Provider: "insly-user", Scope: "auth/" + inslyTenant},
		{Provider: "insly-app", Scope: "ledger/write"},
		{Provider: "insly-flat", Scope: "ledger/read"},
	} {
		_, err := s.get(req)
		if code, info := errorInfo(t, err); code != codes.PermissionDenied || info.GetReason() != "SCOPE_NOT_ALLOWED" {
			t.Errorf("%s scope %q over gRPC: got %v %s, want PermissionDenied SCOPE_NOT_ALLOWED", req.GetProvider(), req.GetScope(), code, info.GetReason())
		}
		if r := s.rest(http.MethodPost, "/v1/token", protoJSON(t, req)); r.Status != http.StatusForbidden {
			t.Errorf("%s scope %q over REST: got %d %s, want 403", req.GetProvider(), req.GetScope(), r.Status, r.Raw)
		}
	}
	if got := sim.LoginAttempts() + sim.ClientLoginAttempts(); got != attempts {
		t.Errorf("upstream attempts for refused scopes: got %d, want none", got-attempts)
	}
}

// TestInslyRefreshesThroughRefreshEndpoint: a cached password-grant token
// nearing expiry is refreshed with the refresh token, in the background or
// when a caller needs more validity, and never by a new login.
func TestInslyRefreshesThroughRefreshEndpoint(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := inslySim(t, clk, nil)
	s := startService(t, clk, "providers:"+inslyPasswordProvider("insly", url, inslyTenant, inslyUser, inslyPassword))

	first := s.mustGet("insly")
	clk.Advance(56 * time.Minute) // past the refresh point (5m before expiry), still valid
	if got := s.mustGet("insly"); got.GetAccessToken() != first.GetAccessToken() {
		t.Fatal("a caller got a new token before the background refresh finished")
	}
	eventually(t, "the background refresh", func() bool { return sim.Refreshes() == 1 })
	var second *tokenvendv1.GetTokenResponse
	eventually(t, "the refreshed token in the cache", func() bool {
		second = s.mustGet("insly")
		return second.GetAccessToken() != first.GetAccessToken()
	})
	if sim.Logins() != 1 || sim.LoginAttempts() != 1 || sim.Refreshes() != 1 {
		t.Errorf("upstream logins, login attempts, refreshes: got %d, %d, %d, want 1, 1, 1",
			sim.Logins(), sim.LoginAttempts(), sim.Refreshes())
	}
	if got, want := second.GetExpireTime().AsTime(), clk.Now().Add(inslysim.DefaultAccessTTL); !got.Equal(want) {
		t.Errorf("refreshed expire_time: got %v, want %v", got, want)
	}
	wantInslyHeaders(t, "refreshed", second.GetHeaders(), second.GetAccessToken())
	if got := useHeaders(t, url+inslysim.PoliciesPath, second.GetHeaders()); got != http.StatusOK {
		t.Errorf("refreshed token upstream: got %d, want 200", got)
	}

	// A caller over REST that needs more validity than is left waits for a
	// refresh, again with the refresh token the login answered (the
	// refresh answered none, so the client kept it).
	clk.Advance(40 * time.Minute) // 20m left, before the refresh point
	r := s.rest(http.MethodGet, "/v1/providers/insly/token?min_valid_for=1800s", "")
	if r.Status != http.StatusOK {
		t.Fatalf("REST with min_valid_for: got %d %s, want 200", r.Status, r.Raw)
	}
	if r.Body["access_token"] == second.GetAccessToken() {
		t.Error("REST with min_valid_for 30m and 20m left: got the old token, want a refreshed one")
	}
	if sim.Logins() != 1 || sim.Refreshes() != 2 {
		t.Errorf("upstream logins, refreshes: got %d, %d, want 1, 2", sim.Logins(), sim.Refreshes())
	}
	if got := useHeaders(t, url+inslysim.PoliciesPath, restHeaders(t, r)); got != http.StatusOK {
		t.Errorf("second refreshed token upstream: got %d, want 200", got)
	}
}

// TestInslyRevokedRefreshFallsBackToLogin: when the refresh token has been
// revoked, the refresh falls back to a login, and the refused refresh does
// not count as a rejection of the credentials.
func TestInslyRevokedRefreshFallsBackToLogin(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := inslySim(t, clk, nil)
	s := startService(t, clk, "providers:"+inslyPasswordProvider("insly", url, inslyTenant, inslyUser, inslyPassword))

	first := s.mustGet("insly")
	sim.RevokeRefreshTokens()
	clk.Advance(56 * time.Minute)
	s.mustGet("insly") // starts the background refresh
	eventually(t, "the login after the refused refresh", func() bool { return sim.Logins() == 2 })
	var second *tokenvendv1.GetTokenResponse
	eventually(t, "the new token in the cache", func() bool {
		second = s.mustGet("insly")
		return second.GetAccessToken() != first.GetAccessToken()
	})
	if sim.RefreshAttempts() != 1 || sim.Refreshes() != 0 || sim.LoginAttempts() != 2 {
		t.Errorf("upstream refresh attempts, refreshes, login attempts: got %d, %d, %d, want 1, 0, 2",
			sim.RefreshAttempts(), sim.Refreshes(), sim.LoginAttempts())
	}
	if got := useHeaders(t, url+inslysim.PoliciesPath, second.GetHeaders()); got != http.StatusOK {
		t.Errorf("token after the fallback login upstream: got %d, want 200", got)
	}
	h, err := healthpb.NewHealthClient(s.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "insly"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of insly: got %v %v, want SERVING (a refused refresh is no rejection)", h.GetStatus(), err)
	}
	if got := s.metric("tokenvend_logins_total", `provider="insly",outcome="rejected"`); got > 0 {
		t.Errorf("rejected logins: got %v, want none", got)
	}

	// The new login's refresh token works: the next refresh is one.
	clk.Advance(56 * time.Minute)
	s.mustGet("insly")
	eventually(t, "the refresh with the new refresh token", func() bool { return sim.Refreshes() == 1 })
	if sim.Logins() != 2 {
		t.Errorf("upstream logins: got %d, want 2", sim.Logins())
	}
}

// TestInslyErrorCodes drives each error class over gRPC and REST: a
// challenge, each credential rejection, the lockout, throttling, a refused
// request, an unavailable or garbled upstream, and a scope the upstream
// does not grant.
func TestInslyErrorCodes(t *testing.T) {
	t.Parallel()
	clk := newClock()
	accounts, accountsURL := inslySim(t, clk, func(o *inslysim.Options) {
		o.Users = append(o.Users,
			inslysim.User{Email: "new@acme.example.com", Password: inslyPassword, Challenge: "NEW_PASSWORD_REQUIRED"},
			inslysim.User{Email: "reset@acme.example.com", Password: inslyPassword, ResetRequired: true},
			inslysim.User{Email: "unconfirmed@acme.example.com", Password: inslyPassword, Unconfirmed: true})
	})
	locked, lockedURL := inslySim(t, clk, nil)
	locked.SetFault(inslysim.Fault{Code: inslysim.CodeTooManyFailedAttempts})
	throttled, throttledURL := inslySim(t, clk, nil)
	throttled.SetFault(inslysim.Fault{Code: inslysim.CodeTooManyRequests})
	broken, brokenURL := inslySim(t, clk, nil)
	broken.SetFault(inslysim.Fault{Code: inslysim.CodeUndefined}) // HTTP 500
	garbage, garbageURL := inslySim(t, clk, nil)
	garbage.SetFault(inslysim.Fault{Garbage: true})

	s := startService(t, clk, "providers:"+
		inslyPasswordProvider("challenge", accountsURL, inslyTenant, "new@acme.example.com", inslyPassword)+
		inslyPasswordProvider("badpw", accountsURL, inslyTenant, inslyUser, "wrong-pa55")+
		inslyPasswordProvider("nouser", accountsURL, inslyTenant, "nobody@acme.example.com", inslyPassword)+
		inslyPasswordProvider("reset", accountsURL, inslyTenant, "reset@acme.example.com", inslyPassword)+
		inslyPasswordProvider("unconfirmed", accountsURL, inslyTenant, "unconfirmed@acme.example.com", inslyPassword)+
		inslyPasswordProvider("notenant", accountsURL, "other", inslyUser, inslyPassword)+
		inslyClientProvider("badsecret", accountsURL, "wrong-s3cret")+
		inslyClientProvider("app", accountsURL, inslySecret, "ledger/write")+
		inslyPasswordProvider("locked", lockedURL, inslyTenant, inslyUser, inslyPassword)+
		inslyPasswordProvider("throttled", throttledURL, inslyTenant, inslyUser, inslyPassword)+
		inslyPasswordProvider("broken", brokenURL, inslyTenant, inslyUser, inslyPassword)+
		inslyPasswordProvider("garbage", garbageURL, inslyTenant, inslyUser, inslyPassword))

	const failed, unavailable, denied = codes.FailedPrecondition, codes.Unavailable, codes.PermissionDenied
	cases := []struct {
		provider, scope string
		code            codes.Code
		httpStatus      int
		reason          string
		upstream        string
	}{
		{"challenge", "", failed, 400, "CHALLENGE_REQUIRED", "NEW_PASSWORD_REQUIRED"},
		{"badpw", "", failed, 400, "CREDENTIALS_REJECTED", inslysim.CodeNotAuthorized},
		{"nouser", "", failed, 400, "CREDENTIALS_REJECTED", inslysim.CodeUserNotFound},
		{"reset", "", failed, 400, "PASSWORD_RESET_REQUIRED", inslysim.CodePasswordResetRequired},
		{"unconfirmed", "", failed, 400, "ACCOUNT_NOT_VERIFIED", inslysim.CodeUserNotConfirmed},
		{"notenant", "", failed, 400, "LOGIN_REQUEST_REFUSED", inslysim.CodeUndefined},
		{"badsecret", "", failed, 400, "CREDENTIALS_REJECTED", inslysim.CodeNotAuthorized},
		{"locked", "", failed, 400, "ACCOUNT_LOCKED", inslysim.CodeTooManyFailedAttempts},
		{"throttled", "", unavailable, 503, "UPSTREAM_UNAVAILABLE", inslysim.CodeTooManyRequests},
		{"broken", "", unavailable, 503, "UPSTREAM_UNAVAILABLE", inslysim.CodeUndefined},
		{"garbage", "", unavailable, 503, "UPSTREAM_UNAVAILABLE", ""},
		{"app", "ledger/write", denied, 403, "SCOPE_NOT_ALLOWED", inslysim.CodeNotAuthorized},
	}
	for _, tc := range cases {
		req := &tokenvendv1.GetTokenRequest{Provider: tc.provider, Scope: tc.scope}
		t.Run(tc.provider+"/grpc", func(t *testing.T) {
			_, err := s.get(req)
			code, info := errorInfo(t, err)
			md := info.GetMetadata()
			if code != tc.code || info.GetReason() != tc.reason || md["upstream_code"] != tc.upstream || md["provider"] != tc.provider {
				t.Errorf("got %v %s upstream_code %q provider %q, want %v %s upstream_code %q provider %q",
					code, info.GetReason(), md["upstream_code"], md["provider"], tc.code, tc.reason, tc.upstream, tc.provider)
			}
			for _, secret := range []string{inslyPassword, inslySecret, "wrong-pa55", "wrong-s3cret"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q holds the secret %q", err, secret)
				}
			}
			if tc.provider == "locked" && md["retry_after_seconds"] != "900" {
				t.Errorf("retry_after_seconds: got %q, want 900 (the lockout hold)", md["retry_after_seconds"])
			}
		})
		t.Run(tc.provider+"/rest", func(t *testing.T) {
			r := s.rest(http.MethodPost, "/v1/token", protoJSON(t, req))
			if r.Status != tc.httpStatus || r.Body["code"] != float64(tc.code) {
				t.Fatalf("got HTTP %d %s, want %d with code %d", r.Status, r.Raw, tc.httpStatus, tc.code)
			}
			details, _ := r.Body["details"].([]any)
			var info map[string]any
			if len(details) > 0 {
				info, _ = details[0].(map[string]any)
			}
			md, _ := info["metadata"].(map[string]any)
			if info["reason"] != tc.reason || (tc.upstream != "" && md["upstream_code"] != tc.upstream) {
				t.Errorf("details: got %s, want reason %s upstream_code %q", r.Raw, tc.reason, tc.upstream)
			}
		})
	}

	// A rejection is never retried: each rejected provider cost its
	// account one attempt, though it was asked twice. Throttling is
	// transient: retried (3 tries) on each of the two calls.
	if got := accounts.LoginAttempts(); got != 6 {
		t.Errorf("login attempts on the accounts upstream: got %d, want 6 (one per rejected provider)", got)
	}
	// A scope the upstream refuses is the caller's problem, not held: it
	// is asked on each of the two calls.
	if got := accounts.ClientLoginAttempts(); got != 3 {
		t.Errorf("client login attempts on the accounts upstream: got %d, want 3 (badsecret once, app's scope twice)", got)
	}
	if got := locked.LoginAttempts(); got != 1 {
		t.Errorf("login attempts on the locked upstream: got %d, want 1", got)
	}
	if got := throttled.LoginAttempts(); got != 6 {
		t.Errorf("login attempts on the throttled upstream: got %d, want 6 (3 tries per call)", got)
	}

	// The scope the upstream refused held nothing: the default scope of
	// the same provider works and is accepted upstream.
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "app"})
	if err != nil {
		t.Fatalf("app default scope after a refused scope: %v", err)
	}
	if got := useHeaders(t, accountsURL+inslysim.PoliciesPath, resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("app default scope upstream: got %d, want 200", got)
	}
	health := healthpb.NewHealthClient(s.conn)
	for _, p := range []string{"badpw", "app"} {
		h, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: p})
		want := map[string]healthpb.HealthCheckResponse_ServingStatus{"badpw": healthpb.HealthCheckResponse_NOT_SERVING, "app": healthpb.HealthCheckResponse_SERVING}[p]
		if err != nil || h.GetStatus() != want {
			t.Errorf("health of %s: got %v %v, want %v", p, h.GetStatus(), err, want)
		}
	}
}

// TestInslyColdScopesTryWrongSecretOnce: a cold client_credentials provider
// asked for both its scopes at once, with a wrong secret, sends it once:
// the other scope waits for the first login's answer, then is held.
func TestInslyColdScopesTryWrongSecretOnce(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := inslySim(t, clk, nil)
	s := startService(t, clk, "providers:"+inslyClientProvider("ins", url, "wrong-secret", "auth/"+inslyTenant, "ledger/read"))
	var wg sync.WaitGroup
	got := make([]codes.Code, 20)
	for i := range got {
		scope := []string{"auth/" + inslyTenant, "ledger/read"}[i%2]
		wg.Go(func() {
			_, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "ins", Scope: scope})
			got[i] = status.Code(err)
		})
	}
	wg.Wait()
	for i, c := range got {
		if c != got[0] || c == codes.OK {
			t.Fatalf("caller %d: %v; caller 0: %v; want the same refusal for all", i, c, got[0])
		}
	}
	if got := sim.ClientLoginAttempts(); got != 1 {
		t.Fatalf("upstream attempts with the wrong secret: got %d, want 1", got)
	}
}
