package proxy_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/proxy"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// BenchmarkKYCResource is the proxy's cost on top of the upstream: the
// simulator's protected endpoint called through the proxy with a cached
// credential, and called directly with the same credential.
func BenchmarkKYCResource(b *testing.B) {
	up := startKYC(b)
	v := newVendor(b, up)
	// Logged as in production (a JSON line per request, to a sink), not
	// traced: the tests' in-memory span exporter would be the cost.
	cfg, err := config.Parse([]byte("providers:\n" + block("kyc", up.url, "")))
	if err != nil {
		b.Fatal(err)
	}
	px, err := proxy.New(cfg.Providers, v, proxy.Options{Policy: auth.New(nil), Log: slog.New(slog.NewJSONHandler(io.Discard, nil)), Audit: audit.New(io.Discard)})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = px.Server()
	srv.Start()
	b.Cleanup(srv.Close)
	p := struct{ url string }{srv.URL}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	call := func(b *testing.B, url string, header map[string]string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for k, val := range header {
			req.Header.Set(k, val)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("got %d, want 200", resp.StatusCode)
		}
	}
	call(b, p.url+"/kyc"+kycsim.ResourcePath, nil) // logs in once
	b.Run("direct", func(b *testing.B) {
		h := map[string]string{"Authorization": "Bearer " + v.token()}
		for b.Loop() {
			call(b, up.url+kycsim.ResourcePath, h)
		}
	})
	b.Run("proxied", func(b *testing.B) {
		for b.Loop() {
			call(b, p.url+"/kyc"+kycsim.ResourcePath, nil)
		}
	})
}
