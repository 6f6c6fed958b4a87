package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/loginid"
)

func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keyGet calls GetToken over gRPC with an API key ("" for none).
func (s *service) keyGet(key string, req *tokenvendv1.GetTokenRequest) (*tokenvendv1.GetTokenResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-api-key", key)
	}
	return s.client.GetToken(ctx, req)
}

// keyREST calls the REST port with an API key ("" for none).
func (s *service) keyREST(key, method, path, body string) restResult {
	s.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.base+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := restResult{Status: resp.StatusCode, Raw: string(raw)}
	_ = json.Unmarshal(raw, &out.Body)
	return out
}

// restReason is the ErrorInfo reason of a REST error body.
func restReason(r restResult) string {
	details, _ := r.Body["details"].([]any)
	for _, d := range details {
		if m, ok := d.(map[string]any); ok && m["reason"] != nil {
			return fmt.Sprint(m["reason"])
		}
	}
	return ""
}

// TestSubjectGrantsEndToEnd: a caller whose grants list subjects gets
// tokens for those subjects only, over gRPC and REST, and the tokens it
// gets work upstream for that username. A scope granted for some subjects
// is not granted for the subjects of another grant.
func TestSubjectGrantsEndToEnd(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	sim, simURL := loginidSim(t, clk, k)
	billingKey, plainKey := "billing-key-5e1f0a", "plain-key-93c2d4"
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:billing
    api_key_sha256: %s
    allow:
      - {provider: loginid, scopes: [users.retrieve], subjects: ["*@billing.example.com"]}
      - {provider: loginid, scopes: [users.create], subjects: ["svc-*"]}
  - id: key:plain
    api_key_sha256: %s
    allow: [{provider: loginid, scopes: [users.retrieve]}]
providers:%s`, keyHash(billingKey), keyHash(plainKey), loginidProvider("loginid", loginidOneLine(k.pkcs8))))

	endpoint := map[string]struct{ method, url string }{
		"users.retrieve": {http.MethodGet, simURL + "/manage/users/u-1"},
		"users.create":   {http.MethodPost, simURL + "/manage/users"},
	}
	accepted := int64(0)
	for _, tc := range []struct {
		name, key, scope, subject string
		reason                    string // "" for a token
	}{
		{"allowed subject", billingKey, "users.retrieve", "alice@billing.example.com", ""},
		{"other domain", billingKey, "users.retrieve", "alice@example.com", "SUBJECT_NOT_ALLOWED"},
		{"lookalike domain", billingKey, "users.retrieve", "alice@billing.example.com.evil.test", "SUBJECT_NOT_ALLOWED"},
		{"subject of the other grant", billingKey, "users.retrieve", "svc-reports", "SUBJECT_NOT_ALLOWED"},
		{"other grant's scope for this grant's subject", billingKey, "users.create", "alice@billing.example.com", "SUBJECT_NOT_ALLOWED"},
		{"other grant", billingKey, "users.create", "svc-reports", ""},
		{"no subject", billingKey, "users.retrieve", "", ""},
		{"scope the provider does not take", billingKey, "users.delete", "alice@billing.example.com", "SCOPE_NOT_ALLOWED"},
		{"grant without subjects, with a subject", plainKey, "users.retrieve", "alice@billing.example.com", "SUBJECT_NOT_ALLOWED"},
		{"grant without subjects, without one", plainKey, "users.retrieve", "", ""},
	} {
		use := func(t *testing.T, headers map[string]string) {
			t.Helper()
			ep := endpoint[tc.scope]
			code, body := loginidUse(t, ep.method, ep.url, headers)
			if code != http.StatusOK || body["username"] != tc.subject {
				t.Errorf("vended token upstream: got %d %v, want 200 for username %q", code, body, tc.subject)
			}
			accepted++
		}
		t.Run(tc.name+"/grpc", func(t *testing.T) {
			resp, err := s.keyGet(tc.key, &tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: tc.scope, Subject: tc.subject})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("got %v, want a token", err)
				}
				use(t, resp.GetHeaders())
				return
			}
			code, info := errorInfo(t, err)
			if code != codes.PermissionDenied || info.GetReason() != tc.reason {
				t.Errorf("got %v %s (%v), want PermissionDenied %s", code, info.GetReason(), err, tc.reason)
			}
		})
		t.Run(tc.name+"/rest", func(t *testing.T) {
			q := url.Values{"scope": {tc.scope}, "subject": {tc.subject}}
			r := s.keyREST(tc.key, http.MethodGet, "/v1/providers/loginid/token?"+q.Encode(), "")
			if tc.reason == "" {
				use(t, loginidRESTHeaders(t, r))
			} else if r.Status != http.StatusForbidden || restReason(r) != tc.reason {
				t.Errorf("GET: got HTTP %d %s, want 403 %s", r.Status, r.Raw, tc.reason)
			}
			body := fmt.Sprintf(`{"provider":"loginid","scope":%q,"subject":%q}`, tc.scope, tc.subject)
			r = s.keyREST(tc.key, http.MethodPost, "/v1/token", body)
			if tc.reason == "" {
				use(t, loginidRESTHeaders(t, r))
			} else if r.Status != http.StatusForbidden || restReason(r) != tc.reason {
				t.Errorf("POST: got HTTP %d %s, want 403 %s", r.Status, r.Raw, tc.reason)
			}
		})
	}
	if got := sim.Accepted(); got != accepted {
		t.Errorf("upstream accepted %d tokens, want %d", got, accepted)
	}
}

// TestSubjectsOnAKindWithoutSubjects: `tokenvend check` (and start-up)
// refuses subjects on a grant for a provider that mints nothing per user.
func TestSubjectsOnAKindWithoutSubjects(t *testing.T) {
	t.Parallel()
	k := newLoginIDKey(t)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
callers:
  - id: key:a
    api_key_sha256: %s
    allow:
      - {provider: loginid, scopes: [users.retrieve], subjects: ["*"]}
      - {provider: kyc, subjects: ["alice@example.com"]}
      - {provider: kyc}
providers:%s%s`, keyHash("a"), loginidProvider("loginid", loginidOneLine(k.pkcs8)), kycProvider("kyc", "http://127.0.0.1:1", kycPassword))))
	if err != nil {
		t.Fatalf("config.Parse: %v (the kind decides, not the parser)", err)
	}
	for name, err := range map[string]error{"check": app.Check(cfg), "start-up": startErr(cfg)} {
		want := `callers[0].allow[1].subjects: provider "kyc" is of kind kyc, which mints no token per user`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "allow[0]") || strings.Contains(err.Error(), "allow[2]")) {
			t.Errorf("%s: got %v, want only allow[1] named", name, err)
		}
	}
}

