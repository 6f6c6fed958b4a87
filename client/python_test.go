package client_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/client"
)

// TestPythonExample runs the README's Python example against a real
// tokenvend and the kyc simulator, with the cached token revoked upstream:
// the example must report it and succeed on its one retry.
func TestPythonExample(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is not installed: CI must run the Python example")
		}
		t.Skip("python3 is not installed")
	}
	f := start(t)
	tok, err := f.c.Token(context.Background(), client.Request{Provider: "kyc"})
	if err != nil {
		t.Fatal(err)
	}
	f.revoke(tok.AccessToken)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "../examples/python/tokenvend_call.py", f.rest, "kyc", f.demo.Upstreams["kyc"]).CombinedOutput()
	if err != nil {
		t.Fatalf("the example failed: %v\n%s", err, out)
	}
	if status, _, _ := strings.Cut(string(out), "\n"); status != "200" {
		t.Errorf("the example's upstream status: got %q, want 200\n%s", status, out)
	}
	if n := f.kyc().Logins(); n != 2 {
		t.Errorf("upstream logins: got %d, want 2 (the revoked token replaced once)", n)
	}
}
