// Package demo runs tokenvend against simulators of its upstreams on
// loopback, with built-in demo credentials: what `make run` starts, so a
// new user can try the service with no secret and no upstream account.
package demo

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
)

// upstreams start each simulated upstream, in the order the providers are
// listed. Each returns the provider's config block.
var upstreams = []func(d *Demo) (string, error){
	startKYC,
	startInsly,
	startIbanera,
	startLoginID,
	startIdentityX,
}

// Demo is a set of running simulators and the config that points the
// service at them.
type Demo struct {
	// Config is the service configuration for the demo.
	Config *config.Config
	// Upstreams maps each provider to its simulator's protected endpoint,
	// where a vended credential can be tried.
	Upstreams map[string]string
	// Simulators maps each provider to its simulator, for tests that read
	// its counters (type-assert to the simulator's *Server).
	Simulators map[string]http.Handler

	servers []*http.Server
}

// Start starts the simulators on loopback ports and builds the config for
// a service listening on grpcAddr and httpAddr.
func Start(grpcAddr, httpAddr string) (*Demo, error) {
	d := &Demo{Upstreams: map[string]string{}, Simulators: map[string]http.Handler{}}
	var blocks []string
	for _, start := range upstreams {
		block, err := start(d)
		if err != nil {
			d.Close()
			return nil, err
		}
		blocks = append(blocks, block)
	}
	yaml := fmt.Sprintf("server:\n  grpc_addr: %q\n  http_addr: %q\n  proxy_addr: %q\nproviders:\n%s",
		grpcAddr, httpAddr, proxyAddr(httpAddr), strings.Join(blocks, ""))
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("demo config: %w", err)
	}
	d.Config = cfg
	return d, nil
}

// ProxyAddr is where the demo's proxy mode listens.
const ProxyAddr = "127.0.0.1:8081"

// proxyAddr is ProxyAddr, or a free port when the HTTP port is one too
// (tests, which run many demos at once).
func proxyAddr(httpAddr string) string {
	if _, port, err := net.SplitHostPort(httpAddr); err == nil && port == "0" {
		return "127.0.0.1:0"
	}
	return ProxyAddr
}

// proxyBlock is a provider's proxy block: proxy mode in front of the
// simulator at url (on loopback, so plain http is allowed).
func proxyBlock(url string) string { return fmt.Sprintf("    proxy:\n      upstream: %q\n", url) }

// serve runs h on a fresh loopback port and returns its base URL.
func (d *Demo) serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	d.servers = append(d.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = ln.Close()
		}
	}()
	return "http://" + ln.Addr().String(), nil
}

// Close stops the simulators at once. It does not drain: nothing the demo
// serves needs it, and Shutdown would wait five seconds for any connection
// a client dialled but never used.
func (d *Demo) Close() {
	for _, s := range d.servers {
		_ = s.Close()
	}
}
