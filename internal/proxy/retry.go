package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"time"
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
	if err != nil || c == nil || !c.replay || !slices.Contains(c.route.retry, resp.StatusCode) {
		return resp, err
	}
	ctx := req.Context()
	if _, err := t.p.vendor.Invalidate(ctx, c.caller, c.req, c.cred.AccessToken, resp.StatusCode); err != nil {
		// Refused (rate limited, say): the upstream's answer stands.
		// Its reason is logged, never its cause.
		_, body, _ := answer(err, c.req.Provider)
		t.p.log.WarnContext(ctx, "proxy: invalidate failed", "provider", c.req.Provider, "reason", body.Reason)
		return resp, nil
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
		// The cause names the upstream's address, never a credential.
		p.log.WarnContext(r.Context(), "proxy: upstream call failed", slog.String("provider", c.req.Provider), slog.String("error", err.Error()))
		err = &requestError{status: http.StatusBadGateway, reason: ReasonUpstreamFailed,
			msg: "the upstream could not be reached or did not answer usably"}
	}
	p.fail(w, c, err)
}
