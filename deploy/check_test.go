package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigPassesCheck runs `tokenvend check` on the config the
// example overlay puts in its ConfigMap. The check resolves secrets, so the
// mounted Secret is stood in for by a directory of placeholder files, one
// per key of secret.example.yaml, and the mount path in the config text is
// rewritten to it; nothing else in the text changes.
func TestExampleConfigPassesCheck(t *testing.T) {
	t.Parallel()
	w := workload(t, render(t, overlayDir))

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
	cfg := filepath.Join(dir, configKey)
	text := strings.ReplaceAll(w.configText, mount, secrets+"/")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	bin := buildTokenvend(t, dir)
	check := func() (string, error) {
		var out bytes.Buffer
		cmd := exec.CommandContext(t.Context(), bin, "check", "--config", cfg)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := check(); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Fatalf("tokenvend check: got %v:\n%s\nwant it to accept the example config", err, out)
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
	if out, err := check(); err == nil || !strings.Contains(out, missing) {
		t.Errorf("tokenvend check without %s: got %v:\n%s\nwant a failure naming the file", missing, err, out)
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
