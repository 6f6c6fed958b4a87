package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenvend/tokenvend"
	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// newGateway returns the REST mirror of the TokenService, calling srv in
// process. JSON uses the proto field names (access_token, expire_time), as
// OAuth callers expect, and a request body with an unknown field is
// refused, not half-read. The caller's identity travels in the context
// (auth.Policy.HTTP), where no header can reach; the header matcher keeps
// what a caller sends out of the metadata the Server sees. A method a path
// does not take is 405 with an Allow header, not grpc-gateway's 501.
func newGateway(ctx context.Context, srv tokenvendv1.TokenServiceServer) (http.Handler, error) {
	routes, err := restRoutes(tokenvend.OpenAPI)
	if err != nil {
		return nil, err
	}
	mux := runtime.NewServeMux(
		runtime.WithRoutingErrorHandler(routingError(routes)),
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newRESTMarshaler(&runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		})),
	)
	if err := tokenvendv1.RegisterTokenServiceHandlerServer(ctx, mux, srv); err != nil {
		return nil, err
	}
	return mux, nil
}

// route is a REST path template, split at '/', with the methods it takes.
type route struct {
	segments []string
	allow    string // e.g. "GET", or "GET, POST"
}

// restRoutes reads the REST paths and their methods from the OpenAPI
// document, which is generated from the same proto as the gateway.
func restRoutes(doc []byte) ([]route, error) {
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi document: %w", err)
	}
	var routes []route
	for path, ops := range d.Paths {
		var methods []string
		for m := range ops {
			methods = append(methods, strings.ToUpper(m))
		}
		slices.Sort(methods)
		routes = append(routes, route{strings.Split(path, "/"), strings.Join(methods, ", ")})
	}
	return routes, nil
}

// allowFor returns the methods path takes, or "" if no route matches. A
// {param} segment matches any one non-empty segment. path is unescaped, as
// the gateway (in its default mode) matches it.
func allowFor(routes []route, path string) string {
	segments := strings.Split(path, "/")
	for _, r := range routes {
		if slices.EqualFunc(r.segments, segments, func(t, s string) bool {
			return t == s || strings.HasPrefix(t, "{") && s != ""
		}) {
			return r.allow
		}
	}
	return ""
}

// routingError answers a method the path does not take with 405 and the
// methods it does take; other routing errors as grpc-gateway does.
func routingError(routes []route) runtime.RoutingErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
		if code != http.StatusMethodNotAllowed {
			runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
			return
		}
		msg := "method not allowed on this path"
		if allow := allowFor(routes, r.URL.Path); allow != "" {
			w.Header().Set("Allow", allow)
			msg += ": use " + allow
		}
		runtime.HTTPError(ctx, mux, m, w, r, &runtime.HTTPStatusError{
			HTTPStatus: code,
			Err:        status.Error(codes.Unimplemented, msg),
		})
	}
}

// httpHandler routes the HTTP port: the REST API under /v1/, and the
// operational endpoints beside it.
func (a *App) httpHandler(gw http.Handler) http.Handler {
	mux := http.NewServeMux()
	api := noStore(limitBody(gw))
	if a.tel.Tracing {
		// The REST hop's span. otelhttp's own HTTP metrics are left out:
		// tokenvend_requests_total counts GetToken by provider and code on
		// both ports, and without a span to record, otelhttp would only
		// cost (about an eighth of a REST call's CPU when it ran untraced).
		api = otelhttp.NewHandler(api, "tokenvend.rest",
			otelhttp.WithTracerProvider(a.tel.Tracer), otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelhttp.WithPropagators(a.tel.Propagators))
	}
	mux.Handle("/v1/", limitURI(api))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.stopping.Load() {
			writeText(w, http.StatusServiceUnavailable, "stopping\n")
			return
		}
		writeText(w, http.StatusOK, "ready\n")
	})
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(tokenvend.OpenAPI)
	})
	mux.Handle("GET /metrics", a.tel.Metrics)
	// The Host check is the config in force's (see generation.hosts).
	a.mux = mux
	return a.closeWhenStopping(http.HandlerFunc(a.serveHosts))
}

// noStore keeps every REST answer out of caches, as RFC 6749 §5.1 asks of
// answers that carry a token. All of /v1/ is marked, errors included: it
// is simpler than telling which answers carry one, and none should be
// cached.
func noStore(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		next.ServeHTTP(w, r)
	})
}

// checkHost answers only requests whose Host is an IP address, localhost or
// one of allowed. Without callers, whoever reaches the port gets tokens, and
// a web page can reach a loopback port by having its own name resolve to
// 127.0.0.1 (DNS rebinding); its requests then carry the page's name as
// Host. The whole port is guarded, not just /v1/: probes and scrapes
// address a pod by IP, and /metrics names the providers.
func checkHost(allowed []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, allowed) {
			writeText(w, http.StatusForbidden, "tokenvend: this Host is not allowed: without callers, the HTTP port answers "+
				"only an IP address, localhost, or a name listed in server.allowed_hosts\n")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostAllowed reports whether a Host header (a name or IP, with or without
// a port) is an IP literal, localhost, or one of allowed, ignoring case.
func hostAllowed(host string, allowed []string) bool {
	name, _, err := net.SplitHostPort(host)
	if err != nil {
		name = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	if strings.EqualFold(name, "localhost") {
		return true
	}
	return slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, name) })
}

// closeWhenStopping makes every answer of a stopping service say
// Connection: close, so that a keep-alive caller opens its next connection
// elsewhere instead of writing a request on one that shutdown is about to
// close (Go's client does not retry a POST cut that way). It is not
// http.Server.SetKeepAlivesEnabled(false): that also closes the idle
// connections at once, the very race the drain is there to avoid.
func (a *App) closeWhenStopping(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// maxRequestBody bounds a REST request body: a GetToken request is a few
// hundred bytes, and the body is read before the caller is identified.
const maxRequestBody = 64 << 10

// maxRequestURI bounds a REST request's path and query, refused before
// the REST span records them: the longest valid GetToken URL (a 63-byte
// provider, a 256-byte scope and subject, all percent-encoded) is under
// 2 kB, and anyone may send one of 60 kB.
const maxRequestURI = 4 << 10

func limitURI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.RequestURI()) > maxRequestURI {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusRequestURITooLong)
			_, _ = fmt.Fprintf(w, `{"code":%d,"message":"the request URI is longer than %d bytes","details":[]}`, codes.InvalidArgument, maxRequestURI)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
		next.ServeHTTP(w, r)
	})
}
