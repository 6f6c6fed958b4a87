package app_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/loginid/loginidsim"
)

const loginidClientID = "client-7f3a"

// loginidKey is a fresh P-256 API credential and its PEM forms.
type loginidKey struct {
	key         *ecdsa.PrivateKey
	pkcs8, sec1 string
}

func newLoginIDKey(t *testing.T) loginidKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return loginidKey{
		key:   key,
		pkcs8: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})),
		sec1:  string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: s1})),
	}
}

// loginidOneLine is a PEM as LoginID's dashboard gives it: one line with
// literal `\n`. Single-quoted, YAML keeps the backslashes.
func loginidOneLine(pemText string) string {
	return "'" + strings.ReplaceAll(pemText, "\n", `\n`) + "'"
}

// loginidBlock is a PEM as a YAML block scalar: real newlines.
func loginidBlock(pemText string) string {
	return "|\n      " + strings.ReplaceAll(strings.TrimSpace(pemText), "\n", "\n      ")
}

// loginidSim runs a LoginID simulator for k (with client id
// loginidClientID) on the fake clock.
func loginidSim(t *testing.T, clk *clocktest.Clock, k loginidKey) (*loginidsim.Server, string) {
	t.Helper()
	sim := loginidsim.New(loginidsim.Options{PublicKey: &k.key.PublicKey, ClientID: loginidClientID, Now: clk.Now})
	return sim, serve(t, sim)
}

// loginidProvider is a provider block; key is already YAML (quoted or a
// block scalar).
func loginidProvider(name, key string) string {
	return fmt.Sprintf(`
  - name: %s
    kind: loginid
    private_key: %s
    client_id: %s
    scopes: [users.retrieve, users.create]
`, name, key, loginidClientID)
}

// loginidUse calls the simulator with the vended headers and returns the
// status and the answer's JSON body.
func loginidUse(t *testing.T, method, url string, headers map[string]string) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object of strings: %v", method, url, err)
	}
	return resp.StatusCode, body
}

// loginidRESTHeaders reads the headers of a REST answer.
func loginidRESTHeaders(t *testing.T, r restResult) map[string]string {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("REST: got %d %s, want 200", r.Status, r.Raw)
	}
	h, ok := r.Body["headers"].(map[string]any)
	if !ok {
		t.Fatalf("REST: no headers in %s", r.Raw)
	}
	out := map[string]string{}
	for k, v := range h {
		out[k], _ = v.(string)
	}
	return out
}

