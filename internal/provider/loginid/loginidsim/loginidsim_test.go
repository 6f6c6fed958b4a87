package loginidsim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
)

// start is the fake clock's initial time.
var start = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// Keys are generated once: the credential the simulator trusts, and another
// one a forger might hold.
var (
	credKey  = sync.OnceValue(func() *ecdsa.PrivateKey { return genKey(elliptic.P256()) })
	otherKey = sync.OnceValue(func() *ecdsa.PrivateKey { return genKey(elliptic.P256()) })
)

func genKey(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

type fixture struct {
	sim   *Server
	ts    *httptest.Server
	clock *clocktest.Clock
}

// newFixture starts a simulator trusting credKey, on a real listener, with
// a fake clock at start unless o.Now is set.
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	f := &fixture{clock: clocktest.New(start)}
	if o.PublicKey == nil {
		o.PublicKey = &credKey().PublicKey
	}
	if o.Now == nil {
		o.Now = f.clock.Now
	}
	f.sim = New(o)
	f.ts = httptest.NewServer(f.sim)
	t.Cleanup(f.ts.Close)
	return f
}

// claims returns the claims LoginID's SDKs put in a token for scope, issued
// now by the fixture's clock, with a fresh random nonce.
func (f *fixture) claims(scope string) jwt.MapClaims {
	return jwt.MapClaims{"type": scope, "nonce": rand.Text(), "iat": f.clock.Now().Unix()}
}

// mint signs claims with key using golang-jwt, the way a client would.
func mint(t testing.TB, key *ecdsa.PrivateKey, c jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodES256, c).SignedString(key)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	return tok
}

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signRaw builds a token by hand from literal header and payload JSON,
// signed ES256 (r||s) with key.
func signRaw(t testing.TB, key *ecdsa.PrivateKey, header, payload string) string {
	t.Helper()
	in := enc([]byte(header)) + "." + enc([]byte(payload))
	return in + "." + enc(rawSig(t, key, in))
}

func rawSig(t testing.TB, key *ecdsa.PrivateKey, signingInput string) []byte {
	t.Helper()
	d := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends method path with the given Authorization header values.
func (f *fixture) do(t testing.TB, method, path string, auth ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, f.ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	return send(t, f.ts.Client(), req)
}

func send(t testing.TB, c *http.Client, req *http.Request) answer {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &a.body)
	return a
}

// bearer calls method path with token as a bearer token.
func (f *fixture) bearer(t testing.TB, method, path, token string) answer {
	t.Helper()
	return f.do(t, method, path, "Bearer "+token)
}

// wantOK fails unless a is a 200 naming endpoint.
func wantOK(t testing.TB, a answer, endpoint string) {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("got status %d %s, want 200", a.status, a.raw)
	}
	if got := a.body["endpoint"]; got != endpoint {
		t.Errorf("got endpoint %v, want %q", got, endpoint)
	}
}

// wantErr fails unless a is status with a JSON {code, message} body.
func wantErr(t testing.TB, a answer, status int, code string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("got status %d %s, want %d %s", a.status, a.raw, status, code)
	}
	if got := a.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("got Content-Type %q, want application/json", got)
	}
	if got := a.body["code"]; got != code {
		t.Errorf("got code %v, want %q", got, code)
	}
	if msg, _ := a.body["message"].(string); msg == "" {
		t.Errorf("got message %v, want a non-empty string", a.body["message"])
	}
	if len(a.body) != 2 {
		t.Errorf("got body %s, want only code and message", a.raw)
	}
}

