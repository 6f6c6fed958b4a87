package proxy_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/demo"
	"github.com/tokenvend/tokenvend/internal/provider/ibanera"
	"github.com/tokenvend/tokenvend/internal/provider/identityx"
	"github.com/tokenvend/tokenvend/internal/provider/insly"
	"github.com/tokenvend/tokenvend/internal/provider/kyc"
	"github.com/tokenvend/tokenvend/internal/provider/loginid"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/token"
)

// brokerVendor vends from a real broker over the demo's providers, built
// by their kinds as the service builds them; the app's own Vendor adds the
// caller policy and audit on top.
type brokerVendor struct{ b *broker.Broker }

func (v brokerVendor) Vend(ctx context.Context, _ string, r proxy.Request) (proxy.Credential, error) {
	a, err := v.b.Token(ctx, broker.Request{Provider: r.Provider, Scope: r.Scope, Subject: r.Subject})
	if err != nil {
		return proxy.Credential{}, err
	}
	return proxy.Credential{Headers: a.Token.Headers, AccessToken: a.Token.AccessToken, Fingerprint: fingerprint(a.Token.AccessToken)}, nil
}

func (brokerVendor) Invalidate(context.Context, string, proxy.Request, string, int) (bool, error) {
	return false, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// build builds one provider as internal/app's kinds table does.
func build(t *testing.T, p config.Provider) broker.Provider {
	t.Helper()
	hc, now := http.DefaultClient, time.Now
	var bp broker.Provider
	var err error
	switch p.Kind {
	case "kyc":
		var c kyc.Config
		err = p.Load(&c)
		bp = broker.Provider{Source: kyc.New(c, hc, now)}
	case "insly":
		var c insly.Config
		err = p.Load(&c)
		bp = broker.Provider{Source: insly.New(c, hc, now), Scopes: broker.Scopes{Allowed: c.Scopes, Default: c.DefaultScope()}}
	case "ibanera":
		var c ibanera.Config
		err = p.Load(&c)
		cl := ibanera.New(c, hc, now, sleep)
		bp = broker.Provider{Source: cl, PerCall: cl}
	case "identityx":
		var c identityx.Config
		err = p.Load(&c)
		bp = broker.Provider{Source: identityx.New(c, hc, now)}
	case "loginid":
		var c loginid.Config
		if err = p.Load(&c); err == nil {
			var cl *loginid.Client
			cl, err = loginid.New(c, now)
			bp = broker.Provider{Source: cl, Scopes: broker.Scopes{Allowed: c.Scopes}, Subject: true, SingleUse: true}
		}
	default:
		t.Fatalf("unknown kind %q", p.Kind)
	}
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	bp.Name, bp.Kind = p.Name, p.Kind
	return bp
}

// TestDemoEveryKind: the demo proxies every provider, and a call through
// the proxy reaches each simulator's protected endpoint with a working
// credential (Ibanera's otp and LoginID's single-use token fresh each
// time), while the same call without the proxy is refused.
func TestDemoEveryKind(t *testing.T) {
	t.Parallel()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if d.Config.Server.ProxyAddr == "" {
		t.Fatal("the demo sets no server.proxy_addr")
	}
	var ps []broker.Provider
	for _, p := range d.Config.Providers {
		if p.Proxy == nil {
			t.Errorf("demo provider %s has no proxy block", p.Name)
		}
		ps = append(ps, build(t, p))
	}
	b := broker.New(ps, token.Options{RefreshBefore: time.Minute, MinValid: time.Second, RejectBackoff: time.Minute,
		MaxRejectBackoff: time.Hour, LoginTimeout: 10 * time.Second, LoginAttempts: 1, Now: time.Now}, nil)
	srv := startProxyFor(t, brokerVendor{b}, d.Config.Providers, false).url

	graphql := `{"query":"{ activeUser { id } }"}`
	for _, tc := range []struct {
		provider, method, body string
		header                 []string
	}{
		{provider: "kyc", method: http.MethodGet},
		{provider: "insly", method: http.MethodGet},
		{provider: "ibanera", method: http.MethodGet},
		{provider: "ibanera", method: http.MethodGet}, // a second otp, fresh
		{provider: "loginid", method: http.MethodGet, header: []string{"Tokenvend-Scope", "users.retrieve"}},
		{provider: "loginid", method: http.MethodGet, header: []string{"Tokenvend-Scope", "users.retrieve"}}, // a second single-use token
		{provider: "identityx", method: http.MethodPost, body: graphql, header: []string{"Content-Type", "application/json"}},
	} {
		direct := d.Upstreams[tc.provider]
		i := strings.Index(strings.TrimPrefix(direct, "http://"), "/")
		path := strings.TrimPrefix(direct, "http://")[i:]
		for _, via := range []string{srv + "/" + tc.provider + path, direct} {
			req, _ := http.NewRequest(tc.method, via, strings.NewReader(tc.body))
			for j := 0; j+1 < len(tc.header); j += 2 {
				req.Header.Set(tc.header[j], tc.header[j+1])
			}
			a := do(t, req)
			refused := a.status == http.StatusUnauthorized || a.status == http.StatusForbidden ||
				(tc.provider == "identityx" && strings.Contains(a.body, `"errors"`))
			if via == direct {
				if !refused {
					t.Errorf("%s without the proxy: got %d %q, want a refusal", tc.provider, a.status, a.body)
				}
				continue
			}
			if a.status != http.StatusOK || refused {
				t.Errorf("%s through the proxy: got %d %q, want 200", tc.provider, a.status, a.body)
			}
		}
	}
}
