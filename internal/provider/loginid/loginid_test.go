package loginid_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/loginid"
	"github.com/tokenvend/tokenvend/internal/provider/loginid/loginidsim"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// start is the clock reading in most tests.
var start = time.Date(2031, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

func newClock() *clocktest.Clock { return clocktest.New(start) }

func newKey(tb testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func pkcs8PEM(tb testing.TB, key any) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func sec1PEM(tb testing.TB, key *ecdsa.PrivateKey) string {
	tb.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

// oneLine is a PEM as LoginID's dashboard hands it out: one line with a
// literal `\n` for each newline.
func oneLine(pemText string) string { return strings.ReplaceAll(pemText, "\n", `\n`) }

// bodyLines are the base64 lines of a PEM: what must never show in an
// error.
func bodyLines(pemText string) []string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(pemText, `\n`, "\n"), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return out
}

// newClient validates cfg (filling its defaults; users.retrieve and
// users.create when it has no scopes) and builds a client on clk.
func newClient(t *testing.T, cfg *loginid.Config, clk *clocktest.Clock) *loginid.Client {
	t.Helper()
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{"users.retrieve", "users.create"}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	c, err := loginid.New(*cfg, clk.Now)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func mint(t testing.TB, c *loginid.Client, scope, subject string) *token.Token {
	t.Helper()
	tok, err := c.Token(context.Background(), token.Request{Scope: scope, Subject: subject})
	if err != nil {
		t.Fatalf("Token(%q, %q): %v", scope, subject, err)
	}
	return tok
}

// verify checks tok by hand with crypto/ecdsa, the way JWS ES256 says, and
// returns its header and payload as raw JSON.
func verify(pub *ecdsa.PublicKey, tok string) (header, payload []byte, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("%d segments, want 3", len(parts))
	}
	dec := base64.RawURLEncoding.Strict()
	if header, err = dec.DecodeString(parts[0]); err != nil {
		return nil, nil, fmt.Errorf("header: %v", err)
	}
	if payload, err = dec.DecodeString(parts[1]); err != nil {
		return nil, nil, fmt.Errorf("payload: %v", err)
	}
	sig, err := dec.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, nil, fmt.Errorf("signature: %d bytes (%v), want 64 (r||s)", len(sig), err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, nil, errors.New("signature does not verify with the public key")
	}
	return header, payload, nil
}

// recorder is the least a simulator needs to answer into.
type recorder struct {
	header http.Header
	code   int
	body   []byte
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(b []byte) (int, error) { r.body = append(r.body, b...); return len(b), nil }

// send puts a request with tok's headers before the simulator, in process:
// the 10,000-token test sends 20,000 of them.
func send(h http.Handler, method, path string, tok *token.Token) (int, []byte) {
	req := &http.Request{Method: method, URL: &url.URL{Path: path}, Header: http.Header{}}
	for k, v := range tok.Headers {
		req.Header.Set(k, v)
	}
	w := &recorder{header: http.Header{}, code: http.StatusOK}
	h.ServeHTTP(w, req)
	return w.code, w.body
}

// call sends a request with tok's headers to the simulator and returns the
// status and the decoded body.
func call(t testing.TB, h http.Handler, method, path string, tok *token.Token) (int, map[string]string) {
	t.Helper()
	code, raw := send(h, method, path, tok)
	var body map[string]string
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object of strings: %q", method, path, raw)
	}
	return code, body
}

func TestValidateFillsDefaults(t *testing.T) {
	t.Parallel()
	cfg := loginid.Config{PrivateKey: secret.Literal(pkcs8PEM(t, newKey(t, elliptic.P256()))), Scopes: []string{"users.create"}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if cfg.ScopeClaim != "type" {
		t.Errorf("scope_claim: got %q, want type", cfg.ScopeClaim)
	}
	if cfg.TokenLifetime != 5*time.Minute {
		t.Errorf("token_lifetime: got %v, want 5m", cfg.TokenLifetime)
	}
}

func TestValidateNamesEveryBadField(t *testing.T) {
	t.Parallel()
	cfg := loginid.Config{
		PrivateKey:    secret.Literal(pkcs8PEM(t, newKey(t, elliptic.P256()))),
		Scopes:        []string{"users.create", "", "two words", "users.create", strings.Repeat("x", 257)},
		ScopeClaim:    "scp",
		TokenLifetime: -time.Second,
	}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate: got nil, want errors")
	}
	for _, want := range []string{
		"scopes[1]: must be 1 to 256 printable ASCII characters",
		"scopes[2]: must be 1 to 256 printable ASCII characters",
		`scopes[3]: "users.create" is listed twice`,
		"scopes[4]: must be 1 to 256",
		`scope_claim: must be "type"`,
		"token_lifetime: must be positive",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: got %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "private_key") {
		t.Errorf("Validate: got %q, want the good private_key not named", err)
	}

	none := loginid.Config{}
	err = none.Validate()
	for _, want := range []string{"private_key: not set", "scopes: at least one scope is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate of an empty config: got %v, want it to contain %q", err, want)
		}
	}
	if _, err := loginid.New(loginid.Config{}, time.Now); err == nil {
		t.Error("New of an unvalidated bad config: got nil error, want the validation errors")
	}
}