func TestEveryEndpointAcceptsItsScope(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	for _, tc := range []struct{ method, path, endpoint, scope string }{
		{"POST", "/manage/users", "POST /manage/users", "users.create"},
		{"GET", "/manage/users/u-1", "GET /manage/users/{id}", "users.retrieve"},
		{"DELETE", "/manage/users/u-1", "DELETE /manage/users/{id}", "users.delete"},
		{"PUT", "/manage/users/u-1/activate", "PUT /manage/users/{id}/activate", "users.activate"},
		{"PUT", "/manage/users/u-1/deactivate", "PUT /manage/users/{id}/deactivate", "users.deactivate"},
		{"GET", "/manage/users/u-1/credentials", "GET /manage/users/{id}/credentials", "credentials.list"},
		{"POST", "/manage/users/u-1/credentials", "POST /manage/users/{id}/credentials", "credentials.add"},
		{"POST", "/manage/users/u-1/credentials/force", "POST /manage/users/{id}/credentials/force", "credentials.force"},
		{"PUT", "/manage/users/u-1/credentials/c-9/rename", "PUT /manage/users/{id}/credentials/{credential}/rename", "credentials.rename"},
		{"DELETE", "/manage/users/u-1/credentials/c-9", "DELETE /manage/users/{id}/credentials/{credential}", "credentials.revoke"},
		{"POST", "/codes/generate", "POST /codes/generate", "codes.generate"},
		{"POST", "/codes/authorize", "POST /codes/authorize", "codes.authorize"},
		{"POST", "/codes/invalidate", "POST /codes/invalidate", "codes.invalidate"},
		{"POST", "/tx", "POST /tx", "tx.create"},
		{"POST", "/auth/register", "POST /auth/register", "auth.register"},
		{"POST", "/auth/login", "POST /auth/login", "auth.login"},
	} {
		t.Run(tc.endpoint, func(t *testing.T) {
			t.Parallel()
			a := f.bearer(t, tc.method, tc.path, mint(t, credKey(), f.claims(tc.scope)))
			wantOK(t, a, tc.endpoint)
			if got := a.body["scope"]; got != tc.scope {
				t.Errorf("got scope %v, want %q", got, tc.scope)
			}
			if _, ok := a.body["username"]; ok {
				t.Errorf("got username in %s, want none (the token has none)", a.raw)
			}
		})
	}
	t.Cleanup(func() {
		// Every default endpoint is in the table above.
		if got, want := f.sim.Accepted(), int64(len(DefaultEndpoints())); got != want {
			t.Errorf("got %d endpoints accepted, want all %d default endpoints", got, want)
		}
	})
}

