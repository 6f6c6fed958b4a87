package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.yaml.in/yaml/v3"
)

// Proxy is a provider's proxy block: where proxied calls go, and how they
// are retried. A provider without one is not proxied.
type Proxy struct {
	// Upstream is the API the credential is for; a proxied
	// {proxy_addr}/{provider}/{path} goes to {upstream}/{path}.
	Upstream string `yaml:"upstream"`
	// RetryStatuses are the upstream statuses that mean "credential
	// refused": the credential is invalidated and the call retried once.
	// Absent: [401]; an empty list turns retries off.
	RetryStatuses []int `yaml:"retry_statuses"`
	// PropagateTrace passes the caller's traceparent, tracestate and
	// baggage on to the upstream (a third party: off by default).
	PropagateTrace bool `yaml:"propagate_trace"`
	// AllowPlaintext allows an http:// upstream beyond loopback, which
	// sends the credential in clear.
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// Timeout bounds one proxied request, response body included.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultProxyTimeout is proxy.timeout when unset.
const DefaultProxyTimeout = 60 * time.Second

// validateProxy decodes every provider's proxy block (a key config reads
// itself, so the kinds never see it) and checks it and server.proxy_addr.
func (c *Config) validateProxy() []error {
	var errs []error
	if addr := c.Server.ProxyAddr; addr != "" {
		const path = "server.proxy_addr"
		switch err := validAddr(addr); {
		case err != nil:
			errs = append(errs, Errorf(path, "%v", err))
		case c.Callers == nil && !c.Server.InsecureAllowAnyCaller && !loopback(addr):
			// As for the other ports: without callers, whoever reaches it
			// calls every upstream with tokenvend's credentials.
			errs = append(errs, Errorf(path, "listens beyond loopback but no callers are configured: anyone who reaches the port could call every upstream with its credentials; configure callers, or set server.insecure_allow_any_caller: true"))
		case (addr == c.Server.GRPCAddr || addr == c.Server.HTTPAddr) && !hasPortZero(addr):
			errs = append(errs, Errorf(path, "must differ from server.grpc_addr and server.http_addr"))
		}
	}
	for i := range c.Providers {
		p := &c.Providers[i]
		n := p.proxyNode()
		if n == nil {
			continue
		}
		path := Join(p.Path, "proxy")
		px := &Proxy{Timeout: DefaultProxyTimeout, RetryStatuses: []int{401}}
		var derr error
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			derr = Errorf(path, "must be a mapping with at least upstream")
		} else {
			derr = decode(n, px, path)
		}
		errs = append(errs, dedupe(derr, Nest(path, px.validate())))
		p.Proxy = px
	}
	return errs
}

func hasPortZero(addr string) bool {
	_, port, _ := net.SplitHostPort(addr)
	return port == "0"
}

// proxyNode is the value of the provider's proxy key, nil when absent.
func (p *Provider) proxyNode() *yaml.Node {
	if p.node == nil {
		return nil
	}
	kv := pairs(p.node)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i].Value == "proxy" {
			v := kv[i+1]
			for v.Kind == yaml.AliasNode {
				v = v.Alias
			}
			return v
		}
	}
	return nil
}

// validate checks a decoded proxy block; paths are relative to it.
func (px *Proxy) validate() error {
	var errs []error
	if err := CheckURL(px.Upstream); err != nil {
		errs = append(errs, Errorf("upstream", "%v", err))
	} else if u, _ := url.Parse(px.Upstream); u.Scheme == "http" && !px.AllowPlaintext && !loopback(net.JoinHostPort(u.Hostname(), "0")) {
		errs = append(errs, Errorf("upstream", "is plain http to a host beyond loopback, which would send the credential in clear: use https, or set allow_plaintext: true"))
	}
	for i, s := range px.RetryStatuses {
		if s < 400 || s > 599 {
			errs = append(errs, Errorf(fmt.Sprintf("retry_statuses[%d]", i), "must be a 4xx or 5xx status"))
		}
	}
	if px.Timeout <= 0 {
		errs = append(errs, Errorf("timeout", "must be positive"))
	}
	return errors.Join(errs...)
}
