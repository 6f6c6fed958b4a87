// Package proxy is tokenvend's proxy mode. A caller that cannot or should
// not hold credentials sends its upstream call to
// {proxy_addr}/{provider}/{path}; the proxy gets the credential through
// the same path GetToken takes (caller identity, grants, audit, the cache,
// fresh per-call parts), attaches it, and sends the call to the provider's
// proxy.upstream. The response comes back as the upstream sent it. A
// response that says the credential was refused (proxy.retry_statuses)
// invalidates it, and the call is retried once with a fresh one when its
// body was small enough to keep.
//
// The proxy only ever talks to the configured upstream, under its path:
// a request whose target could leave that prefix is refused (400), and
// redirects are never followed.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/config"
)

// Request names the credential a proxied call needs, as a GetTokenRequest
// does: scope and subject come from the Tokenvend-Scope and
// Tokenvend-Subject headers, empty when absent (the provider's defaults).
type Request struct {
	Provider, Scope, Subject string
}

// Credential is what a proxied call is sent with.
type Credential struct {
	// Headers are every header the upstream call needs, Authorization and
	// per-call parts (a TOTP code, a single-use token) included.
	Headers map[string]string
	// AccessToken is the credential Invalidate reports when the upstream
	// refuses it. It never leaves the proxy.
	AccessToken string
	// Scope is the effective scope (the provider's default applied), for
	// the audit line.
	Scope string
	// Fingerprint is the token's fingerprint as GetToken's audit line
	// writes it (server.Fingerprint), so the two can be matched.
	Fingerprint string
}

// Vendor is the token service as the proxy needs it.
type Vendor interface {
	// Vend identifies and authorizes caller as GetToken does, gets the
	// credential (per-call parts fresh on every call) and writes
	// GetToken's audit line. Its errors are *token.Error.
	Vend(ctx context.Context, caller string, r Request) (Credential, error)
	// Invalidate reports a credential the upstream refused, with
	// InvalidateToken's semantics (its rate limit included): it reports
	// whether the cached credential was dropped.
	Invalidate(ctx context.Context, caller string, r Request, accessToken string, upstreamStatus int) (bool, error)
}

// Options are what the wiring passes in; nil fields mean "none".
type Options struct {
	// Policy identifies callers (auth.Policy.HTTP). Required.
	Policy *auth.Policy
	// Log receives the proxy's own lines (a failed upstream call, an
	// audit line that could not be written).
	Log *slog.Logger
	// Audit receives the audit line of every proxied request, in group
	// commit with GetToken's (the service passes the Server's writer).
	// Required. The line is written once the request is done, so after
	// the upstream's answer has gone to the caller (the GetToken line of
	// its credential is written before the call): a sink that fails then
	// cannot fail the call, and is reported on Log at error level.
	Audit *audit.Writer
	// Meter records tokenvend.proxy.requests and tokenvend.proxy.duration.
	Meter metric.Meter
	// Tracer, when set, traces each proxied request (a server span) and
	// the upstream call under it (a client span).
	Tracer trace.TracerProvider
	// Propagators extract a caller's trace context for the server span.
	// Nothing is ever injected into the upstream call.
	Propagators propagation.TextMapPropagator
}

// Limits of the proxy's own listener and of upstream answers.
const (
	// maxReplayBody is the largest request body kept for a retry.
	maxReplayBody = 1 << 20
	// MaxHeaderBytes bounds a caller's request headers.
	MaxHeaderBytes = 64 << 10
	// ReadHeaderTimeout bounds how long a caller may take to send them.
	ReadHeaderTimeout = 10 * time.Second
	// maxResponseHeaderBytes bounds an upstream's response headers.
	maxResponseHeaderBytes = 256 << 10
)

// Proxy serves proxy mode for the providers that have a proxy block.
type Proxy struct {
	routes   map[string]*route
	vendor   Vendor
	policy   *auth.Policy
	log      *slog.Logger
	audit    *audit.Writer
	rp       *httputil.ReverseProxy
	handler  http.Handler
	requests metric.Int64Counter
	duration metric.Float64Histogram
}

// route is one proxied provider.
type route struct {
	name     string
	upstream *url.URL
	// path and rawPath are the upstream's path, decoded and escaped.
	path, rawPath  string
	retry          []int
	propagateTrace bool
	timeout        time.Duration
}