func startErr(cfg *config.Config) error {
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err == nil {
		return fmt.Errorf("started (%s)", a.GRPCAddr())
	}
	return err
}

// TestOversizedFieldsAreBounded: a 60 kB provider name (or scope, or
// subject), from a caller identified or not, writes a bounded audit line
// and span attribute and comes back in a bounded ErrorInfo.
func TestOversizedFieldsAreBounded(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, kycURL := kycSim(t, clk)
	key := "bounded-key-2b7e"
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:a
    api_key_sha256: %s
    allow: [{provider: kyc}]
providers:%s`, keyHash(key), kycProvider("kyc", kycURL, kycPassword)))
	huge := strings.Repeat("A", 60<<10)
	half := huge[:30<<10] // two of them still fit a REST body (64 kB)
	const bound = 2 << 10 // an audit line, an ErrorInfo: well under this

	for _, tc := range []struct {
		name, key string
		req       *tokenvendv1.GetTokenRequest
		code      codes.Code
		reason    string
	}{
		{"unidentified, huge provider", "", &tokenvendv1.GetTokenRequest{Provider: huge}, codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
		{"unidentified, huge scope and subject", "", &tokenvendv1.GetTokenRequest{Provider: "kyc", Scope: half, Subject: half}, codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
		{"identified, huge provider", key, &tokenvendv1.GetTokenRequest{Provider: huge}, codes.InvalidArgument, "INVALID_PROVIDER"},
		{"identified, huge subject", key, &tokenvendv1.GetTokenRequest{Provider: "kyc", Subject: huge}, codes.InvalidArgument, "INVALID_SUBJECT"},
	} {
		t.Run(tc.name+"/grpc", func(t *testing.T) {
			before := len(s.logs.String())
			_, err := s.keyGet(tc.key, tc.req)
			code, info := errorInfo(t, err)
			if code != tc.code || info.GetReason() != tc.reason {
				t.Errorf("got %v %s, want %v %s", code, info.GetReason(), tc.code, tc.reason)
			}
			st, _ := status.FromError(err)
			if n := len(fmt.Sprint(info.GetMetadata())) + len(st.Message()); n > bound {
				t.Errorf("ErrorInfo and message: got %d bytes, want at most %d", n, bound)
			}
			if n := len(s.logs.String()) - before; n == 0 || n > bound {
				t.Errorf("log written: got %d bytes, want an audit line of at most %d", n, bound)
			}
		})
		t.Run(tc.name+"/rest", func(t *testing.T) {
			before := len(s.logs.String())
			r := s.keyREST(tc.key, http.MethodPost, "/v1/token", protoJSON(t, tc.req))
			if restReason(r) != tc.reason || len(r.Raw) > bound {
				t.Errorf("got HTTP %d, %d bytes, reason %q; want %s in at most %d bytes: %.300s", r.Status, len(r.Raw), restReason(r), tc.reason, bound, r.Raw)
			}
			if n := len(s.logs.String()) - before; n == 0 || n > bound {
				t.Errorf("log written: got %d bytes, want an audit line of at most %d", n, bound)
			}
		})
	}
	// In a REST path, it would be in the REST span's url.path: it is
	// refused before.
	t.Run("unidentified, huge provider in the path/rest", func(t *testing.T) {
		before := len(s.logs.String())
		r := s.keyREST("", http.MethodGet, "/v1/providers/"+huge+"/token", "")
		if r.Status != http.StatusRequestURITooLong || len(r.Raw) > bound || r.Body["code"] != float64(codes.InvalidArgument) {
			t.Errorf("got HTTP %d, %d bytes (%.200s), want 414 with a JSON error of at most %d bytes", r.Status, len(r.Raw), r.Raw, bound)
		}
		if n := len(s.logs.String()) - before; n > bound {
			t.Errorf("log written: got %d bytes, want at most %d", n, bound)
		}
	})
	t.Run("longest valid GET is served", func(t *testing.T) {
		q := url.Values{"scope": {strings.Repeat("%", 256)}, "subject": {strings.Repeat("é", 128)}}
		r := s.keyREST(key, http.MethodGet, "/v1/providers/"+strings.Repeat("p", 63)+"/token?"+q.Encode()+"&min_valid_for=86400s", "")
		if restReason(r) != "CALLER_NOT_ALLOWED" {
			t.Errorf("got HTTP %d %.300s, want it to reach GetToken (CALLER_NOT_ALLOWED)", r.Status, r.Raw)
		}
	})
	for _, sp := range s.spans.GetSpans() {
		for _, a := range sp.Attributes {
			if len(a.Value.Emit()) > bound {
				t.Errorf("span %s: attribute %s holds %d bytes", sp.Name, a.Key, len(a.Value.Emit()))
			}
		}
		for _, e := range sp.Events {
			for _, a := range e.Attributes {
				if len(a.Value.Emit()) > bound {
					t.Errorf("span %s, event %s: attribute %s holds %d bytes", sp.Name, e.Name, a.Key, len(a.Value.Emit()))
				}
			}
		}
	}
	if !strings.Contains(s.logs.String(), `"provider":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA...[61440 bytes]"`) {
		t.Errorf("the audit line does not show the huge provider's excerpt and length:\n%.2000s", s.logs.String())
	}
}

