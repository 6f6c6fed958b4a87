package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runMainEnv makes the test binary run main instead of the tests: a child
// process that is the real command, with its real stderr and signals.
const runMainEnv = "TOKENVEND_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokenvend.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheck(t *testing.T) {
	t.Parallel()
	good := writeConfig(t, `
server:
  grpc_addr: 127.0.0.1:9090
  http_addr: 127.0.0.1:8080
cache:
  refresh_before: 5m
  min_valid: 30s
providers:
  - name: kyc
    kind: kyc
    base_url: http://127.0.0.1:8001
    username: ops@example.com
    password: {file: `+writeConfig(t, "s3cret\n")+`}
    token_ttl: 1h
`)
	bad := writeConfig(t, `
server:
  grpc_adr: 127.0.0.1:9090
cache:
  refresh_before: soon
providers:
  - name: kyc
    kind: kyc
    base_url: ftp://example.com
    pasword: hunter2
    password: {env: TOKENVEND_TEST_UNSET_VARIABLE}
  - name: kyc
    kind: oauth9
`)
	cases := []struct {
		name    string
		args    []string
		wantErr []string // each must appear in the error
		wantOut string
	}{
		{"good config", []string{"check", "--config", good}, nil, "ok"},
		{"every bad field named", []string{"check", "--config", bad}, []string{
			"server.grpc_adr: unknown key",
			"cache.refresh_before: must be a duration",
			"providers[0].base_url: must be an absolute http or https URL",
			"providers[0].pasword: unknown key",
			"providers[0].username: is required",
			"providers[0].password: environment variable TOKENVEND_TEST_UNSET_VARIABLE is not set",
			`providers[1].name: "kyc" is already used by providers[0]`,
			`providers[1].kind: unknown kind "oauth9"`,
		}, ""},
		{"missing --config", []string{"check"}, []string{"--config FILE is required"}, ""},
		{"missing file", []string{"check", "--config", "/nonexistent/tokenvend.yaml"}, []string{"no such file"}, ""},
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`}, ""},
		{"no command", nil, []string{"a command is required"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tc.args, &stdout, &stderr)
			if len(tc.wantErr) == 0 {
				if err != nil || !strings.Contains(stdout.String(), tc.wantOut) {
					t.Fatalf("got %v, stdout %q; want success printing %q", err, stdout.String(), tc.wantOut)
				}
				return
			}
			if err == nil {
				t.Fatalf("got success, want an error naming %v", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not name %q:\n%v", want, err)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error echoes a value from the config:\n%v", err)
			}
		})
	}
}

// TestServeStopsCleanly runs `serve` and stops it as SIGTERM would, by
// cancelling its context: it must exit without error.
func TestServeStopsCleanly(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, `
server:
  grpc_addr: 127.0.0.1:0
  http_addr: 127.0.0.1:0
  shutdown_timeout: 300ms  # and so a drain of 100ms
providers:
  - name: kyc
    kind: kyc
    base_url: http://127.0.0.1:1
    username: ops@example.com
    password: x
`)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, &bytes.Buffer{}, &stderr) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after cancel: got %v, want nil", err)
	}
}
