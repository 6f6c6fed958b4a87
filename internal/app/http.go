package app

import (
	"context"
	"fmt"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenvend/tokenvend"
	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// newGateway returns the REST mirror of the TokenService, calling srv in
// process. JSON uses the proto field names (access_token, expire_time), as
// OAuth callers expect, and a request body with an unknown field is
// refused, not half-read. The caller's identity travels in the context
// (auth.Policy.HTTP), where no header can reach; the header matcher keeps
// what a caller sends out of the metadata the Server sees.
func newGateway(ctx context.Context, srv tokenvendv1.TokenServiceServer) (http.Handler, error) {
	mux := runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, restMarshaler{&runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
	)
	if err := tokenvendv1.RegisterTokenServiceHandlerServer(ctx, mux, srv); err != nil {
		return nil, err
	}
	return mux, nil
}

// httpHandler routes the HTTP port: the REST API under /v1/, and the
// operational endpoints beside it.
func (a *App) httpHandler(gw http.Handler) http.Handler {
	mux := http.NewServeMux()
	api := limitBody(gw)
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
	return mux
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
