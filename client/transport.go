package client

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
)

// TransportOption configures Transport.
type TransportOption func(*transport)

// RefusedStatuses sets the upstream HTTP statuses that mean "credential
// refused" (default: 401 only).
func RefusedStatuses(codes ...int) TransportOption {
	return func(t *transport) { t.refused = slices.Clone(codes) }
}

// Transport returns an http.RoundTripper that sends each request through
// base (http.DefaultTransport when nil) with every header of a credential
// for r attached. When the upstream answers a refused status (401), it
// reports the credential with Invalidate and sends the request once more
// with a fresh one, if its body can be sent again (no body, or
// Request.GetBody set, as http.NewRequest does for in-memory bodies);
// otherwise the refusal is returned as it came. The caller's request is
// never modified.
func (c *Client) Transport(r Request, base http.RoundTripper, opts ...TransportOption) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	t := &transport{c: c, r: r, base: base, refused: []int{http.StatusUnauthorized}}
	for _, o := range opts {
		o(t)
	}
	return t
}

type transport struct {
	c       *Client
	r       Request
	base    http.RoundTripper
	refused []int
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, tok, err := t.send(req, req.Body)
	if err != nil || !slices.Contains(t.refused, resp.StatusCode) {
		return resp, err
	}
	replay := req.Body == nil || req.Body == http.NoBody
	var body io.ReadCloser
	if !replay && req.GetBody != nil {
		if body, err = req.GetBody(); err == nil {
			replay = true
		}
	}
	if _, err := t.c.invalidate(req.Context(), t.r, tok.AccessToken, resp.StatusCode); err != nil || !replay {
		// The refusal is the answer the caller can act on; a failed
		// report changes nothing upstream.
		if body != nil {
			_ = body.Close()
		}
		return resp, nil
	}
	// The refused answer is read to its end so the connection can be
	// reused, within reason.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
	if body == nil {
		body = req.Body
	}
	resp, _, err = t.send(req, body)
	return resp, err
}

// send sends a clone of req with body and a credential's headers.
func (t *transport) send(req *http.Request, body io.ReadCloser) (*http.Response, *Token, error) {
	tok, err := t.c.Token(req.Context(), t.r)
	if err != nil {
		if body != nil {
			_ = body.Close() // a RoundTripper closes the body, even on error
		}
		return nil, nil, err
	}
	out := req.Clone(req.Context())
	out.Body = body
	for k, v := range tok.Headers {
		out.Header.Set(k, v)
	}
	resp, err := t.base.RoundTrip(out)
	return resp, tok, err
}

// CredentialsOption configures PerRPCCredentials.
type CredentialsOption func(*perRPC)

// AllowInsecure lets the credentials travel over a connection without
// transport security. Use it only on loopback or inside a mesh that
// encrypts for you.
func AllowInsecure() CredentialsOption {
	return func(p *perRPC) { p.insecure = true }
}

// PerRPCCredentials returns gRPC call credentials that attach every header
// of a credential for r (lower-cased, as gRPC metadata is) to each call.
// They require transport security unless AllowInsecure is given.
func (c *Client) PerRPCCredentials(r Request, opts ...CredentialsOption) credentials.PerRPCCredentials {
	p := &perRPC{c: c, r: r}
	for _, o := range opts {
		o(p)
	}
	return p
}

type perRPC struct {
	c        *Client
	r        Request
	insecure bool
}

func (p *perRPC) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := p.c.Token(ctx, p.r)
	if err != nil {
		return nil, err
	}
	md := make(map[string]string, len(tok.Headers))
	for k, v := range tok.Headers {
		md[strings.ToLower(k)] = v
	}
	return md, nil
}

func (p *perRPC) RequireTransportSecurity() bool { return !p.insecure }
