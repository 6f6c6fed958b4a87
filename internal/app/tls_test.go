package app_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/config"
)

const (
	meshBilling = "spiffe://cluster.local/ns/x/sa/billing"
	meshSelf    = "spiffe://cluster.local/ns/tokenvend/sa/tokenvend"
)

// xfcc is the header an Istio sidecar sets for a caller it verified.
func xfcc(uri string) string {
	return "By=" + meshSelf + ";Hash=0c2f6ad1;Subject=\"\";URI=" + uri
}

// TestMeshIdentity: with server.tls_terminated_by_mesh the sidecar's
// x-forwarded-client-cert names certificate callers, over gRPC metadata
// and the REST header alike; API-key callers still use their keys.
func TestMeshIdentity(t *testing.T) {
	t.Parallel()
	clk := newClock()
	_, url := kycSim(t, clk)
	sum := sha256.Sum256([]byte(reportKey))
	s := startService(t, clk, fmt.Sprintf(`  tls_terminated_by_mesh: true
callers:
  - id: %s
    allow: [{provider: kyc}]
  - id: spiffe://cluster.local/ns/x/sa/reporting
    api_key_sha256: %s
    allow: [{provider: kyc-b}]
providers:%s%s`, meshBilling, hex.EncodeToString(sum[:]), kycProvider("kyc", url, kycPassword), kycProvider("kyc-b", url, kycPassword)))

	grpcGet := func(provider string, md ...string) (*tokenvendv1.GetTokenResponse, error) {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), md...), 10*time.Second)
		defer cancel()
		return s.client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: provider})
	}
	restGet := func(provider string, headers ...string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, s.base+"/v1/providers/"+provider+"/token", nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Add(headers[i], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}

	for _, tc := range []struct {
		name     string
		provider string
		md       []string
		want     codes.Code
	}{
		{"the sidecar names billing", "kyc", []string{"x-forwarded-client-cert", xfcc(meshBilling)}, codes.OK},
		{"billing's grants only", "kyc-b", []string{"x-forwarded-client-cert", xfcc(meshBilling)}, codes.PermissionDenied},
		// What the caller wrote comes first; the sidecar's element is last.
		{"a caller's own element before the sidecar's does not count", "kyc-b",
			[]string{"x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/x/sa/reporting," + xfcc(meshBilling)}, codes.PermissionDenied},
		{"an identity that is not a caller", "kyc", []string{"x-forwarded-client-cert", xfcc("spiffe://cluster.local/ns/x/sa/other")}, codes.Unauthenticated},
		{"an API-key caller's ID cannot be claimed by the header", "kyc-b",
			[]string{"x-forwarded-client-cert", xfcc("spiffe://cluster.local/ns/x/sa/reporting")}, codes.Unauthenticated},
		{"an API-key caller in the mesh uses its key", "kyc-b",
			[]string{"x-forwarded-client-cert", xfcc("spiffe://cluster.local/ns/x/sa/other"), "x-api-key", reportKey}, codes.OK},
		{"a malformed header", "kyc", []string{"x-forwarded-client-cert", xfcc(meshBilling) + ";"}, codes.Unauthenticated},
		{"two headers", "kyc", []string{"x-forwarded-client-cert", xfcc(meshBilling), "x-forwarded-client-cert", xfcc(meshBilling)}, codes.Unauthenticated},
		{"no header", "kyc", nil, codes.Unauthenticated},
	} {
		t.Run(tc.name+"/grpc", func(t *testing.T) {
			resp, err := grpcGet(tc.provider, tc.md...)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if tc.want == codes.OK {
				if got := useHeaders(t, url+"/api/v1/resource", resp.GetHeaders()); got != http.StatusOK {
					t.Errorf("vended headers upstream: got %d, want 200", got)
				}
			}
		})
		t.Run(tc.name+"/rest", func(t *testing.T) {
			code, body := restGet(tc.provider, tc.md...)
			wantHTTP := map[codes.Code]int{codes.OK: 200, codes.Unauthenticated: 401, codes.PermissionDenied: 403}[tc.want]
			if code != wantHTTP {
				t.Fatalf("got HTTP %d %s, want %d", code, body, wantHTTP)
			}
			if tc.want == codes.OK && !strings.Contains(body, `"access_token"`) {
				t.Errorf("no token in %s", body)
			}
		})
	}
}

