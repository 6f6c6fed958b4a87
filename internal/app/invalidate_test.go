package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera/ibanerasim"
	"github.com/tokenvend/tokenvend/internal/server"
)

// TestInvalidateTokenEndToEnd reports a token the kyc simulator revoked:
// the first report drops it and starts one login, callers then get a token
// the simulator accepts, and later reports inside the interval change
// nothing. Over gRPC and REST, with an audit line and a metric per report.
func TestInvalidateTokenEndToEnd(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	s := startService(t, clk, "providers:"+kycProvider("kyc", url, kycPassword))
	ctx := context.Background()

	old := s.mustGet("kyc")
	sim.Revoke(old.GetAccessToken())
	clk.Advance(time.Second) // the next login's JWT differs from the revoked one
	if code := useHeaders(t, url+"/api/v1/resource", old.GetHeaders()); code != http.StatusUnauthorized {
		t.Fatalf("revoked token upstream: got %d, want 401", code)
	}

	var wg sync.WaitGroup
	results := make(chan bool, 100)
	for range 100 {
		wg.Go(func() {
			resp, err := s.client.InvalidateToken(ctx, &tokenvendv1.InvalidateTokenRequest{
				Provider: "kyc", AccessToken: old.GetAccessToken(), UpstreamStatus: 401})
			if err != nil {
				t.Error(err)
				return
			}
			results <- resp.GetInvalidated()
		})
	}
	wg.Wait()
	close(results)
	trues := 0
	for r := range results {
		if r {
			trues++
		}
	}
	if trues != 1 {
		t.Errorf("100 concurrent reports: %d answered invalidated, want 1", trues)
	}
	fresh := s.mustGet("kyc")
	if fresh.GetAccessToken() == old.GetAccessToken() {
		t.Fatal("GetToken after the report: got the revoked token")
	}
	if code := useHeaders(t, url+"/api/v1/resource", fresh.GetHeaders()); code != http.StatusOK {
		t.Errorf("fresh token upstream: got %d, want 200", code)
	}
	if n := sim.Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2", n)
	}

	// REST: a report of the fresh token inside the interval is refused, and
	// the token keeps being served.
	r := s.rest(http.MethodPost, "/v1/token:invalidate", fmt.Sprintf(`{"provider":"kyc","access_token":%q,"upstream_status":401}`, fresh.GetAccessToken()))
	if r.Status != http.StatusOK || r.Body["invalidated"] != false {
		t.Errorf("REST report inside the interval: got %d %s, want 200 with invalidated false", r.Status, r.Raw)
	}
	if again := s.mustGet("kyc"); again.GetAccessToken() != fresh.GetAccessToken() {
		t.Error("the token reported inside the interval was dropped")
	}
	// A made-up token costs nothing.
	r = s.rest(http.MethodPost, "/v1/token:invalidate", `{"provider":"kyc","access_token":"made-up"}`)
	if r.Status != http.StatusOK || r.Body["invalidated"] != false {
		t.Errorf("REST report of a made-up token: got %d %s, want 200 with invalidated false", r.Status, r.Raw)
	}
	if n := sim.Logins(); n != 2 {
		t.Errorf("upstream logins after refused reports: got %d, want 2", n)
	}
	// An unknown provider is NOT_FOUND over REST as over gRPC.
	if r := s.rest(http.MethodPost, "/v1/token:invalidate", `{"provider":"nope","access_token":"x"}`); r.Status != http.StatusNotFound {
		t.Errorf("REST report for an unknown provider: got %d %s, want 404", r.Status, r.Raw)
	}

	logs := s.logs.String()
	if !strings.Contains(logs, `"token_sha256":"`+server.Fingerprint(old.GetAccessToken())+`"`) ||
		!strings.Contains(logs, `"upstream_status":401`) || !strings.Contains(logs, `"result":"invalidated"`) {
		t.Errorf("no audit line of the report with fingerprint, upstream status and result:\n%s", logs)
	}
	for _, tok := range []string{old.GetAccessToken(), fresh.GetAccessToken()} {
		if strings.Contains(logs, tok) {
			t.Error("the log holds a token")
		}
	}
	// Of the 102 reports, one invalidated; the rest found the token
	// already dropped, made up, or inside the interval.
	total := 0.0
	for _, result := range []string{"invalidated", "not_current", "rate_limited"} {
		if v := s.metric("tokenvend_invalidations_total", `provider="kyc",result="`+result+`"`); v > 0 {
			total += v
		}
	}
	if s.metric("tokenvend_invalidations_total", `provider="kyc",result="invalidated"`) != 1 || total != 102 {
		t.Errorf("tokenvend_invalidations_total: invalidated %v, all %v; want 1 and 102",
			s.metric("tokenvend_invalidations_total", `provider="kyc",result="invalidated"`), total)
	}
}

