package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// startBinary runs `tokenvend serve --config cfg [flags]` as a child process and
// returns it with its HTTP address, read from its "tokenvend serving" log
// line. Its log goes on to logs.
func startBinary(t *testing.T, cfg string, logs io.Writer, flags ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--config", cfg}, flags...)...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // harmless once it has exited
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		fmt.Fprintln(logs, sc.Text())
		var line struct {
			Msg      string `json:"msg"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "tokenvend serving" {
			go func() { _, _ = io.Copy(logs, stderr) }()
			return cmd, line.HTTPAddr
		}
	}
	t.Fatalf("tokenvend exited before serving: %v", sc.Err())
	return nil, ""
}

// lockedBuffer is a log sink safe for two goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSIGTERMDrainsKeepAliveCallers: 50 REST callers POST GetToken in a
// loop over keep-alive connections while the binary gets SIGTERM. A POST
// that was written on a kept-alive connection is not retried by Go's
// client, so a server that closes such a connection under it fails the
// call. Each caller stops once an answer says Connection: close, as a
// caller does when a load balancer moves it elsewhere; a refused
// connection (the listener closed) is no failure, every other error is.
func TestSIGTERMDrainsKeepAliveCallers(t *testing.T) {
	t.Parallel()
	const password = "drain-test-password"
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: "ops@example.com", Password: password}}})
	upstream := httptest.NewServer(sim)
	t.Cleanup(upstream.Close)
	cfg := writeConfig(t, fmt.Sprintf(`
server:
  grpc_addr: 127.0.0.1:0
  http_addr: 127.0.0.1:0
  shutdown_timeout: 3s  # a drain of 1s
providers:
  - {name: kyc, kind: kyc, base_url: %q, username: ops@example.com, password: %q}
`, upstream.URL, password))
	logs := &lockedBuffer{}
	cmd, addr := startBinary(t, cfg, logs)
	url := "http://" + addr + "/v1/token"

	// The credential works upstream: the load below is real GetTokens.
	resp, err := http.Post(url, "application/json", strings.NewReader(`{"provider":"kyc"}`))
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Headers map[string]string `json:"headers"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first GetToken: %s %v", resp.Status, err)
	}
	req, _ := http.NewRequest(http.MethodGet, upstream.URL+kycsim.ResourcePath, nil)
	req.Header.Set("Authorization", tok.Headers["Authorization"])
	if use, err := http.DefaultClient.Do(req); err != nil || use.StatusCode != http.StatusOK {
		t.Fatalf("the vended token upstream: %v %v", use, err)
	}

	const callers = 50
	var (
		ok, closed, refused atomic.Int64
		mu                  sync.Mutex
		failures            []string
		wg                  sync.WaitGroup
		loaded              = make(chan struct{})
		loadedOnce          sync.Once
	)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 20 * time.Second}
			defer client.CloseIdleConnections()
			for {
				resp, err := client.Post(url, "application/json", strings.NewReader(`{"provider":"kyc"}`))
				if errors.Is(err, syscall.ECONNREFUSED) {
					refused.Add(1)
					return
				}
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					return
				}
				if ok.Add(1) == 10*callers {
					loadedOnce.Do(func() { close(loaded) })
				}
				if resp.Close {
					closed.Add(1)
					return
				}
			}
		}()
	}
	select {
	case <-loaded:
	case <-time.After(20 * time.Second):
		t.Fatal("the callers did not get going")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// During the drain the port still takes new connections, and says it
	// is not ready.
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for ready := true; ready; {
		resp, err := probe.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("readyz during the drain: %v", err)
		}
		resp.Body.Close()
		ready = resp.StatusCode == http.StatusOK
	}
	wg.Wait()
	if err := cmd.Wait(); err != nil {
		t.Errorf("tokenvend after SIGTERM: %v\n%s", err, logs)
	}
	t.Logf("%d answered, %d told Connection: close, %d refused after the listener closed", ok.Load(), closed.Load(), refused.Load())
	if len(failures) > 0 {
		t.Errorf("%d of %d callers failed a request sent before the listener closed, e.g. %s", len(failures), callers, failures[0])
	}
	if closed.Load() == 0 {
		t.Error("no caller was told Connection: close: the test did not reach the drain")
	}
}
