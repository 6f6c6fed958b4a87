package config_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
)

// proxied is a document with one kyc provider whose proxy block is block
// (indented by six spaces, under "    proxy:").
func proxied(server, block string) string {
	return server + "providers:\n  - name: kyc\n    kind: kyc\n    base_url: https://kyc.example.com\n    proxy:\n" + block
}

func TestProxyDefaultsAndValues(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, proxied("server:\n  proxy_addr: 127.0.0.1:8081\n", "      upstream: https://kyc.example.com/api\n"))
	if cfg.Server.ProxyAddr != "127.0.0.1:8081" {
		t.Errorf("ProxyAddr: got %q, want 127.0.0.1:8081", cfg.Server.ProxyAddr)
	}
	px := cfg.Providers[0].Proxy
	if px == nil {
		t.Fatal("Proxy: got nil, want the decoded block")
	}
	if px.Upstream != "https://kyc.example.com/api" || px.Timeout != 60*time.Second || !slices.Equal(px.RetryStatuses, []int{401}) || px.PropagateTrace || px.AllowPlaintext {
		t.Errorf("Proxy: got %+v, want upstream set, timeout 60s, retry_statuses [401], the rest off", *px)
	}

	cfg = mustParse(t, proxied("", "      upstream: http://10.0.0.1:9000\n      retry_statuses: [401, 403]\n      propagate_trace: true\n      allow_plaintext: true\n      timeout: 5s\n"))
	px = cfg.Providers[0].Proxy
	want := config.Proxy{Upstream: "http://10.0.0.1:9000", RetryStatuses: []int{401, 403}, PropagateTrace: true, AllowPlaintext: true, Timeout: 5 * time.Second}
	if px.Upstream != want.Upstream || !slices.Equal(px.RetryStatuses, want.RetryStatuses) || px.PropagateTrace != want.PropagateTrace ||
		px.AllowPlaintext != want.AllowPlaintext || px.Timeout != want.Timeout {
		t.Errorf("Proxy: got %+v, want %+v", *px, want)
	}

	// An empty list turns retries off; it is not replaced by the default.
	cfg = mustParse(t, proxied("", "      upstream: https://kyc.example.com\n      retry_statuses: []\n"))
	if got := cfg.Providers[0].Proxy.RetryStatuses; got == nil || len(got) != 0 {
		t.Errorf("RetryStatuses: got %#v, want an empty list", got)
	}

	// No block: no proxy, and no proxy listener by default.
	cfg = mustParse(t, providers)
	if cfg.Providers[0].Proxy != nil || cfg.Server.ProxyAddr != "" {
		t.Errorf("got Proxy %+v, ProxyAddr %q; want neither", cfg.Providers[0].Proxy, cfg.Server.ProxyAddr)
	}
}

// TestProxyIsNotAKindKey: the kind decodes its keys strictly, and proxy is
// not one of them.
func TestProxyIsNotAKindKey(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, proxied("", "      upstream: https://kyc.example.com\n"))
	var k struct {
		BaseURL string `yaml:"base_url"`
	}
	if err := cfg.Providers[0].Decode(&k); err != nil {
		t.Fatalf("Decode: got %v, want nil", err)
	}
	if k.BaseURL != "https://kyc.example.com" {
		t.Errorf("base_url: got %q", k.BaseURL)
	}
}

func TestProxyBadField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, doc string
		want      string
	}{
		{"upstream missing", proxied("", "      timeout: 5s\n"), "providers[0].proxy.upstream: is required"},
		{"block empty", proxied("", ""), "providers[0].proxy: must be a mapping with at least upstream"},
		{"block a scalar", proxied("", "      "+canary+"\n"), "providers[0].proxy: must be a mapping"},
		{"unknown key", proxied("", "      upstream: https://kyc.example.com\n      retry_status: [401]\n"), "providers[0].proxy.retry_status: unknown key"},
		{"not http", proxied("", "      upstream: ftp://kyc.example.com\n"), "providers[0].proxy.upstream: must be an absolute http or https URL"},
		{"query", proxied("", "      upstream: https://kyc.example.com/?a=1\n"), "providers[0].proxy.upstream: must not have a query or fragment: paths are appended to it"},
		{"fragment", proxied("", "      upstream: https://kyc.example.com/#x\n"), "providers[0].proxy.upstream: must not have a query or fragment: paths are appended to it"},
		{"userinfo", proxied("", "      upstream: https://u:"+canary+"@kyc.example.com/\n"), "providers[0].proxy.upstream: must not carry credentials: use the secret keys"},
		{"plain http beyond loopback", proxied("", "      upstream: http://kyc.example.com\n"),
			"providers[0].proxy.upstream: is plain http to a host beyond loopback, which would send the credential in clear: use https, or set allow_plaintext: true"},
		{"retry status 200", proxied("", "      upstream: https://kyc.example.com\n      retry_statuses: [401, 200]\n"), "providers[0].proxy.retry_statuses[1]: must be a 4xx or 5xx status"},
		{"retry status 600", proxied("", "      upstream: https://kyc.example.com\n      retry_statuses: [600]\n"), "providers[0].proxy.retry_statuses[0]: must be a 4xx or 5xx status"},
		{"retry statuses not numbers", proxied("", "      upstream: https://kyc.example.com\n      retry_statuses: [x]\n"), "providers[0].proxy.retry_statuses: must be a list of whole numbers"},
		{"timeout zero", proxied("", "      upstream: https://kyc.example.com\n      timeout: 0s\n"), "providers[0].proxy.timeout: must be positive"},
		{"timeout not a duration", proxied("", "      upstream: https://kyc.example.com\n      timeout: "+canary+"\n"), "providers[0].proxy.timeout: must be a duration such as 30s, 5m or 1h"},
		{"allow_plaintext not a bool", proxied("", "      upstream: https://kyc.example.com\n      allow_plaintext: "+canary+"\n"), "providers[0].proxy.allow_plaintext: must be true or false"},
		{"proxy_addr without port", "server:\n  proxy_addr: " + canary + "\n" + providers, "server.proxy_addr: must be host:port"},
		{"proxy_addr beyond loopback without callers", "server:\n  proxy_addr: 0.0.0.0:8081\n" + providers,
			"server.proxy_addr: listens beyond loopback but no callers are configured: anyone who reaches the port could call every upstream with its credentials; configure callers, or set server.insecure_allow_any_caller: true"},
		{"proxy_addr on the http port", "server:\n  proxy_addr: 127.0.0.1:8080\n" + providers, "server.proxy_addr: must differ from server.grpc_addr and server.http_addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(tc.doc))
			got := lines(err)
			if n := count(got, tc.want); n != 1 {
				t.Errorf("got error lines %q, want %q exactly once (found %d times)", got, tc.want, n)
			}
			field, _, _ := strings.Cut(tc.want, ": ")
			if n := countPrefix(got, field+": "); n != 1 {
				t.Errorf("got error lines %q, want field %s named on exactly one line (found %d)", got, field, n)
			}
			if err != nil && strings.Contains(err.Error(), canary) {
				t.Errorf("got error %q, which echoes the value", err)
			}
		})
	}
}

func TestProxyGoodUpstreams(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"https://kyc.example.com", "https://kyc.example.com/api/", "http://127.0.0.1:9000", "http://localhost:9000/x", "http://[::1]:9000"} {
		mustParse(t, proxied("", "      upstream: "+u+"\n"))
	}
	// Beyond loopback with callers configured, or with the explicit opt-out.
	mustParse(t, "server:\n  proxy_addr: 0.0.0.0:8081\n  insecure_allow_any_caller: true\n"+providers)
}
