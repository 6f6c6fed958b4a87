package app

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/proxy"
	"github.com/tokenvend/tokenvend/internal/server"
)

// proxyPort is proxy mode's listener, when server.proxy_addr is set.
type proxyPort struct {
	ln  net.Listener
	srv *http.Server
}

// newProxyPort builds proxy mode over srv's GetToken and InvalidateToken
// paths, its audit lines written to auditLog (srv's writer), and binds its
// listener: TLS as the other ports, the Host check
// without callers (a web page could rebind its name to 127.0.0.1 here as
// well), and Connection: close while stopping.
func (a *App) newProxyPort(srv *server.Server, policy *auth.Policy, log *slog.Logger, auditLog *audit.Writer, tlsCfg *tls.Config) (*proxyPort, error) {
	o := proxy.Options{Policy: policy, Log: log, Audit: auditLog, Meter: a.tel.Meter.Meter("tokenvend"), Propagators: a.tel.Propagators}
	if a.tel.Tracing {
		o.Tracer = a.tel.Tracer
	}
	px, err := proxy.New(a.cfg.Providers, srv.Vendor(), o)
	if err != nil {
		return nil, err
	}
	p := &proxyPort{srv: px.Server()}
	var h http.Handler = px
	if a.cfg.Callers == nil {
		h = checkHost(a.cfg.Server.AllowedHosts, h)
	}
	p.srv.Handler = a.closeWhenStopping(h)
	if p.ln, err = net.Listen("tcp", a.cfg.Server.ProxyAddr); err != nil {
		return nil, fmt.Errorf("server.proxy_addr: %w", err)
	}
	if tlsCfg != nil {
		p.ln = tls.NewListener(p.ln, tlsCfg)
	}
	return p, nil
}

// ProxyAddr is the address proxy mode listens on, "" when it is off.
func (a *App) ProxyAddr() string {
	if a.proxy == nil {
		return ""
	}
	return a.proxy.ln.Addr().String()
}