// yamlSecret builds a Secret the way a config file does.
func yamlSecret(t *testing.T, src string) secret.Secret {
	t.Helper()
	var s secret.Secret
	if err := yaml.Unmarshal([]byte(src), &s); err != nil {
		t.Fatalf("yaml.Unmarshal: %v", err)
	}
	return s
}

// TestEveryKeyFormatLoadsAndSigns is not parallel: it sets an environment
// variable.
func TestEveryKeyFormatLoadsAndSigns(t *testing.T) {
	key := newKey(t, elliptic.P256())
	pkcs8, sec1 := pkcs8PEM(t, key), sec1PEM(t, key)
	dir := t.TempDir()
	file := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(file, []byte(sec1), 0o600); err != nil {
		t.Fatal(err)
	}
	envName := "LOGINID_TEST_KEY_ONE_LINE"
	t.Setenv(envName, oneLine(pkcs8))
	params := "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"

	for _, c := range []struct {
		name string
		key  secret.Secret
	}{
		{"PKCS#8 multi-line", secret.Literal(pkcs8)},
		{"PKCS#8 one line with literal \\n", secret.Literal(oneLine(pkcs8))},
		{"SEC1 multi-line", secret.Literal(sec1)},
		{"SEC1 one line with literal \\n", secret.Literal(oneLine(sec1))},
		{"PKCS#8 CRLF", secret.Literal(strings.ReplaceAll(pkcs8, "\n", "\r\n"))},
		{"PKCS#8 one line with literal \\r\\n", secret.Literal(strings.ReplaceAll(pkcs8, "\n", `\r\n`))},
		{"SEC1 after EC PARAMETERS", secret.Literal(params + sec1)},
		{"SEC1 one line without its last \\n", secret.Literal(strings.TrimSuffix(oneLine(sec1), `\n`))},
		{"PKCS#8 labelled EC PRIVATE KEY", secret.Literal(strings.ReplaceAll(pkcs8, "PRIVATE KEY", "EC PRIVATE KEY"))},
		{"YAML single-quoted one line", yamlSecret(t, "'"+oneLine(pkcs8)+"'")},
		{"YAML plain one line", yamlSecret(t, oneLine(sec1))},
		{"YAML double-quoted (escapes become newlines)", yamlSecret(t, `"`+oneLine(pkcs8)+`"`)},
		{"YAML block scalar", yamlSecret(t, "|\n  "+strings.ReplaceAll(strings.TrimSpace(sec1), "\n", "\n  ")+"\n")},
		{"{env:} one line", yamlSecret(t, "{env: "+envName+"}")},
		{"{file:} multi-line", yamlSecret(t, "{file: "+file+"}")},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock()
			cl := newClient(t, &loginid.Config{PrivateKey: c.key}, clk)
			tok := mint(t, cl, "users.retrieve", "")
			if _, _, err := verify(&key.PublicKey, tok.AccessToken); err != nil {
				t.Fatalf("token: %v", err)
			}
			sim := loginidsim.New(loginidsim.Options{PublicKey: &key.PublicKey, Now: clk.Now})
			if got, body := call(t, sim, http.MethodGet, "/manage/users/u1", tok); got != http.StatusOK {
				t.Errorf("simulator: got %d %v, want 200", got, body)
			}
		})
	}
}

