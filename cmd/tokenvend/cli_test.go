package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
)

// startDemo runs tokenvend in process on the demo's simulators; with
// callers, only they may ask.
func startDemo(t *testing.T, callers string) (addr string, d *demo.Demo) {
	t.Helper()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	cfg := d.Config
	if callers != "" {
		c, err := config.Parse([]byte(callers + "\nproviders: [{name: kyc, kind: kyc}]"))
		if c == nil {
			t.Fatal(err)
		}
		cfg.Callers = c.Callers
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, app.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a.GRPCAddr(), d
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, args, &out, &errb)
	if err != nil {
		code = exitCode(err)
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

func TestGetPrintsHeadersThatWorkUpstream(t *testing.T) {
	t.Parallel()
	addr, d := startDemo(t, "")
	out, errOut, code := runCLI(t, "get", "kyc", "--addr", addr)
	if code != 0 {
		t.Fatalf("get: exit %d: %s", code, errOut)
	}
	req, _ := http.NewRequest(http.MethodGet, d.Upstreams["kyc"], nil)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("output line %q is not a header", line)
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the printed headers upstream: got %d, want 200", resp.StatusCode)
	}
	if !strings.HasPrefix(errOut, "expires 20") {
		t.Errorf("stderr: got %q, want the expiry", errOut)
	}

	out, _, code = runCLI(t, "get", "--addr", addr, "--curl", "ibanera")
	if code != 0 || !strings.Contains(out, "-H 'Authorization: Bearer ") || !strings.Contains(out, "-H 'otp: ") {
		t.Errorf("get --curl: exit %d, output %q; want -H lines with Authorization and otp", code, out)
	}

	out, _, code = runCLI(t, "get", "loginid", "--scope", "users.retrieve", "--json", "--addr", addr)
	var answer struct {
		AccessToken string            `json:"access_token"`
		Headers     map[string]string `json:"headers"`
		SingleUse   bool              `json:"single_use"`
		ExpireTime  string            `json:"expire_time"`
	}
	if err := json.Unmarshal([]byte(out), &answer); code != 0 || err != nil || !answer.SingleUse || answer.ExpireTime == "" {
		t.Errorf("get --json: exit %d, %v, %q; want a single-use answer with an expiry", code, err, out)
	}
}

func TestGetExitCodesFollowTheStatus(t *testing.T) {
	t.Parallel()
	key := "cli-key-5e1b"
	sum := sha256.Sum256([]byte(key))
	addr, _ := startDemo(t, "callers:\n  - id: key:cli\n    api_key_sha256: "+hex.EncodeToString(sum[:])+"\n    allow: [{provider: kyc}]")
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"get", "kyc", "--addr", addr}, 16, "Unauthenticated CALLER_UNIDENTIFIED"},
		{[]string{"get", "kyc", "--addr", addr, "--api-key-file", keyFile}, 0, ""},
		{[]string{"get", "insly", "--addr", addr, "--api-key-file", keyFile}, 7, "PermissionDenied"},
		{[]string{"get", "--addr", addr}, 2, "one PROVIDER is required"},
		{[]string{"get", "kyc", "--addr", "tokenvend.example:9090"}, 2, "beyond loopback"},
		{[]string{"invalidate", "kyc", "--addr", addr}, 2, "--token is required"},
		{[]string{"invalidate", "kyc", "--addr", addr, "--api-key-file", keyFile, "--token", "made-up"}, 0, ""},
	} {
		_, errOut, code := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.says) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d saying %q", tc.args, code, errOut, tc.code, tc.says)
		}
	}
}

func TestInvalidateAndProviders(t *testing.T) {
	t.Parallel()
	addr, d := startDemo(t, "")
	out, _, code := runCLI(t, "get", "kyc", "--json", "--addr", addr)
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(out), &answer); code != 0 || err != nil {
		t.Fatalf("get: exit %d, %v", code, err)
	}
	out, errOut, code := runCLI(t, "invalidate", "kyc", "--token", answer.AccessToken, "--addr", addr)
	if code != 0 || !strings.HasPrefix(out, "invalidated") {
		t.Errorf("invalidate the current token: exit %d, %q %q; want invalidated", code, out, errOut)
	}
	out, _, code = runCLI(t, "invalidate", "kyc", "--token", "made-up", "--addr", addr)
	if code != 0 || !strings.HasPrefix(out, "not invalidated") {
		t.Errorf("invalidate a made-up token: exit %d, %q; want not invalidated", code, out)
	}

	out, errOut, code = runCLI(t, "providers", "--addr", addr)
	if code != 0 {
		t.Fatalf("providers: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1+len(d.Config.Providers) || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("providers: got\n%s\nwant a header and %d providers", out, len(d.Config.Providers))
	}
	if !strings.Contains(out, "kyc") || !strings.Contains(out, "SERVING") {
		t.Errorf("providers: got\n%s\nwant kyc and its health", out)
	}
}