func TestAcceptedTokenShapes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	iat := start.Unix()
	for _, tc := range []struct {
		name  string
		auth  func() string
		check func(t *testing.T, a answer)
	}{
		{"golang-jwt minted", func() string {
			return "Bearer " + mint(t, credKey(), f.claims("users.retrieve"))
		}, nil},
		{"hand minted, members reordered", func() string {
			return "Bearer " + signRaw(t, credKey(), `{"typ":"JWT","alg":"ES256"}`,
				`{"iat":`+itoa(iat)+`,"nonce":"n-hand","type":"users.retrieve"}`)
		}, nil},
		{"scheme is case-insensitive", func() string {
			return "bearer " + mint(t, credKey(), f.claims("users.retrieve"))
		}, nil},
		{"username echoed", func() string {
			c := f.claims("users.retrieve")
			c["username"] = "alice@example.com"
			return "Bearer " + mint(t, credKey(), c)
		}, func(t *testing.T, a answer) {
			if got := a.body["username"]; got != "alice@example.com" {
				t.Errorf("got username %v, want alice@example.com", got)
			}
		}},
		{"user_id echoed", func() string {
			c := f.claims("users.retrieve")
			c["user_id"] = "u-42"
			return "Bearer " + mint(t, credKey(), c)
		}, func(t *testing.T, a answer) {
			if got := a.body["user_id"]; got != "u-42" {
				t.Errorf("got user_id %v, want u-42", got)
			}
		}},
		{"unknown claims ignored", func() string {
			c := f.claims("users.retrieve")
			c["aud"] = "somewhere"
			c["sub"] = "someone"
			return "Bearer " + mint(t, credKey(), c)
		}, nil},
		{"exp in the future", func() string {
			c := f.claims("users.retrieve")
			c["exp"] = iat + 60
			return "Bearer " + mint(t, credKey(), c)
		}, nil},
		{"client_id ignored when none is configured", func() string {
			c := f.claims("users.retrieve")
			c["client_id"] = "anything"
			return "Bearer " + mint(t, credKey(), c)
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := f.do(t, "GET", "/manage/users/u-1", tc.auth())
			wantOK(t, a, "GET /manage/users/{id}")
			if got := a.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("got Content-Type %q, want application/json", got)
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func TestRejections(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{ClientID: "client-1"})
	key := credKey()
	iat := itoa(start.Unix())
	es := `{"alg":"ES256","typ":"JWT"}`
	// payload returns valid claims for users.retrieve with a fresh nonce,
	// plus extra members.
	payload := func(extra string) string {
		p := `{"type":"users.retrieve","nonce":"` + rand.Text() + `","iat":` + iat + `,"client_id":"client-1"`
		if extra != "" {
			p += "," + extra
		}
		return p + "}"
	}
	good := func() jwt.MapClaims {
		c := f.claims("users.retrieve")
		c["client_id"] = "client-1"
		return c
	}
	with := func(k string, v any) jwt.MapClaims {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	for _, tc := range []struct {
		name   string
		auth   []string
		status int
		code   string
	}{
		// The Authorization header itself.
		{"no header", nil, 401, CodeUnauthorized},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, 401, CodeUnauthorized},
		{"bearer without token", []string{"Bearer "}, 401, CodeUnauthorized},
		{"bare token without scheme", []string{mint(t, key, good())}, 401, CodeUnauthorized},
		{"two headers", []string{"Bearer " + mint(t, key, good()), "Bearer " + mint(t, key, good())}, 401, CodeUnauthorized},

		// The compact serialisation.
		{"one segment", []string{"Bearer abc"}, 401, CodeInvalidToken},
		{"four segments", []string{"Bearer " + mint(t, key, good()) + ".abc"}, 401, CodeInvalidToken},
		{"empty signature", []string{"Bearer " + enc([]byte(es)) + "." + enc([]byte(payload(""))) + "."}, 401, CodeInvalidToken},
		{"padded payload", []string{"Bearer " + padPayload(signRaw(t, key, es, payload(`"pad":"xx"`)))}, 401, CodeInvalidToken},
		{"standard base64 alphabet", []string{"Bearer +" + mint(t, key, good())}, 401, CodeInvalidToken},

		// The header: only ES256 / JWT.
		{"alg none", []string{"Bearer " + enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc([]byte(payload(""))) + "." + enc([]byte("x"))}, 401, CodeInvalidToken},
		{"alg none, golang-jwt", []string{"Bearer " + noneToken(t, good())}, 401, CodeInvalidToken},
		{"HS256 keyed with the public key", []string{"Bearer " + hsToken(t, pubPEM, good())}, 401, CodeInvalidToken},
		{"HS256 keyed with the raw public key", []string{"Bearer " + hsToken(t, pubDER, good())}, 401, CodeInvalidToken},
		{"RS256 header", []string{"Bearer " + signRaw(t, key, `{"alg":"RS256","typ":"JWT"}`, payload(""))}, 401, CodeInvalidToken},
		{"ES384 header", []string{"Bearer " + signRaw(t, key, `{"alg":"ES384","typ":"JWT"}`, payload(""))}, 401, CodeInvalidToken},
		{"lower-case alg", []string{"Bearer " + signRaw(t, key, `{"alg":"es256","typ":"JWT"}`, payload(""))}, 401, CodeInvalidToken},
		{"typ missing", []string{"Bearer " + signRaw(t, key, `{"alg":"ES256"}`, payload(""))}, 401, CodeInvalidToken},
		{"typ not JWT", []string{"Bearer " + signRaw(t, key, `{"alg":"ES256","typ":"JOSE"}`, payload(""))}, 401, CodeInvalidToken},
		{"kid in header", []string{"Bearer " + signRaw(t, key, `{"alg":"ES256","typ":"JWT","kid":"k1"}`, payload(""))}, 401, CodeInvalidToken},
		{"duplicate alg", []string{"Bearer " + signRaw(t, key, `{"alg":"none","alg":"ES256","typ":"JWT"}`, payload(""))}, 401, CodeInvalidToken},
		{"header not JSON", []string{"Bearer " + signRaw(t, key, `alg=ES256`, payload(""))}, 401, CodeInvalidToken},

		// The signature.
		{"signed by another key", []string{"Bearer " + mint(t, otherKey(), good())}, 401, CodeInvalidSignature},
		{"tampered payload", []string{"Bearer " + tamper(t, mint(t, key, good()))}, 401, CodeInvalidSignature},
		{"DER signature", []string{"Bearer " + derToken(t, key, es, payload(""))}, 401, CodeInvalidSignature},
		{"truncated signature", []string{"Bearer " + truncateSig(t, mint(t, key, good()))}, 401, CodeInvalidSignature},
		{"s with a leading zero byte", []string{"Bearer " + padS(t, mint(t, key, good()))}, 401, CodeInvalidSignature},
		{"zero signature", []string{"Bearer " + enc([]byte(es)) + "." + enc([]byte(payload(""))) + "." + enc(make([]byte, 64))}, 401, CodeInvalidSignature},

		// The claims' syntax.
		{"payload not JSON", []string{"Bearer " + signRaw(t, key, es, `nonce=1`)}, 401, CodeInvalidToken},
		{"payload an array", []string{"Bearer " + signRaw(t, key, es, `[1]`)}, 401, CodeInvalidToken},
		{"data after payload", []string{"Bearer " + signRaw(t, key, es, payload("")+"{}")}, 401, CodeInvalidToken},
		{"duplicate nonce member", []string{"Bearer " + signRaw(t, key, es, payload(`"nonce":"other"`))}, 401, CodeInvalidToken},
		{"nonce missing", []string{"Bearer " + mint(t, key, with("nonce", nil))}, 401, CodeInvalidToken},
		{"nonce empty", []string{"Bearer " + mint(t, key, with("nonce", ""))}, 401, CodeInvalidToken},
		{"nonce a number", []string{"Bearer " + mint(t, key, with("nonce", 12345))}, 401, CodeInvalidToken},
		{"iat missing", []string{"Bearer " + mint(t, key, with("iat", nil))}, 401, CodeInvalidToken},
		{"iat a string", []string{"Bearer " + mint(t, key, with("iat", iat))}, 401, CodeInvalidToken},
		{"iat fractional", []string{"Bearer " + mint(t, key, with("iat", float64(start.Unix())+0.5))}, 401, CodeInvalidToken},
		{"iat with exponent", []string{"Bearer " + signRaw(t, key, es, `{"type":"users.retrieve","nonce":"n-exp","iat":1.7e9,"client_id":"client-1"}`)}, 401, CodeInvalidToken},
		{"exp a string", []string{"Bearer " + mint(t, key, with("exp", "soon"))}, 401, CodeInvalidToken},
		{"scope claim a list", []string{"Bearer " + mint(t, key, with("type", []string{"users.retrieve"}))}, 401, CodeInvalidToken},
		{"client_id a number", []string{"Bearer " + mint(t, key, with("client_id", 1))}, 401, CodeInvalidToken},
		{"username a number", []string{"Bearer " + mint(t, key, with("username", 1))}, 401, CodeInvalidToken},

		// Time.
		{"iat older than 5 minutes", []string{"Bearer " + mint(t, key, with("iat", start.Add(-5*time.Minute-time.Second).Unix()))}, 401, CodeTokenExpired},
		{"iat an hour old", []string{"Bearer " + mint(t, key, with("iat", start.Add(-time.Hour).Unix()))}, 401, CodeTokenExpired},
		{"iat beyond the skew", []string{"Bearer " + mint(t, key, with("iat", start.Add(31*time.Second).Unix()))}, 401, CodeTokenNotYetValid},
		{"exp passed", []string{"Bearer " + mint(t, key, with("exp", start.Unix()))}, 401, CodeTokenExpired},

		// Client and scope.
		{"client_id missing", []string{"Bearer " + mint(t, key, with("client_id", nil))}, 401, CodeInvalidClient},
		{"client_id wrong", []string{"Bearer " + mint(t, key, with("client_id", "client-2"))}, 401, CodeInvalidClient},
		{"scope of another endpoint", []string{"Bearer " + mint(t, key, with("type", "users.delete"))}, 403, CodeForbidden},
		{"scope missing", []string{"Bearer " + mint(t, key, with("type", nil))}, 403, CodeForbidden},
		{"scope empty", []string{"Bearer " + mint(t, key, with("type", ""))}, 403, CodeForbidden},
		{"scope in the scope claim, type expected", []string{"Bearer " + scopeClaimToken(t, good())}, 403, CodeForbidden},
		{"scope differs in case", []string{"Bearer " + mint(t, key, with("type", "Users.Retrieve"))}, 403, CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			wantErr(t, f.do(t, "GET", "/manage/users/u-1", tc.auth...), tc.status, tc.code)
		})
	}
}

// padPayload adds base64 padding to a token's payload segment.
func padPayload(tok string) string {
	p := strings.Split(tok, ".")
	for len(p[1])%4 != 0 {
		p[1] += "="
	}
	return strings.Join(p, ".")
}

func noneToken(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	// golang-jwt leaves the signature empty; give it one so that the
	// header check, not the shape check, is what refuses it.
	return tok + enc([]byte("sig"))
}

// hsToken is the classic algorithm-confusion forgery: HS256 keyed with the
// public key, which a verifier that trusts the header's alg would accept.
func hsToken(t *testing.T, secret []byte, c jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tamper raises the token's scope after it was signed.
func tamper(t *testing.T, tok string) string {
	t.Helper()
	p := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p[1])
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), `"users.retrieve"`, `"users.delete"`, 1)
	if s == string(b) {
		t.Fatal("tamper: nothing replaced")
	}
	p[1] = enc([]byte(s))
	return strings.Join(p, ".")
}

