package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

const reloadPassword = "reload-test-password"

// upstream runs a kyc simulator with the test's one user.
func upstream(t *testing.T) (*kycsim.Server, string) {
	t.Helper()
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: "ops@example.com", Password: reloadPassword}}})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

func providerLine(name, url string) string {
	return fmt.Sprintf("  - {name: %s, kind: kyc, base_url: %q, username: ops@example.com, password: %q}\n", name, url, reloadPassword)
}

const binaryServer = `
server:
  grpc_addr: 127.0.0.1:0
  http_addr: 127.0.0.1:0
  shutdown_timeout: 300ms
providers:
`

// restToken gets provider's token over REST and checks it upstream.
func restToken(t *testing.T, addr, provider, upstreamURL string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/providers/" + provider + "/token")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string            `json:"access_token"`
		Headers     map[string]string `json:"headers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GetToken %s: %s %v", provider, resp.Status, err)
	}
	req, _ := http.NewRequest(http.MethodGet, upstreamURL+kycsim.ResourcePath, nil)
	req.Header.Set("Authorization", tok.Headers["Authorization"])
	use, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	use.Body.Close()
	if use.StatusCode != http.StatusOK {
		t.Errorf("%s's token upstream: got %d, want 200", provider, use.StatusCode)
	}
	return tok.AccessToken
}

// httpStatus is the HTTP status of GET path.
func httpStatus(t *testing.T, addr, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// scrape returns the value of metric in /metrics ("" if absent).
func scrape(t *testing.T, addr, metric string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, metric+"{") || strings.HasPrefix(line, metric+" ") {
			return line[strings.LastIndexByte(line, ' ')+1:]
		}
	}
	return ""
}

// awaitLog waits until logs holds n lines whose msg is msg, and returns
// the last.
func awaitLog(t *testing.T, logs *lockedBuffer, msg string, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found []map[string]any
		for _, line := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
				found = append(found, m)
			}
		}
		if len(found) >= n {
			return found[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for log line %d %q:\n%s", n, msg, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSIGHUPReloads: the binary reloads its config on a real SIGHUP, over
// the same listeners: an added provider is served, an unchanged one keeps
// its token without a login, a changed listen address is logged and kept;
// a bad config is refused with the field named and the old one serving;
// the reload metrics say so.
func TestSIGHUPReloads(t *testing.T) {
	t.Parallel()
	simA, urlA := upstream(t)
	_, urlC := upstream(t)
	cfg := writeConfig(t, binaryServer+providerLine("a", urlA))
	logs := &lockedBuffer{}
	cmd, addr := startBinary(t, cfg, logs)
	tokA := restToken(t, addr, "a", urlA)
	if got := scrape(t, addr, "tokenvend_config_last_reload_successful"); got != "1" {
		t.Errorf("tokenvend_config_last_reload_successful at start: got %q, want 1", got)
	}
	started := scrape(t, addr, "tokenvend_config_last_reload_success_timestamp_seconds")

	writeFile(t, cfg, strings.Replace(binaryServer, "http_addr: 127.0.0.1:0", "http_addr: 127.0.0.1:1", 1)+
		providerLine("a", urlA)+providerLine("c", urlC))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	awaitLog(t, logs, "config reloaded", 1)
	if line := awaitLog(t, logs, "config reload: server.http_addr changed; only a restart applies it, the running value stays", 1); line["config"] != "127.0.0.1:1" {
		t.Errorf("address change log: got %v", line)
	}
	restToken(t, addr, "c", urlC) // on the old address
	if got := restToken(t, addr, "a", urlA); got != tokA {
		t.Error("unchanged provider a: got a new token after the reload, want the cached one")
	}
	if got := simA.Logins(); got != 1 {
		t.Errorf("logins of unchanged provider a: got %d, want 1", got)
	}
	if got := scrape(t, addr, "tokenvend_config_last_reload_successful"); got != "1" {
		t.Errorf("tokenvend_config_last_reload_successful after a reload: got %q, want 1", got)
	}
	reloaded := scrape(t, addr, "tokenvend_config_last_reload_success_timestamp_seconds")
	if reloaded == "" || reloaded == started {
		t.Errorf("tokenvend_config_last_reload_success_timestamp_seconds: got %q after the reload, %q at start; want a later time", reloaded, started)
	}

	writeFile(t, cfg, binaryServer+providerLine("a", urlA)+"  - {name: d, kind: kyc, base_url: ftp://x}\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	refused := awaitLog(t, logs, "config reload refused: the running config goes on serving", 1)
	if !strings.Contains(fmt.Sprint(refused["fields"]), "providers[1].base_url") {
		t.Errorf("refusal log: got %v, want providers[1].base_url named", refused)
	}
	if got := scrape(t, addr, "tokenvend_config_last_reload_successful"); got != "0" {
		t.Errorf("tokenvend_config_last_reload_successful after a refusal: got %q, want 0", got)
	}
	if got := scrape(t, addr, "tokenvend_config_last_reload_success_timestamp_seconds"); got != reloaded {
		t.Errorf("tokenvend_config_last_reload_success_timestamp_seconds after a refusal: got %q, want %q (unchanged)", got, reloaded)
	}
	restToken(t, addr, "c", urlC) // the last good config still serves
	if got := httpStatus(t, addr, "/v1/providers/d/token"); got != http.StatusNotFound {
		t.Errorf("the refused config's provider d: got %d, want 404", got)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("tokenvend after SIGTERM: %v\n%s", err, logs)
	}
}

// TestWatchConfigReloads: with --watch-config the binary reloads when the
// file's content changes, laid out as a Kubernetes ConfigMap volume is:
// the path is a symlink through ..data, which is swapped atomically to a
// new directory.
func TestWatchConfigReloads(t *testing.T) {
	t.Parallel()
	_, urlA := upstream(t)
	_, urlB := upstream(t)
	dir := t.TempDir()
	version := func(name, body string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "tokenvend.yaml"), body)
	}
	swap := func(name string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", binaryServer+providerLine("a", urlA))
	swap("..v1")
	cfg := filepath.Join(dir, "tokenvend.yaml")
	if err := os.Symlink(filepath.Join("..data", "tokenvend.yaml"), cfg); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd, addr := startBinary(t, cfg, logs, "--watch-config")
	restToken(t, addr, "a", urlA)

	version("..v2", binaryServer+providerLine("a", urlA)+providerLine("b", urlB))
	swap("..v2")
	awaitLog(t, logs, "config reloaded", 1)
	restToken(t, addr, "b", urlB)

	// The same content again (a new directory, new times): no reload.
	version("..v3", binaryServer+providerLine("a", urlA)+providerLine("b", urlB))
	swap("..v3")
	version("..v4", binaryServer+providerLine("b", urlB))
	swap("..v4")
	if line := awaitLog(t, logs, "config reloaded", 2); fmt.Sprint(line["providers_removed"]) != "[a]" {
		t.Errorf("second reload: got %v, want a removed (and no reload between: the same content)", line)
	}
	if got := httpStatus(t, addr, "/v1/providers/a/token"); got != http.StatusNotFound {
		t.Errorf("removed provider a: got %d, want 404", got)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("tokenvend after SIGTERM: %v\n%s", err, logs)
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