// New returns the proxy for the providers that have a proxy block
// (validated by config), getting credentials from v.
func New(providers []config.Provider, v Vendor, o Options) (*Proxy, error) {
	if o.Policy == nil {
		return nil, errors.New("proxy: Options.Policy is required: it identifies callers")
	}
	if o.Audit == nil {
		return nil, errors.New("proxy: Options.Audit is required: every proxied request is audited")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Meter == nil {
		o.Meter = metricnoop.NewMeterProvider().Meter("tokenvend")
	}
	p := &Proxy{routes: map[string]*route{}, vendor: v, policy: o.Policy, log: o.Log, audit: o.Audit}
	for _, cp := range providers {
		if cp.Proxy == nil {
			continue
		}
		u, err := url.Parse(cp.Proxy.Upstream)
		if err != nil {
			return nil, config.Errorf(config.Join(cp.Path, "proxy.upstream"), "must be an absolute http or https URL")
		}
		p.routes[cp.Name] = &route{
			name: cp.Name, upstream: u, path: u.Path, rawPath: u.EscapedPath(),
			retry: cp.Proxy.RetryStatuses, propagateTrace: cp.Proxy.PropagateTrace, timeout: cp.Proxy.Timeout,
		}
	}
	var err error
	if p.requests, err = o.Meter.Int64Counter("tokenvend.proxy.requests",
		metric.WithDescription("Proxied requests, by provider and the HTTP status the caller got.")); err != nil {
		return nil, err
	}
	if p.duration, err = o.Meter.Float64Histogram("tokenvend.proxy.duration", metric.WithUnit("s"),
		metric.WithDescription("Time taken by a proxied request, credential and retry included.")); err != nil {
		return nil, err
	}

	var rt http.RoundTripper = newTransport()
	if o.Tracer != nil {
		// Upstreams are third parties: an empty propagator injects no
		// trace context (a caller's own passes through only with
		// proxy.propagate_trace).
		rt = otelhttp.NewTransport(rt, otelhttp.WithTracerProvider(o.Tracer),
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()))
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      &retrier{p: p, next: rt},
		ModifyResponse: p.upstreamAnswered,
		ErrorHandler:   p.upstreamFailed,
		ErrorLog:       slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
		BufferPool:     &bufferPool{},
	}
	var h http.Handler = http.HandlerFunc(p.serve)
	if o.Tracer != nil {
		prop := o.Propagators
		if prop == nil {
			prop = propagation.NewCompositeTextMapPropagator()
		}
		h = otelhttp.NewHandler(h, "tokenvend.proxy", otelhttp.WithTracerProvider(o.Tracer),
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()), otelhttp.WithPropagators(prop))
	}
	p.handler = o.Policy.HTTP(h)
	return p, nil
}

// newTransport is the upstream transport: no redirects (a Transport never
// follows them), no transparent decompression (the caller's
// Accept-Encoding and the upstream's Content-Encoding pass through as
// they are), and bounded response headers.
func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.MaxResponseHeaderBytes = maxResponseHeaderBytes
	t.MaxIdleConnsPerHost = 32
	return t
}

// bufferPool keeps the ReverseProxy's body copy buffers: without it,
// every request allocates 32 KiB.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// ServeHTTP serves one proxied request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.handler.ServeHTTP(w, r) }

// Server returns the proxy's own http.Server: header reads are bounded in
// time and size; bodies are not, since they stream (proxy.timeout bounds
// each request instead).
func (p *Proxy) Server() *http.Server {
	return &http.Server{
		Handler:           p,
		ReadHeaderTimeout: ReadHeaderTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		// "OPTIONS *" is refused with the other non-path targets.
		DisableGeneralOptionsHandler: true,
	}
}