// derToken signs correctly but encodes the signature as ASN.1 DER, as
// crypto/ecdsa.SignASN1 and many non-JOSE libraries do.
func derToken(t *testing.T, key *ecdsa.PrivateKey, header, payload string) string {
	t.Helper()
	in := enc([]byte(header)) + "." + enc([]byte(payload))
	d := sha256.Sum256([]byte(in))
	sig, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + enc(sig)
}

func truncateSig(t *testing.T, tok string) string {
	t.Helper()
	p := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p[2])
	if err != nil {
		t.Fatal(err)
	}
	p[2] = enc(b[:63])
	return strings.Join(p, ".")
}

// padS makes the signature 65 bytes by writing s on 33 bytes: the same
// integers, in a form JWS does not allow.
func padS(t *testing.T, tok string) string {
	t.Helper()
	p := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p[2])
	if err != nil {
		t.Fatal(err)
	}
	p[2] = enc(append(append(b[:32:32], 0), b[32:]...))
	return strings.Join(p, ".")
}

// scopeClaimToken moves the scope from "type" to "scope", as newer docs
// name it.
func scopeClaimToken(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	c["scope"] = c["type"]
	delete(c, "type")
	return mint(t, credKey(), c)
}

func TestScopeClaimOption(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{ScopeClaim: "scope"})
	for _, tc := range []struct {
		name   string
		claim  string
		status int
	}{
		{"scope claim", "scope", 200},
		{"type claim", "type", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := jwt.MapClaims{tc.claim: "users.create", "nonce": rand.Text(), "iat": start.Unix()}
			a := f.bearer(t, "POST", "/manage/users", mint(t, credKey(), c))
			if a.status != tc.status {
				t.Errorf("got status %d %s, want %d", a.status, a.raw, tc.status)
			}
		})
	}
}