// TestXFCCIgnoredOutsideMesh: without tls_terminated_by_mesh a well-formed
// x-forwarded-client-cert naming a certificate caller identifies nobody,
// over gRPC and REST, with or without TLS on the connection.
func TestXFCCIgnoredOutsideMesh(t *testing.T) {
	t.Parallel()
	m := startMTLS(t)
	header := xfcc(billingID)
	if _, err := m.grpcGet(t, caller{}, "kyc", "x-forwarded-client-cert", header); status.Code(err) != codes.Unauthenticated {
		t.Errorf("mutual TLS, gRPC: got %v, want Unauthenticated", err)
	}
	if code, body, err := m.restGet(t, caller{}, "/v1/providers/kyc/token", "X-Forwarded-Client-Cert", header); err != nil || code != http.StatusUnauthorized {
		t.Errorf("mutual TLS, REST: got %d %v %v, want 401", code, body, err)
	}

	// Plaintext on loopback, where a certificate caller can be configured
	// only with a client CA: the header still counts for nothing.
	dir := t.TempDir()
	write(t, filepath.Join(dir, "ca.crt"), m.ca.pem)
	clk := newClock()
	_, url := kycSim(t, clk)
	sum := sha256.Sum256([]byte(reportKey))
	cfg, err := config.Parse(fmt.Appendf(nil, `
server: {grpc_addr: '127.0.0.1:0', http_addr: '127.0.0.1:0'}
callers:
  - id: %s
    api_key_sha256: %s
    allow: [{provider: kyc}]
providers:%s`, meshBilling, hex.EncodeToString(sum[:]), kycProvider("kyc", url, kycPassword)))
	if err != nil {
		t.Fatal(err)
	}
	s := startConfig(t, clk, cfg)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-forwarded-client-cert", xfcc(meshBilling)), 10*time.Second)
	defer cancel()
	if _, err := s.client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("plaintext, gRPC: got %v, want Unauthenticated", err)
	}
	req, _ := http.NewRequest(http.MethodGet, s.base+"/v1/providers/kyc/token", nil)
	req.Header.Set("X-Forwarded-Client-Cert", xfcc(meshBilling))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("plaintext, REST: got %d, want 401", resp.StatusCode)
	}
}

// TestCertificateRotation: the servers pick up a certificate and key
// rewritten in place (signed by another CA) for new connections, without
// a restart, while a gRPC connection opened before keeps working.
func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldCA, newCA := newCA(t, "old CA"), newCA(t, "new CA")
	oldCert := oldCA.issue(t, "tokenvend", "", true)
	certPath, keyPath := writePEM(t, dir, "server", oldCert)
	clk := newClock()
	_, url := kycSim(t, clk)
	sum := sha256.Sum256([]byte(reportKey))
	cfg, err := config.Parse(fmt.Appendf(nil, `
server:
  grpc_addr: 127.0.0.1:0
  http_addr: 127.0.0.1:0
  tls: {cert: %s, key: %s}
callers:
  - id: key:reporting
    api_key_sha256: %s
    allow: [{provider: kyc}]
providers:%s`, certPath, keyPath, hex.EncodeToString(sum[:]), kycProvider("kyc", url, kycPassword)))
	if err != nil {
		t.Fatal(err)
	}
	s, grpcAddr, httpAddr := startApp(t, clk, cfg)

	roots := func(c *ca) *tls.Config {
		pool := x509.NewCertPool()
		pool.AddCert(c.cert)
		return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	dial := func(c *ca) *grpc.ClientConn {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(roots(c))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	get := func(conn *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-api-key", reportKey), 10*time.Second)
		defer cancel()
		resp, err := tokenvendv1.NewTokenServiceClient(conn).GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc"})
		if err == nil && useHeaders(t, url+"/api/v1/resource", resp.GetHeaders()) != http.StatusOK {
			t.Error("the vended token is refused upstream")
		}
		return err
	}
	// served is the certificate a new TLS connection to addr gets.
	served := func(addr string) []byte {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // only reads what is served
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}

	before := dial(oldCA)
	if err := get(before); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}

	newCert := newCA.issue(t, "tokenvend", "", true)
	writePEM(t, dir, "server", newCert)
	// Within ReloadInterval of the last look, the old pair still serves.
	if got := served(grpcAddr); !bytes.Equal(got, oldCert.Certificate[0]) {
		t.Error("gRPC port: the new pair served before the reload interval passed")
	}
	clk.Advance(config.ReloadInterval)
	for name, addr := range map[string]string{"gRPC": grpcAddr, "HTTP": httpAddr} {
		if got := served(addr); !bytes.Equal(got, newCert.Certificate[0]) {
			t.Errorf("%s port: a new connection got the old certificate, want the new one", name)
		}
	}
	if err := get(dial(newCA)); err != nil {
		t.Errorf("a new connection trusting the new CA: %v", err)
	}
	if err := get(dial(oldCA)); status.Code(err) != codes.Unavailable {
		t.Errorf("a new connection trusting only the old CA: got %v, want Unavailable (the new certificate is served)", err)
	}
	// The connection opened before still works: had it been dropped, its
	// reconnection would fail, as it trusts only the old CA.
	if err := get(before); err != nil {
		t.Errorf("the connection opened before the rotation: %v", err)
	}

	// A pair that does not match keeps the last good one serving.
	other := oldCA.issue(t, "tokenvend", "", true)
	otherCertPath, _ := writePEM(t, t.TempDir(), "other", other)
	b, err := os.ReadFile(otherCertPath)
	if err != nil {
		t.Fatal(err)
	}
	write(t, certPath, b) // the key is still newCert's
	clk.Advance(config.ReloadInterval)
	if got := served(httpAddr); !bytes.Equal(got, newCert.Certificate[0]) {
		t.Error("after a mismatched pair was written: want the last good certificate still served")
	}
	if !strings.Contains(s.logs.String(), "still serving the previous certificate") {
		t.Errorf("no warning logged for the mismatched pair:\n%s", s.logs)
	}
}