// TestCallerWithoutGrantLearnsNothing: an identified caller asking for a
// provider it has no grant for gets CALLER_NOT_ALLOWED, with the same
// message whether the provider exists or not, and nothing of its scopes.
func TestCallerWithoutGrantLearnsNothing(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	_, simURL := loginidSim(t, clk, k)
	key := "nogrant-key-6f3d"
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:a
    api_key_sha256: %s
    allow: [{provider: loginid, scopes: [users.retrieve]}]
providers:%s
  - name: loginid-admin
    kind: loginid
    private_key: %s
    client_id: %s
    scopes: [users.delete, credentials.force]
`, keyHash(key), loginidProvider("loginid", loginidOneLine(k.pkcs8)), loginidOneLine(k.pkcs8), loginidClientID))

	var messages []string
	for _, req := range []*tokenvendv1.GetTokenRequest{
		{Provider: "loginid-admin"},                        // exists, needs a scope
		{Provider: "loginid-admin", Scope: "users.delete"}, // exists, a scope it allows
		{Provider: "loginid-admin", Scope: "nope"},         // exists, a scope it refuses
		{Provider: "loginid-admin", Subject: "alice"},
		{Provider: "nope"},
		{Provider: "nope", Scope: "users.delete"},
	} {
		_, err := s.keyGet(key, req)
		code, info := errorInfo(t, err)
		if code != codes.PermissionDenied || info.GetReason() != "CALLER_NOT_ALLOWED" {
			t.Errorf("%v: got %v %s (%v), want PermissionDenied CALLER_NOT_ALLOWED", req, code, info.GetReason(), err)
		}
		st, _ := status.FromError(err)
		messages = append(messages, st.Message())
		r := s.keyREST(key, http.MethodPost, "/v1/token", protoJSON(t, req))
		if r.Status != http.StatusForbidden || restReason(r) != "CALLER_NOT_ALLOWED" {
			t.Errorf("%v over REST: got HTTP %d %s, want 403 CALLER_NOT_ALLOWED", req, r.Status, r.Raw)
		}
		messages = append(messages, fmt.Sprint(r.Body["message"]))
	}
	for _, m := range messages {
		if m != messages[0] {
			t.Errorf("messages differ: %q and %q", messages[0], m)
		}
		for _, scope := range []string{"users.delete", "credentials.force"} {
			if strings.Contains(m, scope) {
				t.Errorf("message %q names the provider's scope %s", m, scope)
			}
		}
	}
	// The grant it has still works.
	resp, err := s.keyGet(key, &tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.retrieve"})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := loginidUse(t, http.MethodGet, simURL+"/manage/users/u-1", resp.GetHeaders()); code != http.StatusOK {
		t.Errorf("granted token upstream: got %d %v, want 200", code, body)
	}
}

// TestUnreadableSecretNamesNoPath: a secret that cannot be read at use
// tells the caller which one, and only the log where it lives: for a
// cached login (kyc) and a per-call mint (loginid).
func TestUnreadableSecretNamesNoPath(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, kycURL := kycSim(t, clk)
	k := newLoginIDKey(t)
	dir := t.TempDir()
	pwFile, keyFile := filepath.Join(dir, "kyc-password"), filepath.Join(dir, "loginid-key.pem")
	write(t, pwFile, []byte(kycPassword))
	write(t, keyFile, []byte(k.pkcs8))
	s := startService(t, clk, fmt.Sprintf(`
providers:
  - {name: kyc, kind: kyc, base_url: %s, username: %s, password: {file: %s}}
  - {name: loginid, kind: loginid, client_id: %s, scopes: [users.retrieve], private_key: {file: %s}}
`, kycURL, kycUser, pwFile, loginidClientID, keyFile))
	if err := os.Remove(pwFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	clk.Advance(loginid.KeyRecheck) // the key file is looked at again

	for _, tc := range []struct{ provider, scope, secret, path string }{
		{"kyc", "", "password", pwFile},
		{"loginid", "users.retrieve", "private_key", keyFile},
	} {
		req := &tokenvendv1.GetTokenRequest{Provider: tc.provider, Scope: tc.scope}
		_, err := s.get(req)
		code, info := errorInfo(t, err)
		st, _ := status.FromError(err)
		if code != codes.FailedPrecondition || info.GetReason() != "SECRET_UNREADABLE" || !strings.Contains(st.Message(), tc.secret) {
			t.Errorf("%s: got %v %s %q, want FailedPrecondition SECRET_UNREADABLE naming %s", tc.provider, code, info.GetReason(), st.Message(), tc.secret)
		}
		r := s.rest(http.MethodPost, "/v1/token", protoJSON(t, req))
		for _, m := range []string{st.Message(), fmt.Sprint(info.GetMetadata()), r.Raw} {
			if strings.Contains(m, dir) {
				t.Errorf("%s: the caller is told the file path: %s", tc.provider, m)
			}
		}
		if !strings.Contains(s.logs.String(), tc.path) {
			t.Errorf("%s: the log does not name %s:\n%s", tc.provider, tc.path, s.logs.String())
		}
	}
}