func TestClientIDAccepted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{ClientID: "client-1"})
	c := f.claims("users.create")
	c["client_id"] = "client-1"
	wantOK(t, f.bearer(t, "POST", "/manage/users", mint(t, credKey(), c)), "POST /manage/users")
}

func TestTimeWindow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		opts    Options
		iat     time.Duration // relative to the clock when the token is sent
		advance time.Duration // clock moved after minting at start
		status  int
		code    string
	}{
		{"exactly MaxAge old", Options{}, 0, 5 * time.Minute, 200, ""},
		{"MaxAge plus a second", Options{}, 0, 5*time.Minute + time.Second, 401, CodeTokenExpired},
		{"MaxAge plus a nanosecond", Options{}, 0, 5*time.Minute + 1, 401, CodeTokenExpired},
		{"exactly Skew ahead", Options{}, 30 * time.Second, 0, 200, ""},
		{"Skew plus a second ahead", Options{}, 31 * time.Second, 0, 401, CodeTokenNotYetValid},
		{"custom MaxAge, inside", Options{MaxAge: time.Minute}, 0, time.Minute, 200, ""},
		{"custom MaxAge, outside", Options{MaxAge: time.Minute}, 0, time.Minute + time.Second, 401, CodeTokenExpired},
		{"custom Skew, inside", Options{Skew: 2 * time.Minute}, 2 * time.Minute, 0, 200, ""},
		{"custom Skew, outside", Options{Skew: 2 * time.Minute}, 2*time.Minute + time.Second, 0, 401, CodeTokenNotYetValid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, tc.opts)
			c := f.claims("users.retrieve")
			c["iat"] = start.Add(tc.iat).Unix()
			tok := mint(t, credKey(), c)
			f.clock.Advance(tc.advance)
			a := f.bearer(t, "GET", "/manage/users/u-1", tok)
			if tc.status == 200 {
				wantOK(t, a, "GET /manage/users/{id}")
				return
			}
			wantErr(t, a, tc.status, tc.code)
		})
	}
}