func TestBadKeysAreConfigErrorsThatQuoteNothing(t *testing.T) {
	t.Parallel()
	p256 := newKey(t, elliptic.P256())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&p256.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	good := pkcs8PEM(t, p256)
	der, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der[:len(der)-9]}))

	for _, c := range []struct {
		name, key, want string
	}{
		{"garbage", "this is not a key at all, not even PEM", "not a PEM private key"},
		{"bare base64 DER", strings.Join(bodyLines(good), ""), "not a PEM private key"},
		{"RSA PKCS#1", string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})), "not a P-256 key: it is an RSA key"},
		{"RSA PKCS#8", pkcs8PEM(t, rsaKey), "not a P-256 key: it is an RSA key"},
		{"RSA PKCS#8 one line", oneLine(pkcs8PEM(t, rsaKey)), "not a P-256 key: it is an RSA key"},
		{"P-384 SEC1", sec1PEM(t, newKey(t, elliptic.P384())), "not a P-256 key: it is on curve P-384"},
		{"P-384 PKCS#8 one line", oneLine(pkcs8PEM(t, newKey(t, elliptic.P384()))), "not a P-256 key: it is on curve P-384"},
		{"P-521 PKCS#8", pkcs8PEM(t, newKey(t, elliptic.P521())), "not a P-256 key: it is on curve P-521"},
		{"Ed25519 PKCS#8", pkcs8PEM(t, edKey), "not a P-256 key: it is another kind of key"},
		{"corrupt DER", corrupt, "not a P-256 key: the key is malformed"},
		{"public key", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})), "this is a public key"},
		{"encrypted", strings.ReplaceAll(good, "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"), "the key is encrypted"},
		{"certificate", strings.ReplaceAll(good, "PRIVATE KEY", "CERTIFICATE"), "not a PEM private key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := loginid.Config{PrivateKey: secret.Literal(c.key), Scopes: []string{"users.create"}}
			err := cfg.Validate()
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Path != "private_key" {
				t.Fatalf("Validate: got %v, want a private_key field error", err)
			}
			if !strings.Contains(err.Error(), "private_key: "+c.want) {
				t.Errorf("Validate: got %q, want it to contain %q", err, "private_key: "+c.want)
			}
			for _, l := range bodyLines(c.key) {
				if len(l) >= 8 && strings.Contains(err.Error(), l) {
					t.Errorf("Validate: the error quotes the key: %q", err)
				}
			}
			if _, err := loginid.New(cfg, time.Now); err == nil {
				t.Error("New: got a client, want the same error")
			}
		})
	}
}

