package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/server"
)

// ca is a certificate authority made for one test.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf certificate: a server one for 127.0.0.1, or a client
// one with a URI SAN (uri) or only a common name.
func (c *ca) issue(t *testing.T, cn, uri string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, dir, name string, cert tls.Certificate) (certPath, keyPath string) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	write(t, certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	write(t, keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return certPath, keyPath
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

const (
	billingID  = "spiffe://mesh.local/ns/billing/sa/api"
	reportKey  = "reporting-key-0123456789"
	strangerID = "spiffe://mesh.local/ns/other/sa/stranger"
)

// mtlsService runs tokenvend with mutual TLS and two callers: billing (a
// SPIFFE certificate, allowed kyc) and reporting (an API key, allowed
// kyc-b only).
type mtlsService struct {
	*service
	grpcAddr, httpAddr string
	roots              *x509.CertPool
	ca, otherCA        *ca
	simURL             string
}

func startMTLS(t *testing.T) *mtlsService {
	t.Helper()
	dir := t.TempDir()
	meshCA, otherCA := newCA(t, "mesh CA"), newCA(t, "someone else's CA")
	write(t, filepath.Join(dir, "ca.crt"), meshCA.pem)
	srvCert, srvKey := writePEM(t, dir, "server", meshCA.issue(t, "tokenvend", "", true))
	clk := newClock()
	_, url := kycSim(t, clk)
	sum := sha256.Sum256([]byte(reportKey))
	cfg, err := config.Parse(fmt.Appendf(nil, `
server:
  grpc_addr: 127.0.0.1:0
  http_addr: 127.0.0.1:0
  tls: {cert: %s, key: %s, client_ca: %s}
callers:
  - id: %s
    allow: [{provider: kyc}]
  - id: key:reporting
    api_key_sha256: %s
    allow: [{provider: kyc-b}]
  - id: %s
    allow: [{provider: kyc, scopes: [only-this]}]
providers:%s%s`, srvCert, srvKey, filepath.Join(dir, "ca.crt"), billingID, hex.EncodeToString(sum[:]), strangerID,
		kycProvider("kyc", url, kycPassword), kycProvider("kyc-b", url, kycPassword)))
	if err != nil {
		t.Fatal(err)
	}
	s, grpcAddr, httpAddr := startApp(t, clk, cfg)
	roots := x509.NewCertPool()
	roots.AddCert(meshCA.cert)
	return &mtlsService{service: s, grpcAddr: grpcAddr, httpAddr: httpAddr, roots: roots, ca: meshCA, otherCA: otherCA, simURL: url}
}

// caller is one way of calling: a client certificate (or none) and an API
// key (or none).
type caller struct {
	cert *tls.Certificate
	key  string
	// force sends the certificate even when the server's CA list does not
	// name its issuer (Go's client otherwise leaves it out).
	force bool
}

func (m *mtlsService) tlsConfig(c caller) *tls.Config {
	cfg := &tls.Config{RootCAs: m.roots, MinVersion: tls.VersionTLS12}
	if c.cert != nil {
		cfg.Certificates = []tls.Certificate{*c.cert}
	}
	if c.force {
		cert := c.cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// grpcGet calls GetToken over gRPC as c, with extra metadata.
func (m *mtlsService) grpcGet(t *testing.T, c caller, provider string, md ...string) (*tokenvendv1.GetTokenResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(m.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(m.tlsConfig(c))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.key != "" {
		md = append(md, "x-api-key", c.key)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	return tokenvendv1.NewTokenServiceClient(conn).GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: provider})
}

// restGet calls GET /v1/providers/{provider}/token as c, with extra headers.
func (m *mtlsService) restGet(t *testing.T, c caller, path string, headers ...string) (int, map[string]any, error) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: m.tlsConfig(c)}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "https://"+m.httpAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.key != "" {
		req.Header.Set("x-api-key", c.key)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	return resp.StatusCode, body, nil
}

func TestCallerAuthentication(t *testing.T) {
	t.Parallel()
	m := startMTLS(t)
	billing := m.ca.issue(t, "billing", billingID, false)
	stranger := m.ca.issue(t, "stranger", strangerID, false)
	unlisted := m.ca.issue(t, "unlisted", "spiffe://mesh.local/ns/x/sa/unlisted", false)
	foreign := m.otherCA.issue(t, "billing", billingID, false)

	cases := []struct {
		name     string
		caller   caller
		provider string
		want     codes.Code // codes.Unavailable: the TLS handshake itself fails
		reason   string
	}{
		{"no certificate, no key", caller{}, "kyc", codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
		// Unidentified callers do not learn which providers exist.
		{"no certificate, unknown provider", caller{}, "nope", codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
		// A client offers a certificate only if the server's CA list names
		// its issuer: it connects unidentified.
		{"certificate from another CA", caller{cert: &foreign}, "kyc", codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
		// Forced on the server anyway, it fails the handshake.
		{"certificate from another CA, forced", caller{cert: &foreign, force: true}, "kyc", codes.Unavailable, ""},
		{"allowed provider", caller{cert: &billing}, "kyc", codes.OK, ""},
		{"disallowed provider", caller{cert: &billing}, "kyc-b", codes.PermissionDenied, "CALLER_NOT_ALLOWED"},
		{"disallowed scope (only a listed one is granted)", caller{cert: &stranger}, "kyc", codes.PermissionDenied, "CALLER_NOT_ALLOWED"},
		{"certificate of a caller not configured", caller{cert: &unlisted}, "kyc", codes.PermissionDenied, "CALLER_NOT_ALLOWED"},
		{"good API key", caller{key: reportKey}, "kyc-b", codes.OK, ""},
		{"good API key, disallowed provider", caller{key: reportKey}, "kyc", codes.PermissionDenied, "CALLER_NOT_ALLOWED"},
		{"bad API key", caller{key: "guess"}, "kyc-b", codes.Unauthenticated, "CALLER_UNIDENTIFIED"},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/grpc", func(t *testing.T) {
			resp, err := m.grpcGet(t, tc.caller, tc.provider)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if tc.reason != "" {
				if _, info := errorInfo(t, err); info.GetReason() != tc.reason {
					t.Errorf("reason: got %s, want %s", info.GetReason(), tc.reason)
				}
			}
			if tc.want == codes.OK {
				if got := useHeaders(t, m.simURL+"/api/v1/resource", resp.GetHeaders()); got != http.StatusOK {
					t.Errorf("vended headers upstream: got %d, want 200", got)
				}
			}
		})
		t.Run(tc.name+"/rest", func(t *testing.T) {
			code, body, err := m.restGet(t, tc.caller, "/v1/providers/"+tc.provider+"/token")
			if tc.want == codes.Unavailable {
				if err == nil {
					t.Fatalf("got HTTP %d, want the TLS handshake to fail", code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantHTTP := map[codes.Code]int{codes.OK: 200, codes.Unauthenticated: 401, codes.PermissionDenied: 403}[tc.want]
			if code != wantHTTP {
				t.Fatalf("got HTTP %d %v, want %d", code, body, wantHTTP)
			}
			if tc.want == codes.OK && body["access_token"] == "" {
				t.Errorf("no token in %v", body)
			}
		})
	}

	// The REST side hands the identity to the Server in the request's
	// context, never in metadata: no metadata or header a caller sends
	// names it, whatever key it tries.
	forged := []string{"tokenvend-gateway-caller", "tokenvend-caller", "x-caller-id", "x-forwarded-client-cert"}
	t.Run("forged identity/grpc", func(t *testing.T) {
		for _, key := range forged {
			_, err := m.grpcGet(t, caller{}, "kyc", key, billingID)
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("a gRPC caller sending %s: got %v, want Unauthenticated", key, err)
			}
		}
	})
	t.Run("forged identity/rest", func(t *testing.T) {
		for _, key := range forged {
			code, _, err := m.restGet(t, caller{}, "/v1/providers/kyc/token", "Grpc-Metadata-"+key, billingID, key, billingID)
			if err != nil || code != http.StatusUnauthorized {
				t.Errorf("a REST caller sending %s as headers: got %d %v, want 401", key, code, err)
			}
		}
	})

	t.Run("ListProviders lists what the caller may get", func(t *testing.T) {
		conn, err := grpc.NewClient(m.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(m.tlsConfig(caller{cert: &billing}))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		list, err := tokenvendv1.NewTokenServiceClient(conn).ListProviders(context.Background(), &tokenvendv1.ListProvidersRequest{})
		if err != nil || len(list.GetProviders()) != 1 || list.GetProviders()[0].GetName() != "kyc" {
			t.Errorf("billing's providers: got %v %v, want only kyc", list, err)
		}
		code, body, err := m.restGet(t, caller{key: reportKey}, "/v1/providers")
		if err != nil || code != 200 || !strings.Contains(fmt.Sprint(body), "kyc-b") || strings.Contains(fmt.Sprint(body), "name:kyc ") {
			t.Errorf("reporting's providers: got %d %v %v, want only kyc-b", code, body, err)
		}
		if code, _, _ := m.restGet(t, caller{}, "/v1/providers"); code != http.StatusUnauthorized {
			t.Errorf("anonymous ListProviders: got %d, want 401", code)
		}
	})

	t.Run("health needs no identity", func(t *testing.T) {
		conn, err := grpc.NewClient(m.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(m.tlsConfig(caller{}))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health without a certificate: got %v %v, want SERVING", resp, err)
		}
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if code, _, err := m.restGet(t, caller{}, path); err != nil || code != 200 {
				t.Errorf("%s without identity: got %d %v, want 200", path, code, err)
			}
		}
	})
}

// TestAuditLine checks one audit line per GetToken, with the caller, the
// outcome and a fingerprint of the token, and never the token.
func TestAuditLine(t *testing.T) {
	t.Parallel()
	m := startMTLS(t)
	billing := m.ca.issue(t, "billing", billingID, false)
	var tokens []string
	for range 2 {
		resp, err := m.grpcGet(t, caller{cert: &billing}, "kyc")
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, resp.GetAccessToken())
	}
	code, body, err := m.restGet(t, caller{key: reportKey}, "/v1/providers/kyc-b/token")
	if err != nil || code != 200 {
		t.Fatalf("REST: %d %v", code, err)
	}
	tokens = append(tokens, body["access_token"].(string))
	if _, err := m.grpcGet(t, caller{}, "kyc"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous: got %v", err)
	}
	// The last call's server span may end after its answer has reached
	// the client (and the stop clears the exporter): wait for the four.
	auditEvents := func() int {
		n := 0
		for _, s := range m.spans.GetSpans() {
			for _, e := range s.Events {
				if e.Name == "tokenvend.audit" {
					n++
				}
			}
		}
		return n
	}
	eventually(t, "the four calls' spans", func() bool { return auditEvents() >= 4 })
	spans := m.spans.GetSpans()
	if err := m.stop(); err != nil {
		t.Fatal(err)
	}

	var lines []map[string]any
	for _, l := range strings.Split(m.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "audit" {
			lines = append(lines, rec)
		}
	}
	want := []struct{ caller, provider, code, result, fingerprint string }{
		{billingID, "kyc", "OK", "login", server.Fingerprint(tokens[0])},
		{billingID, "kyc", "OK", "hit", server.Fingerprint(tokens[1])},
		{"key:reporting", "kyc-b", "OK", "login", server.Fingerprint(tokens[2])},
		{"", "kyc", "Unauthenticated", "none", ""},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d audit lines, want %d (one per GetToken):\n%s", len(lines), len(want), m.logs.String())
	}
	for i, w := range want {
		l := lines[i]
		fp, _ := l["token_sha256"].(string)
		if l["caller"] != w.caller || l["provider"] != w.provider || l["code"] != w.code || l["result"] != w.result || fp != w.fingerprint {
			t.Errorf("audit line %d: got %v, want %+v", i, l, w)
		}
	}
	events := 0
	for _, s := range spans {
		for _, e := range s.Events {
			if e.Name == "tokenvend.audit" {
				events++
			}
		}
	}
	if events != len(want) {
		t.Errorf("audit span events: got %d, want %d", events, len(want))
	}
	for _, tok := range tokens {
		if strings.Contains(m.logs.String(), tok) {
			t.Error("a token appears in the log")
		}
	}
}

// TestLoopbackDefault: without callers the service listens on loopback
// only; beyond it, it refuses to start unless told it is on purpose.
func TestLoopbackDefault(t *testing.T) {
	t.Parallel()
	const provider = "providers:\n  - {name: kyc, kind: kyc, base_url: 'http://127.0.0.1:1', username: u, password: p}\n"
	_, err := config.Parse([]byte("server: {grpc_addr: '0.0.0.0:0', http_addr: '127.0.0.1:0'}\n" + provider))
	if err == nil || !strings.Contains(err.Error(), "server.grpc_addr: listens beyond loopback but no callers are configured") {
		t.Errorf("0.0.0.0 without callers: got %v, want refused, naming server.grpc_addr and saying why", err)
	}
	for _, ok := range []string{
		"server: {grpc_addr: '127.0.0.1:0', http_addr: '[::1]:0'}\n",
		"server: {grpc_addr: '0.0.0.0:0', http_addr: '0.0.0.0:0', insecure_allow_any_caller: true}\n",
		// Callers beyond loopback need TLS, here from a mesh sidecar.
		"server: {grpc_addr: '0.0.0.0:0', http_addr: '0.0.0.0:0', tls_terminated_by_mesh: true}\ncallers: []\n",
	} {
		cfg, err := config.Parse([]byte(ok + provider))
		if err != nil {
			t.Errorf("%q: got %v, want accepted", ok, err)
			continue
		}
		if strings.Contains(ok, "::1") {
			if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
				continue // no IPv6 loopback on this machine
			} else {
				ln.Close()
			}
		}
		s := startConfig(t, nil, cfg)
		if r := s.rest(http.MethodGet, "/healthz", ""); r.Status != 200 {
			t.Errorf("%q: /healthz got %d", ok, r.Status)
		}
	}
}

// TestCallerScopeGrants checks scope patterns against a provider with
// several scopes (loginid), with API-key callers over gRPC and REST.
func TestCallerScopeGrants(t *testing.T) {
	t.Parallel()
	clk := newClock()
	k := newLoginIDKey(t)
	sim, url := loginidSim(t, clk, k)
	billingKey, codesKey := "billing-key-7d0c1f", "codes-key-41aa9e"
	hashOf := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	s := startService(t, clk, fmt.Sprintf(`
callers:
  - id: key:billing
    api_key_sha256: %s
    allow: [{provider: loginid, scopes: ["users.*"]}]
  - id: key:codes
    api_key_sha256: %s
    allow: [{provider: loginid, scopes: [codes.generate]}]
providers:
  - name: loginid
    kind: loginid
    private_key: %s
    client_id: %s
    scopes: [users.retrieve, users.create, codes.generate]
`, hashOf(billingKey), hashOf(codesKey), loginidOneLine(k.pkcs8), loginidClientID))

	get := func(key, scope string) (*tokenvendv1.GetTokenResponse, error) {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-api-key", key), 10*time.Second)
		defer cancel()
		return s.client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: scope})
	}
	for _, tc := range []struct {
		caller, key, scope string
		want               codes.Code
	}{
		{"billing", billingKey, "users.retrieve", codes.OK},
		{"billing", billingKey, "users.create", codes.OK},
		{"billing", billingKey, "codes.generate", codes.PermissionDenied},
		{"codes", codesKey, "codes.generate", codes.OK},
		{"codes", codesKey, "users.retrieve", codes.PermissionDenied},
	} {
		t.Run(tc.caller+" "+tc.scope+"/grpc", func(t *testing.T) {
			resp, err := get(tc.key, tc.scope)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if tc.want == codes.PermissionDenied {
				if _, info := errorInfo(t, err); info.GetReason() != "CALLER_NOT_ALLOWED" {
					t.Errorf("reason: got %s, want CALLER_NOT_ALLOWED", info.GetReason())
				}
			}
			if tc.scope == "users.retrieve" && tc.want == codes.OK {
				if code, body := loginidUse(t, http.MethodGet, url+"/manage/users/u1", resp.GetHeaders()); code != http.StatusOK {
					t.Errorf("vended token upstream: got %d %v, want 200", code, body)
				}
			}
		})
		t.Run(tc.caller+" "+tc.scope+"/rest", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, s.base+"/v1/token", strings.NewReader(`{"provider":"loginid","scope":"`+tc.scope+`"}`))
			req.Header.Set("x-api-key", tc.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := map[codes.Code]int{codes.OK: 200, codes.PermissionDenied: 403}[tc.want]
			if resp.StatusCode != want {
				t.Errorf("got HTTP %d, want %d", resp.StatusCode, want)
			}
		})
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", billingKey)
	list, err := s.client.ListProviders(ctx, &tokenvendv1.ListProvidersRequest{})
	if err != nil || len(list.GetProviders()) != 1 || fmt.Sprint(list.GetProviders()[0].GetScopes()) != "[users.retrieve users.create]" {
		t.Errorf("billing's ListProviders: got %v %v, want loginid with users.retrieve and users.create only", list, err)
	}
	if sim.Accepted() != 1 {
		t.Errorf("upstream accepted %d tokens, want 1", sim.Accepted())
	}
}