// call is one proxied request on its way through the ReverseProxy, which
// runs Rewrite, the Transport, ModifyResponse and the ErrorHandler on the
// request's own goroutine: no field needs a lock.
type call struct {
	route  *route
	caller string
	req    Request
	cred   Credential
	// path and rawPath are the request's path below the provider's name.
	path, rawPath string
	// body is the request body kept for a retry; replay says there is one
	// (an empty body is replayable too).
	body   []byte
	replay bool

	deadline       time.Time // proxy.timeout from the start
	upstreamStatus int       // the last upstream answer, 0 if none
	status         int       // what the caller got
	reason         string
	retried        bool
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// Headers of the caller's request that name the credential.
const (
	ScopeHeader   = "Tokenvend-Scope"
	SubjectHeader = "Tokenvend-Subject"
)

// serve checks the request, gets the credential and hands the request to
// the ReverseProxy.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{}
	c.caller, _ = auth.CallerFrom(r.Context())
	defer func() { p.finish(r.Context(), r, c, time.Since(start)) }()

	name, path, rawPath, err := split(r)
	if err != nil {
		p.fail(w, c, err)
		return
	}
	c.req.Provider, c.path, c.rawPath = name, path, rawPath
	c.route = p.routes[name]
	if c.route == nil {
		p.fail(w, c, p.unrouted(c.caller, name))
		return
	}
	if c.req.Scope, err = single(r.Header, ScopeHeader); err == nil {
		c.req.Subject, err = single(r.Header, SubjectHeader)
	}
	if err != nil {
		p.fail(w, c, err)
		return
	}
	// proxy.timeout bounds the whole request: the credential, the upstream
	// call, its retry and both bodies, which the connection deadlines
	// bound too, against a caller that sends or reads slowly.
	ctx, cancel := context.WithTimeout(r.Context(), c.route.timeout)
	defer cancel()
	c.deadline, _ = ctx.Deadline()
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(c.deadline.Add(time.Second))
	_ = rc.SetWriteDeadline(c.deadline.Add(time.Second))
	// The server resets neither for the next request on the connection.
	defer func() { _ = rc.SetReadDeadline(time.Time{}); _ = rc.SetWriteDeadline(time.Time{}) }()

	if c.cred, err = p.vendor.Vend(ctx, c.caller, c.req); err != nil {
		p.fail(w, c, err)
		return
	}
	if err := c.keepBody(r); err != nil {
		p.fail(w, c, err)
		return
	}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(ctx, callKey{}, c)))
}

// keepBody keeps a body of at most maxReplayBody in memory, so that a
// refused call can be sent again; a larger one streams (no retry), so an
// upload costs no more memory than its first MiB and a copy buffer. A
// body of known length is read in full when it fits and not at all when
// it does not; one of unknown length (chunked) is read up to
// maxReplayBody+1 bytes: ended within, it is kept; otherwise what was
// read is sent first, then the rest as it comes.
func (c *call) keepBody(r *http.Request) error {
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		c.replay = true
	case r.ContentLength > 0 && r.ContentLength <= maxReplayBody:
		c.body = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, c.body); err != nil {
			return errBodyUnreadable
		}
		c.replay = true
		r.Body = readCloser(c.body)
	case r.ContentLength < 0:
		head, err := readHead(r.Body)
		if err != nil {
			return errBodyUnreadable
		}
		if len(head) <= maxReplayBody {
			c.body, c.replay = head, true
			r.Body = readCloser(head)
			return nil
		}
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
	}
	return nil
}

// readHead reads body up to maxReplayBody+1 bytes: a small buffer first,
// then, for a body that goes on, one of the full size (growing one step at
// a time would allocate twice that). Only io.EOF ends the body: a chunked
// body cut short (io.ErrUnexpectedEOF) is an error, never a shorter body.
func readHead(body io.Reader) ([]byte, error) {
	head := make([]byte, 16<<10)
	n, err := fill(body, head)
	if err != nil || n < len(head) {
		return head[:n], err
	}
	full := make([]byte, maxReplayBody+1)
	copy(full, head)
	m, err := fill(body, full[n:])
	return full[:n+m], err
}

// fill reads into buf until it is full or r ends (io.EOF, not an error).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

var errBodyUnreadable = &requestError{status: http.StatusBadRequest, reason: ReasonBodyUnreadable,
	msg: "the request body could not be read in full"}

// rewrite sends the request to the route's upstream: path below its path,
// the query as sent, the caller's own credentials and tokenvend's headers
// removed (hop-by-hop headers and X-Forwarded-* are already), the
// credential's headers set.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := callFrom(pr.In.Context())
	out, rt := pr.Out, c.route
	out.URL.Scheme, out.URL.Host, out.URL.User, out.URL.Opaque = rt.upstream.Scheme, rt.upstream.Host, nil, ""
	out.URL.Path, out.URL.RawPath = join(rt.path, c.path), join(rt.rawPath, c.rawPath)
	out.URL.RawQuery = pr.In.URL.RawQuery
	out.Host = "" // the upstream's, from the URL
	strip(out.Header, rt.propagateTrace)
	setCredential(out.Header, Credential{}, c.cred)
}

