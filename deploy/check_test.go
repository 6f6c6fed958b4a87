package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// TestExampleConfigPassesCheck runs `tokenvend check` on the config the
// example overlay puts in its ConfigMap. The check resolves secrets and
// loads the TLS pair, so the mounted Secret is stood in for by a directory
// of placeholder files, one per key of secret.example.yaml, the TLS Secret
// by a directory with a certificate and key made here, and the mount paths
// in the config text are rewritten to them; nothing else in the text
// changes. Without server.tls the same config must be refused, naming it:
// its callers' API keys would cross the network in the clear.
func TestExampleConfigPassesCheck(t *testing.T) {
	t.Parallel()
	w := workload(t, render(t, overlayDir), secretExample)

	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for key, value := range w.exampleSecretKeys {
		if err := os.WriteFile(filepath.Join(secrets, key), []byte(value), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mount := strings.TrimSuffix(w.secretMount.MountPath, "/") + "/"
	if !strings.Contains(w.configText, mount) {
		t.Fatalf("%s: no secret under the mount path %s", configKey, mount)
	}
	text := strings.ReplaceAll(w.configText, mount, secrets+"/")
	if w.tls != nil {
		tlsDir := filepath.Join(dir, "tls")
		writeServerPair(t, tlsDir)
		tlsMount := strings.TrimSuffix(w.tlsMount.MountPath, "/") + "/"
		if !strings.Contains(text, tlsMount) {
			t.Fatalf("%s: nothing from the TLS mount %s", configKey, tlsMount)
		}
		text = strings.ReplaceAll(text, tlsMount, tlsDir+"/")
	}
	cfg := filepath.Join(dir, configKey)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	bin := buildTokenvend(t, dir)
	if out, err := runCheck(t, bin, cfg); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Fatalf("tokenvend check: got %v:\n%s\nwant it to accept the example config", err, out)
	}

	// The same config without TLS (nor a mesh) is refused.
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatal(err)
	}
	server, _ := doc["server"].(map[string]any)
	delete(server, "tls")
	delete(server, "tls_terminated_by_mesh")
	plain, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	plainCfg := filepath.Join(dir, "plain.yaml")
	if err := os.WriteFile(plainCfg, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCheck(t, bin, plainCfg); err == nil || !strings.Contains(out, "server.tls: is required") {
		t.Errorf("tokenvend check without server.tls: got %v:\n%s\nwant a failure naming server.tls", err, out)
	}

	// The check reads the secret files: without them it must refuse, or
	// the run above proved nothing about the {file:} references.
	files, _ := secretRefs(t, w.configText)
	if len(files) == 0 {
		t.Fatalf("%s: no {file: ...} secret", configKey)
	}
	missing := filepath.Join(secrets, filepath.Base(files[0]))
	if err := os.Remove(missing); err != nil {
		t.Fatal(err)
	}
	if out, err := runCheck(t, bin, cfg); err == nil || !strings.Contains(out, missing) {
		t.Errorf("tokenvend check without %s: got %v:\n%s\nwant a failure naming the file", missing, err, out)
	}
}

// runCheck runs `tokenvend check --config cfg` and returns its output.
func runCheck(t *testing.T, bin, cfg string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin, "check", "--config", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// writeServerPair writes a self-signed certificate and its key into dir as
// tls.crt and tls.key, the keys of a kubernetes.io/tls Secret.
func writeServerPair(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tokenvend"},
		DNSNames:     []string{"tokenvend." + namespace + ".svc"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// buildTokenvend builds the service's binary from the parent module into
// dir, with the go command that runs this test. It builds with the same
// settings as `go vet ./...` in the parent module, which `make lint` runs
// first, so the packages come from the build cache and only main is linked.
func buildTokenvend(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tokenvend")
	cmd := exec.CommandContext(t.Context(), goTool, "build", "-buildvcs=false", "-o", bin, "./cmd/tokenvend")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tokenvend: %v\n%s", err, out)
	}
	return bin
}