// TestLoginIDMintsASingleUseTokenPerCall: every call, over gRPC and REST,
// is a new token that LoginID accepts exactly once; nothing is cached; the
// subject becomes the username; expire_time is iat + 5m, after which the
// upstream refuses the token.
func TestLoginIDMintsASingleUseTokenPerCall(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	sim, url := loginidSim(t, clk, k)
	s := startService(t, clk, "providers:"+loginidProvider("loginid", loginidOneLine(k.pkcs8)))
	user := url + "/manage/users/u-1"

	var first, second *tokenvendv1.GetTokenResponse
	for _, r := range []**tokenvendv1.GetTokenResponse{&first, &second} {
		resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.retrieve"})
		if err != nil {
			t.Fatalf("GetToken: %v", err)
		}
		*r = resp
	}
	if first.GetAccessToken() == second.GetAccessToken() {
		t.Fatal("two calls: got the same token twice, want two tokens")
	}
	for i, resp := range []*tokenvendv1.GetTokenResponse{first, second} {
		if !resp.GetSingleUse() {
			t.Errorf("call %d: single_use: got false, want true", i+1)
		}
		if got, want := resp.GetHeaders()["Authorization"], "Bearer "+resp.GetAccessToken(); got != want || len(resp.GetHeaders()) != 1 {
			t.Errorf("call %d: headers: got %v, want only Authorization: %s", i+1, resp.GetHeaders(), want)
		}
		iat := clk.Now().Truncate(time.Second)
		if got := resp.GetIssueTime().AsTime(); !got.Equal(iat) {
			t.Errorf("call %d: issue_time: got %v, want iat %v", i+1, got, iat)
		}
		if got, want := resp.GetExpireTime().AsTime(), iat.Add(5*time.Minute); !got.Equal(want) {
			t.Errorf("call %d: expire_time: got %v, want iat + 5m = %v", i+1, got, want)
		}
		if got, body := loginidUse(t, http.MethodGet, user, resp.GetHeaders()); got != http.StatusOK {
			t.Errorf("call %d: upstream: got %d %v, want 200", i+1, got, body)
		}
	}
	if got, body := loginidUse(t, http.MethodGet, user, first.GetHeaders()); got != http.StatusUnauthorized || body["code"] != loginidsim.CodeTokenReplayed {
		t.Errorf("first token again: got %d %v, want 401 %s", got, body, loginidsim.CodeTokenReplayed)
	}

	// REST, with a subject: the upstream reads it as the username.
	r := s.rest(http.MethodGet, "/v1/providers/loginid/token?scope=users.retrieve&subject=alice%40example.com", "")
	if r.Body["single_use"] != true {
		t.Errorf("REST single_use: got %v, want true", r.Body["single_use"])
	}
	if got, body := loginidUse(t, http.MethodGet, user, loginidRESTHeaders(t, r)); got != http.StatusOK || body["username"] != "alice@example.com" {
		t.Errorf("REST token upstream: got %d %v, want 200 for username alice@example.com", got, body)
	}
	r = s.rest(http.MethodPost, "/v1/token", `{"provider":"loginid","scope":"users.create"}`)
	headers := loginidRESTHeaders(t, r)
	if got, body := loginidUse(t, http.MethodGet, user, headers); got != http.StatusForbidden {
		t.Errorf("users.create token on a users.retrieve endpoint: got %d %v, want 403", got, body)
	}
	if got, body := loginidUse(t, http.MethodPost, url+"/manage/users", headers); got != http.StatusUnauthorized || body["code"] != loginidsim.CodeTokenReplayed {
		// LoginID spends a nonce before it checks the scope: a token
		// refused for its scope is gone.
		t.Errorf("the same token on its own endpoint: got %d %v, want 401 %s", got, body, loginidsim.CodeTokenReplayed)
	}
	r = s.rest(http.MethodPost, "/v1/token", `{"provider":"loginid","scope":"users.create"}`)
	if got, body := loginidUse(t, http.MethodPost, url+"/manage/users", loginidRESTHeaders(t, r)); got != http.StatusOK {
		t.Errorf("REST users.create token on POST /manage/users: got %d %v, want 200", got, body)
	}

	// Many callers at once: as many tokens, each accepted once.
	const callers = 40
	tokens := make([]*tokenvendv1.GetTokenResponse, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.retrieve"})
			if err != nil {
				t.Errorf("GetToken: %v", err)
				return
			}
			tokens[i] = resp
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, resp := range tokens {
		if resp == nil {
			t.FailNow()
		}
		if seen[resp.GetAccessToken()] {
			t.Errorf("concurrent callers: a token was handed out twice")
		}
		seen[resp.GetAccessToken()] = true
		if got, body := loginidUse(t, http.MethodGet, user, resp.GetHeaders()); got != http.StatusOK {
			t.Errorf("concurrent caller's token: got %d %v, want 200", got, body)
		}
	}

	if got, want := sim.Accepted(), int64(2+1+1+callers); got != want {
		t.Errorf("upstream accepted: got %d, want %d", got, want)
	}
	if got := s.metric("tokenvend_cache_lookups_total", `provider="loginid"`); got != -1 {
		t.Errorf("cache lookups for loginid: got %v, want none (never cached)", got)
	}

	// expire_time is when the upstream stops accepting the token.
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.retrieve"})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	clk.Advance(resp.GetExpireTime().AsTime().Sub(clk.Now()) + time.Second)
	if got, body := loginidUse(t, http.MethodGet, user, resp.GetHeaders()); got != http.StatusUnauthorized || body["code"] != loginidsim.CodeTokenExpired {
		t.Errorf("token used after its expire_time: got %d %v, want 401 %s", got, body, loginidsim.CodeTokenExpired)
	}
	if got, body := loginidUse(t, http.MethodGet, user, s.mustGetScope("loginid", "users.retrieve").GetHeaders()); got != http.StatusOK {
		t.Errorf("a token minted at the new time: got %d %v, want 200", got, body)
	}
}

func (s *service) mustGetScope(provider, scope string) *tokenvendv1.GetTokenResponse {
	s.t.Helper()
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: provider, Scope: scope})
	if err != nil {
		s.t.Fatalf("GetToken(%s, %s): %v", provider, scope, err)
	}
	return resp
}

// TestLoginIDScopeErrors: a scope outside `scopes` is PERMISSION_DENIED and
// a missing one INVALID_ARGUMENT, over gRPC and REST, and nothing is minted
// for either.
func TestLoginIDScopeErrors(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	sim, url := loginidSim(t, clk, k)
	s := startService(t, clk, "providers:"+loginidProvider("loginid", loginidOneLine(k.sec1)))

	for _, c := range []struct {
		name, scope, reason string
		code                codes.Code
		http                int
	}{
		{"disallowed scope", "users.delete", "SCOPE_NOT_ALLOWED", codes.PermissionDenied, http.StatusForbidden},
		{"missing scope", "", "INVALID_SCOPE", codes.InvalidArgument, http.StatusBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: c.scope})
			if err == nil {
				t.Fatalf("gRPC: got a token (%d chars), want %v", len(resp.GetAccessToken()), c.code)
			}
			code, info := errorInfo(t, err)
			if code != c.code || info.GetReason() != c.reason || info.GetMetadata()["provider"] != "loginid" {
				t.Errorf("gRPC: got %v %s %v, want %v %s for provider loginid", code, info.GetReason(), info.GetMetadata(), c.code, c.reason)
			}
			r := s.rest(http.MethodGet, "/v1/providers/loginid/token?scope="+c.scope, "")
			if r.Status != c.http || !strings.Contains(r.Raw, c.reason) {
				t.Errorf("REST GET: got %d %s, want %d with %s", r.Status, r.Raw, c.http, c.reason)
			}
			r = s.rest(http.MethodPost, "/v1/token", fmt.Sprintf(`{"provider":"loginid","scope":%q}`, c.scope))
			if r.Status != c.http || !strings.Contains(r.Raw, c.reason) {
				t.Errorf("REST POST: got %d %s, want %d with %s", r.Status, r.Raw, c.http, c.reason)
			}
		})
	}
	if got := sim.Accepted() + sim.Rejected(); got != 0 {
		t.Errorf("upstream requests: got %d, want 0", got)
	}
	// The provider still works: the errors were the requests'.
	if got, body := loginidUse(t, http.MethodGet, url+"/manage/users/u-1", s.mustGetScope("loginid", "users.retrieve").GetHeaders()); got != http.StatusOK {
		t.Errorf("a good request after them: got %d %v, want 200", got, body)
	}
}