func TestFutureTokenAcceptedOnceTheClockCatchesUp(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	c := f.claims("users.retrieve")
	c["iat"] = start.Add(31 * time.Second).Unix()
	tok := mint(t, credKey(), c)
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", tok), 401, CodeTokenNotYetValid)
	f.clock.Advance(time.Second)
	// Refused for its time, the token did not burn its nonce.
	wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", tok), "GET /manage/users/{id}")
}

func TestReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	c := f.claims("users.retrieve")
	tok := mint(t, credKey(), c)

	wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", tok), "GET /manage/users/{id}")
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", tok), 401, CodeTokenReplayed)
	// Another endpoint, a moment later: still the same nonce.
	f.clock.Advance(time.Minute)
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-2", tok), 401, CodeTokenReplayed)
	// A fresh signature over new claims with the old nonce is a replay too:
	// the nonce, not the token string, is what is single use.
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", mint(t, credKey(), c)), 401, CodeTokenReplayed)
	// So is the malleated signature (r, n-s), which ECDSA also accepts.
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", malleate(t, tok)), 401, CodeTokenReplayed)

	if got := f.sim.Accepted(); got != 1 {
		t.Errorf("got Accepted %d, want 1", got)
	}
	if got := f.sim.Rejected(); got != 4 {
		t.Errorf("got Rejected %d, want 4", got)
	}
	if got := f.sim.Replays(); got != 4 {
		t.Errorf("got Replays %d, want 4", got)
	}
}

// malleate returns tok with its signature's s replaced by n-s.
func malleate(t *testing.T, tok string) string {
	t.Helper()
	p := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p[2])
	if err != nil {
		t.Fatal(err)
	}
	s := new(big.Int).SetBytes(b[32:])
	s.Sub(elliptic.P256().Params().N, s)
	s.FillBytes(b[32:])
	p[2] = enc(b)
	return strings.Join(p, ".")
}

func TestWhichRefusalsBurnTheNonce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		first func(f *fixture, nonce string) string // the refused token
		code  string
		burns bool
	}{
		{"bad signature", func(f *fixture, n string) string {
			return mint(t, otherKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": n, "iat": start.Unix()})
		}, CodeInvalidSignature, false},
		{"expired", func(f *fixture, n string) string {
			return mint(t, credKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": n, "iat": start.Add(-time.Hour).Unix()})
		}, CodeTokenExpired, false},
		{"in the future", func(f *fixture, n string) string {
			return mint(t, credKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": n, "iat": start.Add(time.Hour).Unix()})
		}, CodeTokenNotYetValid, false},
		{"wrong scope", func(f *fixture, n string) string {
			return mint(t, credKey(), jwt.MapClaims{"type": "users.delete", "nonce": n, "iat": start.Unix(), "client_id": "client-1"})
		}, CodeForbidden, true},
		{"wrong client_id", func(f *fixture, n string) string {
			return mint(t, credKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": n, "iat": start.Unix(), "client_id": "nope"})
		}, CodeInvalidClient, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Options{ClientID: "client-1"})
			nonce := rand.Text()
			a := f.bearer(t, "GET", "/manage/users/u-1", tc.first(f, nonce))
			status := 401
			if tc.code == CodeForbidden {
				status = 403
			}
			wantErr(t, a, status, tc.code)

			good := mint(t, credKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": nonce, "iat": start.Unix(), "client_id": "client-1"})
			a = f.bearer(t, "GET", "/manage/users/u-1", good)
			if tc.burns {
				wantErr(t, a, 401, CodeTokenReplayed)
			} else {
				wantOK(t, a, "GET /manage/users/{id}")
			}
		})
	}
}

func TestNoncesAreForgottenAfterTheirWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	nonce := rand.Text()
	old := mint(t, credKey(), jwt.MapClaims{"type": "users.retrieve", "nonce": nonce, "iat": start.Unix()})
	wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", old), "GET /manage/users/{id}")

	// At the last moment the token could be accepted, it is a replay.
	f.clock.Advance(5 * time.Minute)
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", old), 401, CodeTokenReplayed)
	// Until MaxAge+Skew the nonce is kept, even though the token is expired.
	f.clock.Advance(30 * time.Second)
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", old), 401, CodeTokenExpired)
	if got := f.sim.nonces.size(); got != 1 {
		t.Errorf("at iat+MaxAge+Skew: got %d nonces remembered, want 1", got)
	}

	// Past MaxAge+Skew the next accepted token makes the store forget it.
	f.clock.Advance(time.Second)
	fresh := mint(t, credKey(), f.claims("users.retrieve"))
	wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", fresh), "GET /manage/users/{id}")
	if got := f.sim.nonces.size(); got != 1 {
		t.Errorf("after the window: got %d nonces remembered, want 1 (only the fresh one)", got)
	}
	// The old token stays refused, as expired rather than replayed.
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", old), 401, CodeTokenExpired)
}

func TestNonceStoreStaysBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MaxAge: time.Minute, Skew: time.Second})
	// One token a second for ten minutes: no more than a window's worth
	// (61s of iat plus 1s of skew) may be remembered at any time.
	for i := range 600 {
		wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", mint(t, credKey(), f.claims("users.retrieve"))), "GET /manage/users/{id}")
		if got := f.sim.nonces.size(); got > 63 {
			t.Fatalf("after %d tokens: got %d nonces remembered, want at most 63", i+1, got)
		}
		f.clock.Advance(time.Second)
	}
	if got, want := len(f.sim.nonces.exp), f.sim.nonces.size(); got != want {
		t.Errorf("got heap of %d, want %d like the map", got, want)
	}
}