// TestInvalidateTokenNeedsTheGrant: a report takes the same identity and
// grants as GetToken.
func TestInvalidateTokenNeedsTheGrant(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := kycSim(t, clk)
	key, otherKey := "kyc-key-9f2d", "other-key-03ab"
	hashOf := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:kyc
    api_key_sha256: %s
    allow: [{provider: kyc}]
  - id: key:other
    api_key_sha256: %s
    allow: [{provider: other}]
providers:%s%s`, hashOf(key), hashOf(otherKey), kycProvider("kyc", url, kycPassword), kycProvider("other", url, kycPassword)))
	as := func(k string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "x-api-key", k)
	}
	tok, err := s.client.GetToken(as(key), &tokenvendv1.GetTokenRequest{Provider: "kyc"})
	if err != nil {
		t.Fatal(err)
	}
	req := &tokenvendv1.InvalidateTokenRequest{Provider: "kyc", AccessToken: tok.GetAccessToken()}
	if _, err := s.client.InvalidateToken(context.Background(), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unidentified report: got %v, want Unauthenticated", err)
	}
	if _, err := s.client.InvalidateToken(as(otherKey), req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("report by a caller without the grant: got %v, want PermissionDenied", err)
	}
	if n := sim.Logins(); n != 1 {
		t.Errorf("upstream logins after refused reports: got %d, want 1", n)
	}
	resp, err := s.client.InvalidateToken(as(key), req)
	if err != nil || !resp.GetInvalidated() {
		t.Errorf("report by the granted caller: got %v, %v; want invalidated", resp, err)
	}
}

// TestInvalidateTokenGrantsCoverScopeAndSubject: a report is judged by the
// grant of its scope and subject, as GetToken is; a report of a single-use
// token changes nothing, over REST too.
func TestInvalidateTokenGrantsCoverScopeAndSubject(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	_, _ = loginidSim(t, clk, k)
	key := "billing-key-77aa"
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:billing
    api_key_sha256: %s
    allow: [{provider: loginid, scopes: [users.retrieve], subjects: ["*@billing.example.com"]}]
providers:%s`, keyHash(key), loginidProvider("loginid", loginidOneLine(k.pkcs8))))
	for _, tc := range []struct {
		name, scope, subject string
		status               int
		reason               string
	}{
		{"granted", "users.retrieve", "alice@billing.example.com", http.StatusOK, ""},
		{"a subject no grant covers", "users.retrieve", "alice@example.com", http.StatusForbidden, "SUBJECT_NOT_ALLOWED"},
		{"a scope no grant covers", "users.create", "alice@billing.example.com", http.StatusForbidden, "CALLER_NOT_ALLOWED"},
	} {
		req, _ := http.NewRequest(http.MethodPost, s.base+"/v1/token:invalidate", strings.NewReader(fmt.Sprintf(
			`{"provider":"loginid","scope":%q,"subject":%q,"access_token":"eyJ.any.token"}`, tc.scope, tc.subject)))
		req.Header.Set("x-api-key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		r := restResult{Status: resp.StatusCode, Body: body}
		if r.Status != tc.status || restReason(r) != tc.reason {
			t.Errorf("%s: got %d %v, want %d %s", tc.name, r.Status, body, tc.status, tc.reason)
		}
		if tc.status == http.StatusOK && body["invalidated"] != false {
			t.Errorf("%s: a single-use provider's report answered %v, want invalidated false", tc.name, body)
		}
	}
}

// TestInvalidateTokenIbaneraDropsTheSession: for Ibanera the session is what
// a report drops; the next call logs in again (with a fresh step) and its
// session, with a fresh otp, works upstream.
func TestInvalidateTokenIbaneraDropsTheSession(t *testing.T) {
	t.Parallel()
	clk := newClock()
	sim, url := ibaneraSim(t, clk)
	s := startService(t, clk, "cache:\n  min_relogin_interval: 1s\nproviders:"+ibaneraProvider(url, ibaneraPassword, ""))
	first := s.mustGet("ibanera")
	clk.Advance(time.Minute) // the next login needs a fresh TOTP step
	resp, err := s.client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{
		Provider: "ibanera", AccessToken: first.GetAccessToken(), UpstreamStatus: 401})
	if err != nil || !resp.GetInvalidated() {
		t.Fatalf("report of the current session: got %v, %v; want invalidated", resp, err)
	}
	next := s.mustGet("ibanera")
	if next.GetAccessToken() == first.GetAccessToken() {
		t.Error("GetToken after the report: got the reported session")
	}
	if n := sim.Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2 (one new session)", n)
	}
	if code := useHeaders(t, url+ibanerasim.AccountsPath, next.GetHeaders()); code != http.StatusOK {
		t.Errorf("the new session upstream: got %d, want 200", code)
	}
}