// TestLoginIDKeyFormats: PKCS#8 and SEC1 keys, as one line with literal
// `\n`, as a YAML block with real newlines, and double-quoted (YAML turns
// the escapes into newlines), all load, and their tokens are accepted.
func TestLoginIDKeyFormats(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	sim, url := loginidSim(t, clk, k)
	forms := []struct{ name, yaml string }{
		{"pkcs8-one-line", loginidOneLine(k.pkcs8)},
		{"pkcs8-multi-line", loginidBlock(k.pkcs8)},
		{"pkcs8-double-quoted", `"` + strings.ReplaceAll(k.pkcs8, "\n", `\n`) + `"`},
		{"sec1-one-line", loginidOneLine(k.sec1)},
		{"sec1-multi-line", loginidBlock(k.sec1)},
		{"sec1-plain-one-line", strings.Trim(loginidOneLine(k.sec1), "'")},
	}
	yaml := "providers:"
	for _, f := range forms {
		yaml += loginidProvider(f.name, f.yaml)
	}
	s := startService(t, clk, yaml)
	for _, f := range forms {
		resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: f.name, Scope: "users.retrieve"})
		if err != nil {
			t.Errorf("%s: GetToken: %v", f.name, err)
			continue
		}
		if got, body := loginidUse(t, http.MethodGet, url+"/manage/users/u-1", resp.GetHeaders()); got != http.StatusOK {
			t.Errorf("%s: upstream: got %d %v, want 200", f.name, got, body)
		}
	}
	if got, want := sim.Accepted(), int64(len(forms)); got != want {
		t.Errorf("upstream accepted: got %d, want %d", got, want)
	}
}

// TestLoginIDBadKeysFailCheck: a key on another curve, an RSA key and
// garbage are refused by `tokenvend check` (the same build of the providers
// that start-up runs), each naming its field, none quoting the key.
func TestLoginIDBadKeysFailCheck(t *testing.T) {
	t.Parallel()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, err := x509.MarshalPKCS8PrivateKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p384DER})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})),
		"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
		"garbage",
	}
	yaml := "providers:" + loginidProvider("good", loginidOneLine(newLoginIDKey(t).pkcs8))
	for i, key := range keys {
		yaml += loginidProvider(fmt.Sprintf("bad%d", i), loginidOneLine(key))
	}
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("config.Parse: %v (the keys are checked by the kind, not the parser)", err)
	}
	err = app.Check(cfg)
	if err == nil {
		t.Fatal("app.Check: got nil, want every bad key named")
	}
	for _, want := range []string{
		"providers[1].private_key: not a P-256 key: it is on curve P-384",
		"providers[2].private_key: not a P-256 key: it is an RSA key",
		"providers[3].private_key: not a P-256 key: the key is malformed",
		"providers[4].private_key: not a PEM private key",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("app.Check: got %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "providers[0]") {
		t.Errorf("app.Check: got %q, want the good key not named", err)
	}
	for _, key := range keys[:2] {
		for _, line := range strings.Split(key, "\n")[1:3] {
			if strings.Contains(err.Error(), line) {
				t.Errorf("app.Check: the error quotes a key: %q", err)
			}
		}
	}
}

// TestLoginIDDemo: the demo's loginid provider, with its key generated at
// start, vends tokens its simulator accepts once.
func TestLoginIDDemo(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	s := startConfig(t, nil, d.Config)
	resp := s.mustGetScope("loginid", "users.retrieve")
	if !resp.GetSingleUse() {
		t.Error("single_use: got false, want true")
	}
	if got := useHeaders(t, d.Upstreams["loginid"], resp.GetHeaders()); got != http.StatusOK {
		t.Errorf("demo token upstream: got %d, want 200", got)
	}
	if got := useHeaders(t, d.Upstreams["loginid"], resp.GetHeaders()); got != http.StatusUnauthorized {
		t.Errorf("demo token used twice: got %d, want 401", got)
	}
	sim := d.Simulators["loginid"].(*loginidsim.Server)
	if sim.Accepted() != 1 || sim.Replays() != 1 {
		t.Errorf("demo simulator: got %d accepted, %d replays, want 1 and 1", sim.Accepted(), sim.Replays())
	}
}