// TestTenThousandTokens mints 10,000 tokens: every nonce differs, every
// token verifies with the public key, and the simulator accepts each once
// and refuses it the second time.
func TestTenThousandTokens(t *testing.T) {
	t.Parallel()
	const n = 10_000
	key := newKey(t, elliptic.P256())
	clk := newClock()
	c := newClient(t, &loginid.Config{PrivateKey: secret.Literal(oneLine(sec1PEM(t, key)))}, clk)
	sim := loginidsim.New(loginidsim.Options{PublicKey: &key.PublicKey, Now: clk.Now})

	toks := make([]*token.Token, n)
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				tok, err := c.Token(context.Background(), token.Request{Scope: "users.retrieve"})
				if err != nil {
					errs <- err
					return
				}
				toks[i] = tok
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Token: %v", err)
	}

	nonces := make(map[string]bool, n)
	replayed := []byte(`"code":"` + loginidsim.CodeTokenReplayed + `"`)
	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 5 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				_, payload, err := verify(&key.PublicKey, toks[i].AccessToken)
				if err != nil {
					fail("token %d: %v", i, err)
					continue
				}
				var claims struct{ Nonce string }
				if err := json.Unmarshal(payload, &claims); err != nil {
					fail("token %d payload: %v", i, err)
					continue
				}
				mu.Lock()
				dup := nonces[claims.Nonce]
				nonces[claims.Nonce] = true
				mu.Unlock()
				if dup {
					fail("token %d: nonce %q was already used", i, claims.Nonce)
				}
				if got, body := send(sim, http.MethodGet, "/manage/users/u1", toks[i]); got != http.StatusOK {
					fail("token %d first use: got %d %s, want 200", i, got, body)
				}
				if got, body := send(sim, http.MethodGet, "/manage/users/u1", toks[i]); got != http.StatusUnauthorized || !bytes.Contains(body, replayed) {
					fail("token %d replayed: got %d %s, want 401 %s", i, got, body, replayed)
				}
			}
		})
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	if len(nonces) != n {
		t.Errorf("distinct nonces: got %d, want %d", len(nonces), n)
	}
	if got, want := sim.Accepted(), int64(n); got != want {
		t.Errorf("simulator accepted: got %d, want %d", got, want)
	}
	if got, want := sim.Replays(), int64(n); got != want {
		t.Errorf("simulator replays: got %d, want %d", got, want)
	}
}