// join appends a request's path below the provider's name to the
// upstream's path.
func join(base, rest string) string {
	if rest == "" {
		if base == "" {
			return "/"
		}
		return base
	}
	return strings.TrimSuffix(base, "/") + rest
}

// strip removes what the caller sent that must not reach a third party:
// its own credentials and identity, tokenvend's headers, and (unless
// propagate) its trace context.
func strip(h http.Header, propagate bool) {
	stripTokenvend(h)
	h.Del("Authorization")
	h.Del(auth.APIKeyHeader)
	// A mesh sidecar's account of the caller's certificate is about the
	// caller, not for a third party.
	h.Del("X-Forwarded-Client-Cert")
	if !propagate {
		h.Del("Traceparent")
		h.Del("Tracestate")
		h.Del("Baggage")
	}
}

// stripTokenvend removes every Tokenvend-* header, whatever its case.
func stripTokenvend(h http.Header) {
	for k := range h {
		if len(k) >= len("Tokenvend-") && strings.EqualFold(k[:len("Tokenvend-")], "Tokenvend-") {
			delete(h, k)
		}
	}
}

// setCredential replaces old's headers with cred's; a caller's header of
// the same name is replaced.
func setCredential(h http.Header, old, cred Credential) {
	for k := range old.Headers {
		h.Del(k)
	}
	for k, v := range cred.Headers {
		h.Set(k, v)
	}
}

// upstreamAnswered notes the status of the answer the caller gets, and
// removes any Tokenvend-* header from it: only tokenvend's own answers
// carry Tokenvend-Error, so an upstream cannot pass for tokenvend.
func (p *Proxy) upstreamAnswered(resp *http.Response) error {
	if c := callFrom(resp.Request.Context()); c != nil {
		c.upstreamStatus, c.status = resp.StatusCode, resp.StatusCode
	}
	stripTokenvend(resp.Header)
	return nil
}

// finish counts the request and writes its audit line: who called what,
// how the upstream answered, whether the call was retried, and the
// fingerprint of the credential it was sent with (never the credential).
func (p *Proxy) finish(ctx context.Context, r *http.Request, c *call, took time.Duration) {
	provider := ""
	if c.route != nil {
		provider = c.route.name // a caller's typo must not mint a metric series
	}
	code := strconv.Itoa(c.status)
	attrs := metric.WithAttributes(attribute.String("provider", provider), attribute.String("code", code))
	p.requests.Add(ctx, 1, attrs)
	p.duration.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("provider", provider)))

	// A caller's malformed fields are shown bounded, as GetToken's line
	// shows them: an unidentified caller must not write 64 kB a line.
	shown := broker.Request{Provider: c.req.Provider, Scope: c.req.Scope, Subject: c.req.Subject}
	if c.cred.Scope != "" {
		shown.Scope = c.cred.Scope
	}
	shown = broker.Shown(shown)
	la := []slog.Attr{
		slog.String("caller", c.caller), slog.String("provider", shown.Provider),
		slog.String("scope", shown.Scope), slog.String("subject", shown.Subject),
		slog.String("method", r.Method), slog.Int("status", c.status),
		slog.Int("upstream_status", c.upstreamStatus), slog.Bool("retried", c.retried),
	}
	if c.reason != "" {
		la = append(la, slog.String("reason", c.reason))
	}
	if c.cred.Fingerprint != "" {
		la = append(la, slog.String("token_sha256", c.cred.Fingerprint))
	}
	span := trace.SpanFromContext(ctx)
	if sc := span.SpanContext(); sc.HasTraceID() {
		la = append(la, slog.String("trace_id", sc.TraceID().String()))
	}
	if span.IsRecording() {
		kvs := make([]attribute.KeyValue, len(la))
		for i, a := range la {
			kvs[i] = attribute.String(a.Key, a.Value.String())
		}
		span.AddEvent("tokenvend.proxy.audit", trace.WithAttributes(kvs...))
	}
	// Through the audit writer, as GetToken's line, so both land in the
	// audit stream. The answer has gone: a failure can only be reported.
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "proxy audit", 0)
	rec.AddAttrs(la...)
	if err := p.audit.Record(ctx, rec); err != nil {
		p.log.ErrorContext(ctx, "the proxy audit line cannot be written: the proxied request went unaudited",
			"provider", shown.Provider, "error", err.Error())
	}
}
