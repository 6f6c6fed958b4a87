// Package client is the Go client of tokenvend: it gets credentials from a
// tokenvend server, keeps them for as long as they are good, reports the
// ones an upstream refuses, and attaches them to HTTP and gRPC calls.
//
// A caller writes three lines, not a token manager:
//
//	c, err := client.New("tokenvend:9090", grpc.WithTransportCredentials(creds))
//	defer c.Close()
//	hc := &http.Client{Transport: c.Transport(client.Request{Provider: "insly"}, http.DefaultTransport)}
//
// Every method is safe for concurrent use.
package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
)

// Request names a credential, as tokenvend.v1.GetTokenRequest does.
type Request struct {
	// Provider is the name of a provider configured in tokenvend.
	Provider string
	// Scope is a provider-specific scope; empty means its default.
	Scope string
	// Subject is the end user a token is minted for, where the provider's
	// scheme has one.
	Subject string
	// MinValidFor asks for at least this much validity left.
	MinValidFor time.Duration
}

// Token is a credential ready to attach to an upstream call.
type Token struct {
	// AccessToken is the credential itself.
	AccessToken string
	// Type is the Authorization scheme word, e.g. "Bearer".
	Type string
	// Headers holds every header the upstream call needs, Authorization
	// included. It is the caller's own copy.
	Headers map[string]string
	// Expiry is when the credential stops being usable; zero means never.
	Expiry time.Time
	// SingleUse credentials are good for one upstream call only.
	SingleUse bool
}

// DefaultMargin is how long before its expiry a kept token is given up and
// a new one fetched, so that a token never expires on its way upstream.
const DefaultMargin = 30 * time.Second

// Option configures a Client. It is passed to New among the
// grpc.DialOptions.
type Option struct {
	grpc.EmptyDialOption
	apply func(*Client)
}

// WithMargin sets how long before its expiry a kept token is replaced
// (DefaultMargin).
func WithMargin(d time.Duration) Option {
	return Option{apply: func(c *Client) { c.margin = d }}
}

// withClock sets the clock the client judges expiry by (tests).
func withClock(now func() time.Time) Option {
	return Option{apply: func(c *Client) { c.now = now }}
}

// Client talks to one tokenvend server.
type Client struct {
	conn   *grpc.ClientConn
	api    tokenvendv1.TokenServiceClient
	margin time.Duration
	now    func() time.Time

	flight singleflight.Group
	mu     sync.Mutex
	kept   map[Request]*Token
	// reports counts Invalidate calls: a GetToken that was in flight when
	// one came answers its callers but is not kept, since its token may be
	// the one reported.
	reports uint64
}

// New returns a client of the tokenvend server at target (for example
// "tokenvend:9090", or any target grpc.NewClient takes). opts are
// grpc.DialOptions (transport credentials, interceptors, ...) and this
// package's Options. It does not connect until the first call.
func New(target string, opts ...grpc.DialOption) (*Client, error) {
	c := &Client{margin: DefaultMargin, now: time.Now, kept: map[Request]*Token{}}
	var dial []grpc.DialOption
	for _, o := range opts {
		if o, ok := o.(Option); ok {
			o.apply(c)
			continue
		}
		dial = append(dial, o)
	}
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("tokenvend client: %w", err)
	}
	c.conn, c.api = conn, tokenvendv1.NewTokenServiceClient(conn)
	return c, nil
}

// Close closes the connection to the server.
func (c *Client) Close() error { return c.conn.Close() }