// TestTokenShape checks the header, every claim and the Token fields
// against the contract, reading the token with golang-jwt as an
// independent verifier.
func TestTokenShape(t *testing.T) {
	t.Parallel()
	key := newKey(t, elliptic.P256())
	for _, c := range []struct {
		name       string
		cfg        loginid.Config
		subject    string
		wantClaims []string
	}{
		{"defaults", loginid.Config{}, "", []string{"iat", "nonce", "type"}},
		{"scope claim and client id", loginid.Config{ScopeClaim: "scope", ClientID: "c-1\"\\é"}, "", []string{"client_id", "iat", "nonce", "scope"}},
		{"subject", loginid.Config{TokenLifetime: 90 * time.Second}, "Zoë \"Z\" O'Brien\\ <z@example.com>", []string{"iat", "nonce", "type", "username"}},
		{"subject with invalid UTF-8", loginid.Config{}, "a\xffb", []string{"iat", "nonce", "type", "username"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			c.cfg.PrivateKey = secret.Literal(pkcs8PEM(t, key))
			cl := newClient(t, &c.cfg, clk)
			tok := mint(t, cl, "users.create", c.subject)

			header, payload, err := verify(&key.PublicKey, tok.AccessToken)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(header), `{"alg":"ES256","typ":"JWT"}`; got != want {
				t.Errorf("header: got %s, want %s", got, want)
			}
			claims := jwt.MapClaims{}
			parsed, err := jwt.NewParser(jwt.WithValidMethods([]string{"ES256"}), jwt.WithTimeFunc(clk.Now), jwt.WithIssuedAt()).
				ParseWithClaims(tok.AccessToken, claims, func(*jwt.Token) (any, error) { return &key.PublicKey, nil })
			if err != nil || !parsed.Valid {
				t.Fatalf("golang-jwt: %v", err)
			}
			var names []string
			for k := range claims {
				names = append(names, k)
			}
			slices.Sort(names)
			if !slices.Equal(names, c.wantClaims) {
				t.Errorf("claims: got %v, want %v (payload %s)", names, c.wantClaims, payload)
			}
			scopeClaim := c.cfg.ScopeClaim
			if got := claims[scopeClaim]; got != "users.create" {
				t.Errorf("%s claim: got %v, want users.create", scopeClaim, got)
			}
			if got, want := claims["iat"], float64(start.Unix()); got != want {
				t.Errorf("iat: got %v, want %v", got, want)
			}
			nonce, _ := claims["nonce"].(string)
			if raw, err := base64.RawURLEncoding.DecodeString(nonce); err != nil || len(raw) < 16 {
				t.Errorf("nonce %q: %d bytes (%v), want at least 16 (128 bits)", nonce, len(raw), err)
			}
			if c.cfg.ClientID != "" && claims["client_id"] != c.cfg.ClientID {
				t.Errorf("client_id: got %v, want %q", claims["client_id"], c.cfg.ClientID)
			}
			if c.subject != "" {
				want := strings.ToValidUTF8(c.subject, "\uFFFD")
				if claims["username"] != want {
					t.Errorf("username: got %v, want %q", claims["username"], want)
				}
			}

			if tok.Type != "Bearer" {
				t.Errorf("Type: got %q, want Bearer", tok.Type)
			}
			if want := map[string]string{"Authorization": "Bearer " + tok.AccessToken}; !mapsEqual(tok.Headers, want) {
				t.Errorf("Headers: got %v, want %v", tok.Headers, want)
			}
			iat := start.Truncate(time.Second)
			if !tok.IssuedAt.Equal(iat) {
				t.Errorf("IssuedAt: got %v, want iat %v", tok.IssuedAt, iat)
			}
			if want := iat.Add(c.cfg.TokenLifetime); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry: got %v, want iat + token_lifetime = %v", tok.Expiry, want)
			}

			sim := loginidsim.New(loginidsim.Options{PublicKey: &key.PublicKey, ScopeClaim: c.cfg.ScopeClaim, ClientID: c.cfg.ClientID, Now: clk.Now})
			got, body := call(t, sim, http.MethodPost, "/manage/users", tok)
			if got != http.StatusOK || body["username"] != claims["username"] && c.subject != "" {
				t.Errorf("simulator: got %d %v, want 200 naming the username", got, body)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSimulatorJudgesScopeAndTime: a token for one scope is refused on an
// endpoint of another, and a token past its lifetime is refused.
func TestSimulatorJudgesScopeAndTime(t *testing.T) {
	t.Parallel()
	key := newKey(t, elliptic.P256())
	clk := newClock()
	c := newClient(t, &loginid.Config{PrivateKey: secret.Literal(pkcs8PEM(t, key)), ClientID: "client-1"}, clk)
	sim := loginidsim.New(loginidsim.Options{PublicKey: &key.PublicKey, ClientID: "client-1", Now: clk.Now})

	if got, body := call(t, sim, http.MethodGet, "/manage/users/u1", mint(t, c, "users.create", "")); got != http.StatusForbidden {
		t.Errorf("users.create token on GET /manage/users/{id}: got %d %v, want 403", got, body)
	}
	tok := mint(t, c, "users.retrieve", "")
	clk.Advance(5*time.Minute + time.Second)
	if got, body := call(t, sim, http.MethodGet, "/manage/users/u1", tok); got != http.StatusUnauthorized || body["code"] != loginidsim.CodeTokenExpired {
		t.Errorf("token used past iat + 5m: got %d %v, want 401 %s", got, body, loginidsim.CodeTokenExpired)
	}
	if got := clk.Now().Sub(tok.Expiry); got <= 0 {
		t.Errorf("Expiry %v is not before the time the upstream refused it (%v)", tok.Expiry, clk.Now())
	}
	if got, body := call(t, sim, http.MethodGet, "/manage/users/u1", mint(t, c, "users.retrieve", "")); got != http.StatusOK {
		t.Errorf("a fresh token: got %d %v, want 200", got, body)
	}
}

func TestScopeIsCheckedAgainByTheSource(t *testing.T) {
	t.Parallel()
	c := newClient(t, &loginid.Config{PrivateKey: secret.Literal(pkcs8PEM(t, newKey(t, elliptic.P256())))}, newClock())
	for _, tc := range []struct {
		scope string
		kind  token.Kind
	}{
		{"", token.KindInvalid},
		{"users.delete", token.KindDenied},
	} {
		tok, err := c.Token(context.Background(), token.Request{Scope: tc.scope})
		if tok != nil || token.KindOf(err) != tc.kind {
			t.Errorf("Token(scope %q): got %v, %v, want kind %d", tc.scope, tok, err, tc.kind)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Token(ctx, token.Request{Scope: "users.create"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Token with a cancelled context: got %v, want context.Canceled", err)
	}
}

// TestRotatedKeyFileTakesEffect: a {file:} key is looked at again every
// KeyRecheck, and a broken or missing file is an error that quotes nothing,
// until it is fixed.
func TestRotatedKeyFileTakesEffect(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "key.pem")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, rotated := newKey(t, elliptic.P256()), newKey(t, elliptic.P256())
	write(sec1PEM(t, old))
	clk := newClock()
	c := newClient(t, &loginid.Config{PrivateKey: yamlSecret(t, "{file: "+file+"}")}, clk)

	signedBy := func(want *ecdsa.PrivateKey, what string) {
		t.Helper()
		tok := mint(t, c, "users.create", "")
		if _, _, err := verify(&want.PublicKey, tok.AccessToken); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	signedBy(old, "before the rotation")
	rotatedPEM := oneLine(pkcs8PEM(t, rotated))
	write(rotatedPEM)
	clk.Advance(loginid.KeyRecheck - time.Second)
	signedBy(old, "rotated, before KeyRecheck")
	clk.Advance(time.Second)
	// Concurrent mints across the recheck: each is signed by one key or
	// the other, and the race detector watches the swap.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			tok, err := c.Token(context.Background(), token.Request{Scope: "users.create"})
			if err != nil {
				t.Errorf("Token: %v", err)
				return
			}
			if _, _, err := verify(&rotated.PublicKey, tok.AccessToken); err != nil {
				t.Errorf("rotated, at KeyRecheck: %v", err)
			}
		})
	}
	wg.Wait()

	for _, c2 := range []struct {
		name, content, reason, want string
	}{
		{"garbled", "-----BEGIN PRIVATE KEY-----\nAAAA" + bodyLines(rotatedPEM)[1] + "\n-----END PRIVATE KEY-----\n", loginid.ReasonKeyUnusable, "not a P-256 key"},
		{"RSA", "-----BEGIN RSA PRIVATE KEY-----\n" + bodyLines(rotatedPEM)[1] + "\n-----END RSA PRIVATE KEY-----\n", loginid.ReasonKeyUnusable, "it is an RSA key"},
		{"removed", "", token.ReasonSecretUnreadable, "cannot read secret file"},
	} {
		if c2.content == "" {
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
		} else {
			write(c2.content)
		}
		clk.Advance(loginid.KeyRecheck)
		for range 2 { // a broken key stays an error; it is not skipped until the next recheck
			tok, err := c.Token(context.Background(), token.Request{Scope: "users.create"})
			var e *token.Error
			if tok != nil || !errors.As(err, &e) || e.Kind != token.KindRejected || e.Reason != c2.reason || !strings.Contains(err.Error(), c2.want) {
				t.Fatalf("%s key file: got %v, %v, want a rejection %s saying %q", c2.name, tok, err, c2.reason, c2.want)
			}
			for _, l := range bodyLines(rotatedPEM) {
				if strings.Contains(err.Error(), l) {
					t.Errorf("%s key file: the error quotes the key: %q", c2.name, err)
				}
			}
		}
	}
	write(sec1PEM(t, old))
	signedBy(old, "fixed again, at once")
}
