package config_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/clock/clocktest"
	"github.com/tokenvend/tokenvend/internal/config"
)

// pair is a self-signed certificate and its key, PEM-encoded.
type pair struct {
	cert, key []byte
	der       []byte
}

func newPair(t *testing.T, cn string) pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pair{
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		der:  der,
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCallersNeedTLSBeyondLoopback: callers send API keys and get tokens,
// so beyond loopback they need server.tls or a mesh that terminates TLS.
func TestCallersNeedTLSBeyondLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newPair(t, "tokenvend")
	writeFile(t, filepath.Join(dir, "tls.crt"), p.cert)
	writeFile(t, filepath.Join(dir, "tls.key"), p.key)
	tlsKeys := "\n  tls: {cert: " + filepath.Join(dir, "tls.crt") + ", key: " + filepath.Join(dir, "tls.key") + "}"
	keyCaller := "callers:\n  - {id: key:a, api_key_sha256: " + strings.Repeat("ab", 32) + ", allow: [{provider: kyc}]}"
	certCaller := "callers:\n  - {id: 'spiffe://cluster.local/ns/x/sa/billing', allow: [{provider: kyc}]}"
	for _, tc := range []struct {
		name, server, callers, want string
	}{
		{"callers, 0.0.0.0, no TLS", "grpc_addr: 0.0.0.0:9090", keyCaller,
			"server.tls: is required: 0.0.0.0:9090 listens beyond loopback, so callers' API keys and the tokens they get would cross the network in the clear"},
		{"callers, the HTTP port beyond loopback", "http_addr: ':8080'", keyCaller, "server.tls: is required: :8080 listens beyond loopback"},
		// Proxied calls carry callers' keys too, and the answers carry
		// upstream data.
		{"callers, the proxy port beyond loopback", "proxy_addr: 0.0.0.0:8081", keyCaller, "server.tls: is required: 0.0.0.0:8081 listens beyond loopback"},
		{"an empty callers list, beyond loopback", "grpc_addr: 0.0.0.0:9090", "callers: []", "server.tls: is required"},
		{"callers, 0.0.0.0, TLS", "grpc_addr: 0.0.0.0:9090" + tlsKeys, keyCaller, ""},
		{"callers, 0.0.0.0, a mesh terminates TLS", "grpc_addr: 0.0.0.0:9090\n  tls_terminated_by_mesh: true", keyCaller, ""},
		// In a mesh the sidecar verifies certificates: no client_ca.
		{"certificate callers in a mesh", "grpc_addr: 0.0.0.0:9090\n  tls_terminated_by_mesh: true", certCaller, ""},
		{"certificate callers without a mesh or client_ca", "grpc_addr: 0.0.0.0:9090" + tlsKeys, certCaller,
			"callers[0].id: a caller without api_key_sha256 is identified by its certificate, which needs server.tls.client_ca (or server.tls_terminated_by_mesh)"},
		{"callers on loopback only, no TLS", "grpc_addr: 127.0.0.1:9090\n  http_addr: 'localhost:8080'", keyCaller, ""},
		{"no callers, on purpose, beyond loopback", "grpc_addr: 0.0.0.0:9090\n  http_addr: 0.0.0.0:8080\n  insecure_allow_any_caller: true", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte("server:\n  " + tc.server + "\n" + tc.callers + providers))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want accepted", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// logBuffer is a log sink safe for concurrent handshakes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestReloaderFollowsTheFiles: a rewritten pair serves the next handshake
// once ReloadInterval has passed; a pair that does not load (half written,
// cert and key that do not match) keeps the old one serving with a
// warning; a Kubernetes-style ..data symlink swap is followed; a rotated
// client CA takes effect too.
func TestReloaderFollowsTheFiles(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	a, b, c := newPair(t, "a"), newPair(t, "b"), newPair(t, "c")
	caA, caB := newPair(t, "ca-a"), newPair(t, "ca-b")

	// The layout a Secret volume has: files are links through ..data to a
	// timestamped directory, and an update swaps ..data.
	generation := 0
	publish := func(p pair, ca pair) {
		t.Helper()
		generation++
		gen := filepath.Join(root, "..gen"+strings.Repeat("x", generation))
		if err := os.Mkdir(gen, 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(gen, "tls.crt"), p.cert)
		writeFile(t, filepath.Join(gen, "tls.key"), p.key)
		writeFile(t, filepath.Join(gen, "ca.crt"), ca.cert)
		tmp := filepath.Join(root, "..data_tmp")
		if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(root, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish(a, caA)
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}

	clk := clocktest.New(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
	logs := &logBuffer{}
	files := config.TLS{Cert: filepath.Join(root, "tls.crt"), Key: filepath.Join(root, "tls.key"), ClientCA: filepath.Join(root, "ca.crt")}
	r, err := files.Reloading(slog.New(slog.NewJSONHandler(logs, nil)), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.Config()
	served := func() (cert []byte, clientCA string) {
		t.Helper()
		c, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{})
		if err != nil || c == nil || len(c.Certificates) != 1 {
			t.Fatalf("GetConfigForClient: got %v %v, want a config with one certificate", c, err)
		}
		if c.ClientCAs == nil || c.ClientAuth != tls.VerifyClientCertIfGiven {
			t.Fatalf("client CA: got pool %v, auth %v, want the pool and VerifyClientCertIfGiven", c.ClientCAs, c.ClientAuth)
		}
		subjects := c.ClientCAs.Subjects()
		return c.Certificates[0].Certificate[0], string(subjects[0])
	}
	check := func(step string, want pair, wantCA pair) {
		t.Helper()
		cert, ca := served()
		if !bytes.Equal(cert, want.der) {
			t.Errorf("%s: got another certificate served than the one wanted", step)
		}
		caCert, _ := x509.ParseCertificate(wantCA.der)
		if ca != string(caCert.RawSubject) {
			t.Errorf("%s: got another client CA than the one wanted", step)
		}
	}
	check("at start", a, caA)

	publish(b, caB)
	check("changed, before the interval", a, caA)
	clk.Advance(config.ReloadInterval)
	check("changed, after the interval", b, caB)
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Errorf("no reload logged:\n%s", logs)
	}

	// Half written: the new certificate, the old key.
	publish(pair{cert: c.cert, key: b.key}, caB)
	clk.Advance(config.ReloadInterval)
	check("cert and key do not match", b, caB)
	if !strings.Contains(logs.String(), "still serving the previous certificate") {
		t.Errorf("no warning for a pair that does not load:\n%s", logs)
	}
	publish(pair{cert: c.cert[:len(c.cert)/2], key: c.key}, caB)
	clk.Advance(config.ReloadInterval)
	check("truncated certificate", b, caB)

	// The writer finishes: the next look loads it.
	publish(c, caA)
	clk.Advance(config.ReloadInterval)
	check("complete again", c, caA)

	// Files edited in place, without the symlinks, are followed too.
	d := newPair(t, "d")
	target, err := filepath.EvalSymlinks(files.Cert)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, target, d.cert)
	writeFile(t, filepath.Join(filepath.Dir(target), "tls.key"), d.key)
	clk.Advance(config.ReloadInterval)
	check("rewritten in place", d, caA)
}
