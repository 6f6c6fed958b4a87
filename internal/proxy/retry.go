package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/tokenvend/tokenvend/internal/broker"
)

// retrier is the ReverseProxy's Transport: it sends the call, and when the
// upstream refuses the credential (a status in proxy.retry_statuses) and
// the body was kept, it invalidates the credential and sends the call once
// more with a fresh one.
type retrier struct {
	p    *Proxy
	next http.RoundTripper
}

// vendFailure is a failure to get the fresh credential for a retry.
type vendFailure struct{ err error }

func (e *vendFailure) Error() string { return e.err.Error() }

func (t *retrier) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	c := callFrom(req.Context())
	if err != nil || c == nil || !slices.Contains(c.route.retry, resp.StatusCode) {
		return resp, err
	}
	// The refused credential is reported whatever the body: the next
	// call, this caller's or another's, must not be sent with it.
	ctx := req.Context()
	if _, err := t.p.vendor.Invalidate(ctx, c.caller, c.req, c.cred.AccessToken, resp.StatusCode); err != nil {
		// Refused (rate limited, say): the upstream's answer stands.
		// Its reason is logged, never its cause.
		provider := broker.Shown(broker.Request{Provider: c.req.Provider}).Provider
		_, body, _ := answer(err, provider)
		t.p.log.WarnContext(ctx, "proxy: invalidate failed", "provider", provider, "reason", body.Reason)
		return resp, nil
	}
	if !c.replay {
		return resp, nil // the body has streamed: it cannot be sent again
	}
	cred, err := t.p.vendor.Vend(ctx, c.caller, c.req)
	if err != nil {
		discard(resp)
		return nil, &vendFailure{err}
	}
	if maps.Equal(cred.Headers, c.cred.Headers) {
		return resp, nil // nothing new to try: the refusal stands
	}
	discard(resp)
	retry := req.Clone(ctx)
	if req.Body != nil {
		retry.Body = readCloser(c.body)
		retry.GetBody = func() (io.ReadCloser, error) { return readCloser(c.body), nil }
	}
	setCredential(retry.Header, c.cred, cred)
	c.cred, c.retried = cred, true
	return t.next.RoundTrip(retry)
}

// discard drops an answer that will not be passed on, reading a little
// of it so the connection can be reused.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// upstreamFailed answers a call that got no upstream answer to pass on.
func (p *Proxy) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	c := callFrom(r.Context())
	var vf *vendFailure
	switch {
	case errors.As(err, &vf):
		err = vf.err
	case !time.Now().Before(c.deadline), errors.Is(err, context.DeadlineExceeded):
		// The caller's connection may have been cut at the deadline
		// before the timer fired: past it, this is the timeout.
		err = context.DeadlineExceeded
	case errors.Is(r.Context().Err(), context.Canceled):
		err = context.Canceled
	default:
		p.logUpstreamFailure(r.Context(), r, c, err)
		err = &requestError{status: http.StatusBadGateway, reason: ReasonUpstreamFailed,
			msg: "the upstream could not be reached or did not answer usably"}
	}
	p.fail(w, c, err)
}

// logUpstreamFailure logs why the upstream call failed: the provider,
// method and path, and the error without the URL a *url.Error carries,
// whose query is the caller's and may hold anything (a key, a customer's
// data). The rest of the cause names the upstream's address, never a
// credential.
func (p *Proxy) logUpstreamFailure(ctx context.Context, r *http.Request, c *call, err error) {
	attrs := []slog.Attr{
		slog.String("provider", broker.Shown(broker.Request{Provider: c.req.Provider}).Provider),
		slog.String("method", r.Method), slog.String("path", join(c.route.path, c.path)),
	}
	if ue, ok := errors.AsType[*url.Error](err); ok {
		attrs = append(attrs, slog.String("op", ue.Op))
		err = ue.Err
	}
	attrs = append(attrs, slog.String("error", err.Error()))
	p.log.LogAttrs(ctx, slog.LevelWarn, "proxy: upstream call failed", attrs...)
}