func TestConcurrentDistinctNonces(t *testing.T) {
	t.Parallel()
	const n = 10000
	f := newFixture(t, Options{})
	toks := make([]string, n)
	for i := range toks {
		toks[i] = mint(t, credKey(), f.claims("credentials.list"))
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}

	// Each round sends every token from 32 goroutines: the first round must
	// accept each exactly once, the second must refuse each as a replay.
	run := func(wantStatus int) {
		var wg sync.WaitGroup
		next := make(chan string)
		errs := make(chan string, n)
		for range 32 {
			wg.Go(func() {
				for tok := range next {
					req, _ := http.NewRequest("GET", f.ts.URL+"/manage/users/u-1/credentials", nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					resp, err := client.Do(req)
					if err != nil {
						errs <- err.Error()
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != wantStatus {
						errs <- http.StatusText(resp.StatusCode)
					}
				}
			})
		}
		for _, tok := range toks {
			next <- tok
		}
		close(next)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatalf("got %s, want status %d", e, wantStatus)
		}
	}
	run(http.StatusOK)
	run(http.StatusUnauthorized)

	if got := f.sim.Accepted(); got != n {
		t.Errorf("got Accepted %d, want %d", got, n)
	}
	if got := f.sim.Replays(); got != n {
		t.Errorf("got Replays %d, want %d", got, n)
	}
	if got := f.sim.Rejected(); got != n {
		t.Errorf("got Rejected %d, want %d", got, n)
	}
}

func TestSameTokenRacedIsAcceptedOnce(t *testing.T) {
	t.Parallel()
	const n = 50
	f := newFixture(t, Options{})
	tok := mint(t, credKey(), f.claims("users.retrieve"))
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", f.ts.URL+"/manage/users/u-1", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := f.ts.Client().Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[200] != 1 || count[401] != n-1 {
		t.Errorf("got statuses %v, want one 200 and %d 401", count, n-1)
	}
	if got := f.sim.Replays(); got != n-1 {
		t.Errorf("got Replays %d, want %d", got, n-1)
	}
}

func TestRouting(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	for _, tc := range []struct {
		name, method, path string
		status             int
		code, allow        string
	}{
		{"unknown path", "GET", "/nope", 404, CodeNotFound, ""},
		{"root", "GET", "/", 404, CodeNotFound, ""},
		{"trailing slash", "POST", "/manage/users/", 404, CodeNotFound, ""},
		{"empty id", "PUT", "/manage/users//activate", 404, CodeNotFound, ""},
		{"too deep", "GET", "/manage/users/u-1/credentials/c-1/rename/x", 404, CodeNotFound, ""},
		{"wrong method", "GET", "/manage/users", 405, CodeMethodNotAllowed, "POST"},
		{"wrong method on an id", "POST", "/manage/users/u-1", 405, CodeMethodNotAllowed, "GET, DELETE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := f.bearer(t, tc.method, tc.path, mint(t, credKey(), f.claims("users.create")))
			wantErr(t, a, tc.status, tc.code)
			if got := a.header.Get("Allow"); got != tc.allow {
				t.Errorf("got Allow %q, want %q", got, tc.allow)
			}
		})
	}
	t.Cleanup(func() {
		// Routing failures are not token rejections and burn nothing.
		if got := f.sim.Rejected() + f.sim.Accepted(); got != 0 {
			t.Errorf("got %d counted requests, want 0", got)
		}
		if got := f.sim.nonces.size(); got != 0 {
			t.Errorf("got %d nonces remembered, want 0", got)
		}
	})
}

