package app

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
)

// TestHTTPTimeoutsOutlastACall: the HTTP port bounds slow clients, but no
// bound cuts a healthy call. WriteTimeout runs while a call waits, and a
// call that outlasts it gets no answer, so it must exceed a shared login
// (cache.login_timeout) and a wait for a fresh TOTP step (30s).
func TestHTTPTimeoutsOutlastACall(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
server: {grpc_addr: '127.0.0.1:0', http_addr: '127.0.0.1:0'}
cache: {login_timeout: 45s}
providers:
  - {name: kyc, kind: kyc, base_url: 'http://127.0.0.1:1', username: u, password: p}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(context.Background(), cfg, Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	s := a.httpSrv
	if longest := cfg.Cache.LoginTimeout + 30*time.Second; s.WriteTimeout <= longest {
		t.Errorf("WriteTimeout: got %v, want more than %v", s.WriteTimeout, longest)
	}
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": s.ReadHeaderTimeout, "ReadTimeout": s.ReadTimeout, "IdleTimeout": s.IdleTimeout,
	} {
		if d <= 0 || d > time.Minute*2 {
			t.Errorf("%s: got %v, want a bound of at most 2m", name, d)
		}
	}
	if s.MaxHeaderBytes <= 0 || s.MaxHeaderBytes > 1<<20 {
		t.Errorf("MaxHeaderBytes: got %d, want a bound below net/http's default of 1 MiB", s.MaxHeaderBytes)
	}
	if got := a.drain(); got != 5*time.Second {
		t.Errorf("drain with the default shutdown_timeout (15s): got %v, want 5s", got)
	}
}