// Token returns a credential for r: a kept one while it has more than the
// margin (and r.MinValidFor) left, else a new one from the server.
// Concurrent calls for one Request share one GetToken. Single-use
// credentials are never kept.
func (c *Client) Token(ctx context.Context, r Request) (*Token, error) {
	if t := c.keptToken(r); t != nil {
		return t.clone(), nil
	}
	ch := c.flight.DoChan(flightKey(r), func() (any, error) {
		// The shared call is not cancelled by the first caller giving up:
		// the others still wait for it.
		ctx := context.WithoutCancel(ctx)
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return c.fetch(ctx, r)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Token).clone(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func flightKey(r Request) string {
	return fmt.Sprintf("%q %q %q %d", r.Provider, r.Scope, r.Subject, r.MinValidFor)
}

func (c *Client) keptToken(r Request) *Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.kept[r]
	if t == nil {
		return nil
	}
	if !t.Expiry.IsZero() && !c.now().Add(c.margin+r.MinValidFor).Before(t.Expiry) {
		delete(c.kept, r)
		return nil
	}
	return t
}

func (c *Client) fetch(ctx context.Context, r Request) (*Token, error) {
	req := &tokenvendv1.GetTokenRequest{Provider: r.Provider, Scope: r.Scope, Subject: r.Subject}
	if r.MinValidFor > 0 {
		req.MinValidFor = durationpb.New(r.MinValidFor)
	}
	c.mu.Lock()
	reports := c.reports
	c.mu.Unlock()
	resp, err := c.api.GetToken(ctx, req)
	if err != nil {
		return nil, wrap("GetToken", r.Provider, err)
	}
	t := &Token{
		AccessToken: resp.GetAccessToken(),
		Type:        resp.GetTokenType(),
		Headers:     resp.GetHeaders(),
		SingleUse:   resp.GetSingleUse(),
	}
	if resp.ExpireTime != nil {
		t.Expiry = resp.GetExpireTime().AsTime()
	}
	c.mu.Lock()
	if !t.SingleUse && c.reports == reports {
		c.kept[r] = t
	}
	c.mu.Unlock()
	return t, nil
}

// Invalidate reports that the upstream refused accessToken, a credential
// obtained for r, and forgets it here. It returns true when the server
// dropped it and started a new login; false when it was not the server's
// current credential (already replaced, or single-use) or a recent report
// already started one. Either way the next Token asks the server again.
func (c *Client) Invalidate(ctx context.Context, r Request, accessToken string) (bool, error) {
	return c.invalidate(ctx, r, accessToken, 0)
}

func (c *Client) invalidate(ctx context.Context, r Request, accessToken string, upstreamStatus int) (bool, error) {
	resp, err := c.api.InvalidateToken(ctx, &tokenvendv1.InvalidateTokenRequest{
		Provider: r.Provider, Scope: r.Scope, Subject: r.Subject,
		AccessToken: accessToken, UpstreamStatus: int32(upstreamStatus),
	})
	// Whatever the server said, the token is forgotten here, once the
	// server has had the report: a GetToken in flight until then may
	// bring it back, so it is not kept, and callers from now on start a
	// new one.
	c.mu.Lock()
	c.reports++
	for k, t := range c.kept {
		if k.Provider == r.Provider && k.Scope == r.Scope && k.Subject == r.Subject && t.AccessToken == accessToken {
			delete(c.kept, k)
		}
	}
	c.mu.Unlock()
	c.flight.Forget(flightKey(r))
	if err != nil {
		return false, wrap("InvalidateToken", r.Provider, err)
	}
	return resp.GetInvalidated(), nil
}

func (t *Token) clone() *Token {
	c := *t
	c.Headers = maps.Clone(t.Headers)
	return &c
}

// Error is a call the server refused or could not answer. errors.As finds
// it; status.FromError finds its gRPC status too.
type Error struct {
	// Op is the RPC, e.g. "GetToken"; Provider the provider asked for.
	Op, Provider string
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the google.rpc.ErrorInfo reason (e.g. CALLER_NOT_ALLOWED,
	// CREDENTIALS_REJECTED), empty when the server sent none.
	Reason string
	// Message is the server's message: it says what happened and what to
	// do.
	Message string
	// RetryAfter, when set, is when the server says a retry may succeed.
	RetryAfter time.Duration

	st *status.Status
}

func (e *Error) Error() string {
	reason := e.Code.String()
	if e.Reason != "" {
		reason += " " + e.Reason
	}
	msg := fmt.Sprintf("tokenvend %s %q: %s: %s", e.Op, e.Provider, reason, e.Message)
	if hint := hints[e.Code]; hint != "" {
		msg += " (" + hint + ")"
	}
	return msg
}

// GRPCStatus returns the server's status, details included.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// hints say what a caller can do about each code, beyond the server's
// message.
var hints = map[codes.Code]string{
	codes.Unavailable:      "transient: retry with backoff",
	codes.Unauthenticated:  "check the client certificate or API key this client sends",
	codes.PermissionDenied: "this caller needs a grant in tokenvend's callers config",
	codes.DeadlineExceeded: "the call's deadline passed: allow more time for a login",
}

func wrap(op, provider string, err error) error {
	st, ok := status.FromError(err)
	if !ok || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	e := &Error{Op: op, Provider: provider, Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}