func TestCustomEndpoints(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{Endpoints: []Endpoint{{"GET", "/api/native/users/{id}", "users.retrieve"}}})
	wantOK(t, f.bearer(t, "GET", "/api/native/users/u-1", mint(t, credKey(), f.claims("users.retrieve"))), "GET /api/native/users/{id}")
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", mint(t, credKey(), f.claims("users.retrieve"))), 404, CodeNotFound)
}

func TestFaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	tok := mint(t, credKey(), f.claims("users.retrieve"))

	f.sim.SetFault(Fault{Status: http.StatusServiceUnavailable})
	wantErr(t, f.bearer(t, "GET", "/manage/users/u-1", tok), 503, "internal_error")

	f.sim.SetFault(Fault{Status: http.StatusBadGateway, Body: `{"oops":true}`})
	if a := f.bearer(t, "GET", "/manage/users/u-1", tok); a.status != 502 || a.raw != `{"oops":true}` {
		t.Errorf("got %d %q, want 502 {\"oops\":true}", a.status, a.raw)
	}

	f.sim.SetFault(Fault{Garbage: true})
	a := f.bearer(t, "GET", "/manage/users/u-1", tok)
	if a.status != 200 || json.Valid([]byte(a.raw)) {
		t.Errorf("got %d %q, want 200 with a body that is not JSON", a.status, a.raw)
	}

	f.sim.SetFault(Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", f.ts.URL+"/manage/users/u-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if resp, err := f.ts.Client().Do(req); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			resp.Body.Close()
		}
		t.Errorf("got error %v, want context.DeadlineExceeded", err)
	}

	// Faulted requests neither count nor burn the nonce.
	if got := f.sim.Accepted() + f.sim.Rejected(); got != 0 {
		t.Errorf("got %d counted requests during faults, want 0", got)
	}
	f.sim.SetFault(Fault{})
	wantOK(t, f.bearer(t, "GET", "/manage/users/u-1", tok), "GET /manage/users/{id}")
}

func TestCounters(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	tok := mint(t, credKey(), f.claims("users.retrieve"))
	f.bearer(t, "GET", "/manage/users/u-1", tok)                                             // accepted
	f.bearer(t, "GET", "/manage/users/u-1", tok)                                             // replay
	f.bearer(t, "GET", "/manage/users/u-1", mint(t, otherKey(), f.claims("users.retrieve"))) // bad signature
	f.bearer(t, "GET", "/manage/users/u-1", mint(t, credKey(), f.claims("users.delete")))    // forbidden
	f.do(t, "GET", "/manage/users/u-1")                                                      // no token
	f.do(t, "GET", "/nope")                                                                  // 404, not counted
	for _, tc := range []struct {
		name      string
		got, want int64
	}{
		{"Accepted", f.sim.Accepted(), 1},
		{"Rejected", f.sim.Rejected(), 4},
		{"Replays", f.sim.Replays(), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestNewPanicsOnBadWiring(t *testing.T) {
	t.Parallel()
	p384 := genKey(elliptic.P384())
	offCurve := &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"nil key", Options{}},
		{"P-384 key", Options{PublicKey: &p384.PublicKey}},
		{"point off the curve", Options{PublicKey: offCurve}},
		{"unknown scope claim", Options{PublicKey: &credKey().PublicKey, ScopeClaim: "scp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Errorf("got no panic, want one")
				}
			}()
			New(tc.o)
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	s := New(Options{PublicKey: &credKey().PublicKey})
	if s.scopeClaim != "type" || s.maxAge != 5*time.Minute || s.skew != 30*time.Second || s.now == nil || len(s.routes) != len(DefaultEndpoints()) {
		t.Errorf("got scopeClaim %q maxAge %v skew %v routes %d, want type 5m0s 30s %d",
			s.scopeClaim, s.maxAge, s.skew, len(s.routes), len(DefaultEndpoints()))
	}
}
