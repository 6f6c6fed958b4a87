package app_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// TestConcurrentLoginsReuseConnections: eight providers of one upstream log
// in at once, again and again; after the first wave the logins reuse the
// connections already open (Go's default keeps 2 idle per host, so 6 of 8
// were dialled again every wave: a TCP and TLS handshake per login).
func TestConcurrentLoginsReuseConnections(t *testing.T) {
	t.Parallel()
	const providers = 8
	clk := newClock()
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: kycUser, Password: kycPassword}}, Now: clk.Now})
	// Each wave's logins are held until all eight have arrived, so they
	// are truly concurrent.
	var arrived sync.WaitGroup
	var dialled atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == kycsim.LoginPath {
			arrived.Done()
			arrived.Wait()
		}
		sim.ServeHTTP(w, r)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialled.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	var yaml strings.Builder
	yaml.WriteString("providers:")
	for i := range providers {
		yaml.WriteString(kycProvider(fmt.Sprintf("kyc%d", i), up.URL, kycPassword))
	}
	s := startService(t, clk, yaml.String())
	wave := func() {
		t.Helper()
		arrived.Add(providers)
		var wg sync.WaitGroup
		for i := range providers {
			wg.Go(func() {
				if _, err := s.get(&tokenvendv1.GetTokenRequest{Provider: fmt.Sprintf("kyc%d", i)}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	wave()
	first := dialled.Load()
	for range 2 {
		clk.Advance(2 * time.Hour) // every token expired: eight logins again
		wave()
	}
	if n := sim.Logins(); n != 3*providers {
		t.Fatalf("upstream logins: got %d, want %d", n, 3*providers)
	}
	if again := dialled.Load() - first; again != 0 {
		t.Errorf("connections dialled after the first wave: got %d, want 0 (they are kept and reused)", again)
	}
}
