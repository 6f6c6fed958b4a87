// Package server implements tokenvend.v1.TokenService over the broker:
// caller policy, the request itself, and one audit line per GetToken. The
// REST gateway calls it through gRPC too, so everything here applies to
// REST callers alike.
package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Server is the TokenService.
type Server struct {
	tokenvendv1.UnimplementedTokenServiceServer
	// state is what a config reload replaces (Swap); each call reads it
	// once, so it sees one config throughout.
	state    atomic.Pointer[state]
	swapMu   sync.Mutex
	log      *slog.Logger
	auditLog *audit.Writer
	requests *requestCounts

	invalidations invalidationCounts
}

// state is one config's broker and policy, and the counters of its
// providers. It is never modified once stored.
type state struct {
	broker    *broker.Broker
	policy    *auth.Policy
	providers map[string]*providerStats
}

// providerStats are a configured provider's GetToken count, read by the
// metrics callback (a successful GetToken is the hot path, and an atomic
// add is all it pays), and the fingerprint of its last token and the
// answer built for it. A provider
// that stays configured across a reload keeps its own.
type providerStats struct {
	ok     atomic.Int64
	okAttr metric.ObserveOption
	fp     atomic.Pointer[fpMemo]
	answer atomic.Pointer[answerMemo]
}

// requestCounts count failed GetToken requests by provider and gRPC code.
type requestCounts struct {
	mu     sync.Mutex
	failed map[[2]string]int64 // by provider and code
}

func (s *Server) observe(o metric.Observer, requests metric.Int64Observable) {
	for _, p := range s.state.Load().providers {
		if v := p.ok.Load(); v > 0 {
			o.ObserveInt64(requests, v, p.okAttr)
		}
	}
	r := s.requests
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range r.failed {
		o.ObserveInt64(requests, v, metric.WithAttributes(attribute.String("provider", k[0]), attribute.String("code", k[1])))
	}
}

// New returns a Server answering from b to the callers policy allows. The
// audit lines go to auditLog, every other line to log.
func New(b *broker.Broker, policy *auth.Policy, log *slog.Logger, auditLog *audit.Writer, meter metric.Meter) (*Server, error) {
	s := &Server{log: log, auditLog: auditLog, requests: &requestCounts{failed: map[[2]string]int64{}}}
	s.state.Store(newState(b, policy, nil))
	requests, err := meter.Int64ObservableCounter("tokenvend.requests",
		metric.WithDescription("GetToken requests, by provider and gRPC code."))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s.observe(o, requests)
		return nil
	}, requests); err != nil {
		return nil, err
	}
	if s.invalidations.counter, err = meter.Int64Counter("tokenvend.invalidations",
		metric.WithDescription("InvalidateToken reports, by provider and result.")); err != nil {
		return nil, err
	}
	return s, nil
}

// GetToken returns a credential for one provider and scope, if the caller
// may have it.
func (s *Server) GetToken(ctx context.Context, req *tokenvendv1.GetTokenRequest) (*tokenvendv1.GetTokenResponse, error) {
	caller, _ := auth.CallerFrom(ctx)
	r := broker.Request{Provider: req.GetProvider(), Scope: req.GetScope(), Subject: req.GetSubject()}
	a, _, err := s.vend(ctx, caller, r, req.GetMinValidFor())
	if err != nil {
		return nil, toStatus(err, broker.Shown(r).Provider)
	}
	return s.state.Load().answer(req.GetProvider(), a), nil
}

// answer is the GetTokenResponse for a. A cached token gets one message,
// built on its first call and returned on every later one: gRPC encodes
// it after GetToken returns (concurrent encodings of one message are
// safe) and nothing changes a returned message, so sharing it is safe,
// and the three allocations per call (the answer, its two timestamps)
// were a tenth of a cached GetToken's CPU (bench/README.md, issue 18).
// A single-use token is never asked for twice, so it is not remembered.
func (s *state) answer(provider string, a broker.Answer) *tokenvendv1.GetTokenResponse {
	p := s.providers[provider]
	if p == nil || a.SingleUse {
		return newAnswer(a)
	}
	memo := &p.answer
	if m := memo.Load(); m != nil && m.tok == a.Token {
		return m.resp
	}
	resp := newAnswer(a)
	memo.Store(&answerMemo{tok: a.Token, resp: resp})
	return resp
}

// answerMemo is the answer built for a token, which it keeps alive, so
// the pointer cannot be reused for another token while it is here.
type answerMemo struct {
	tok  *token.Token
	resp *tokenvendv1.GetTokenResponse
}

func newAnswer(a broker.Answer) *tokenvendv1.GetTokenResponse {
	t := a.Token
	resp := &tokenvendv1.GetTokenResponse{
		AccessToken: t.AccessToken,
		TokenType:   t.Type,
		Headers:     t.Headers,
		SingleUse:   a.SingleUse,
	}
	if !t.IssuedAt.IsZero() {
		resp.IssueTime = timestamppb.New(t.IssuedAt)
	}
	if !t.Expiry.IsZero() {
		resp.ExpireTime = timestamppb.New(t.Expiry)
	}
	return resp
}

// vend is GetToken for caller, over gRPC, REST and proxy mode alike: the
// policy, the broker, the audit line and the counts. It returns the answer
// and its effective scope, or the domain error (toStatus makes it a gRPC
// status).
func (s *Server) vend(ctx context.Context, caller string, r broker.Request, minValid *durationpb.Duration) (broker.Answer, string, error) {
	// What the span, the audit line and the error detail show of the
	// request: anyone, identified or not, can send a 60 kB provider name.
	shown := broker.Shown(r)
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("tokenvend.provider", shown.Provider))
	}
	cur := s.state.Load()
	a, scope, err := cur.getToken(ctx, caller, r, shown.Scope, minValid)
	code := codeOf(err, shown.Provider)
	if aerr := s.audit(ctx, span, cur, caller, shown, scope, code, a); aerr != nil {
		// No answer leaves unaudited, a token least of all.
		err = aerr
		code = codeOf(err, shown.Provider)
	}
	if err != nil {
		s.fail(ctx, r.Provider, code, err)
		return broker.Answer{}, scope, err
	}
	if p := cur.providers[r.Provider]; p != nil {
		p.ok.Add(1)
	}
	return a, scope, nil
}

// getToken applies the caller policy, then asks the broker. It returns the
// effective scope too, for the audit line (shownScope until the request's
// scope is resolved). An unidentified caller learns nothing, not even
// whether the provider it names exists; an identified one learns nothing
// of a provider it has no grant for.
func (s *state) getToken(ctx context.Context, caller string, r broker.Request, shownScope string, minValid *durationpb.Duration) (broker.Answer, string, error) {
	if err := s.identified(caller); err != nil {
		return broker.Answer{}, shownScope, err
	}
	if minValid != nil {
		if err := minValid.CheckValid(); err != nil {
			return broker.Answer{}, shownScope, &token.Error{Kind: token.KindInvalid, Reason: broker.ReasonInvalidMinValid,
				Message: "min_valid_for is not a valid duration"}
		}
		r.MinValidFor = minValid.AsDuration()
	}
	scope, err := s.permit(caller, r, shownScope)
	if err != nil {
		return broker.Answer{}, scope, err
	}
	a, err := s.broker.Token(ctx, r)
	return a, scope, err
}

// permit checks an identified caller's request: well formed, and covered
// by a grant (provider, then scope and subject). It returns the effective
// scope, or shownScope until the request's scope is resolved.
func (s *state) permit(caller string, r broker.Request, shownScope string) (string, error) {
	if err := broker.Validate(r); err != nil {
		return shownScope, err
	}
	if !s.policy.MayUse(caller, r.Provider) {
		return shownScope, notAllowed(caller)
	}
	scope, isDefault, err := s.broker.Scope(r)
	if err != nil {
		return shownScope, err
	}
	return scope, s.authorize(caller, r.Provider, scope, isDefault, r.Subject)
}

// Reasons for caller policy errors.
const (
	ReasonCallerUnidentified = "CALLER_UNIDENTIFIED"
	ReasonCallerNotAllowed   = "CALLER_NOT_ALLOWED"
	ReasonSubjectNotAllowed  = "SUBJECT_NOT_ALLOWED"
)

// identified checks that the policy knows who is asking, when it must.
func (s *state) identified(caller string) error {
	if s.policy.Enforced() && caller == "" {
		return &token.Error{Kind: token.KindUnauthenticated, Reason: ReasonCallerUnidentified,
			Message: "the caller is not identified: present a client certificate signed by the configured CA, or an API key in x-api-key"}
	}
	return nil
}

// notAllowed is the answer to a caller without a grant for the provider it
// names: the same whether that provider exists or not, and without its
// rules.
func notAllowed(caller string) error {
	return &token.Error{Kind: token.KindDenied, Reason: ReasonCallerNotAllowed,
		Message: fmt.Sprintf("caller %q has no grant for this provider: ask for one", caller)}
}

// authorize checks an identified caller's grants for the scope and the
// subject of a request to a provider it has a grant for.
func (s *state) authorize(caller, provider, scope string, isDefault bool, subject string) error {
	switch s.policy.Decide(caller, provider, scope, isDefault, subject) {
	case auth.Allow:
		return nil
	case auth.DenySubject:
		return &token.Error{Kind: token.KindDenied, Reason: ReasonSubjectNotAllowed,
			Message: fmt.Sprintf("caller %q may not get scope %q for subject %q: ask for a grant that lists the subject", caller, scope, subject)}
	case auth.DenyScope:
		return &token.Error{Kind: token.KindDenied, Reason: ReasonCallerNotAllowed,
			Message: fmt.Sprintf("caller %q has no grant for scope %q of this provider: ask for one", caller, scope)}
	default:
		return notAllowed(caller)
	}
}

// ReasonAuditUnavailable: the audit line of a GetToken could not be
// written, so the answer was withheld.
const ReasonAuditUnavailable = "AUDIT_UNAVAILABLE"

// audit writes the one audit line of a GetToken, and the same as a span
// event: who asked for what, the outcome, and a fingerprint of the token
// (never the token). It returns once the line is written (in group commit
// with the lines of concurrent calls), or an error when the audit sink
// failed.
func (s *Server) audit(ctx context.Context, span trace.Span, st *state, caller string, r broker.Request, scope string, code codes.Code, a broker.Answer) error {
	result := "none"
	switch {
	case a.SingleUse && a.Token != nil:
		result = "minted"
	case a.Token != nil || a.Outcome.Held:
		result = a.Outcome.String()
	}
	var fp, traceID string
	if a.Token != nil {
		fp = st.fingerprint(r.Provider, a.Token.AccessToken)
	}
	if sc := span.SpanContext(); sc.HasTraceID() {
		traceID = sc.TraceID().String()
	}
	var buf [8]slog.Attr // on the stack: the audit line is on the hot path
	attrs := append(buf[:0], slog.String("caller", caller), slog.String("provider", r.Provider),
		slog.String("scope", scope), slog.String("subject", r.Subject),
		slog.String("code", code.String()), slog.String("result", result))
	if fp != "" {
		attrs = append(attrs, slog.String("token_sha256", fp))
	}
	if traceID != "" {
		attrs = append(attrs, slog.String("trace_id", traceID))
	}
	if span.IsRecording() {
		kvs := make([]attribute.KeyValue, len(attrs))
		for i, at := range attrs {
			kvs[i] = attribute.String(at.Key, at.Value.String())
		}
		span.AddEvent("tokenvend.audit", trace.WithAttributes(kvs...))
	}
	// Encoded straight away: the audit line is on the hot path, and
	// Logger.LogAttrs would walk the stack for a source location it never
	// prints, and an slog.Record of eight attributes allocates.
	if err := s.auditLog.Log(ctx, time.Now(), slog.LevelInfo, "audit", attrs...); err != nil {
		s.log.ErrorContext(ctx, "the audit line cannot be written: the GetToken fails", "provider", r.Provider, "error", err.Error())
		return auditUnavailable(err)
	}
	return nil
}

// auditUnavailable is the answer to a request whose audit line could not
// be written.
func auditUnavailable(cause error) error {
	return &token.Error{Kind: token.KindUnavailable, Reason: ReasonAuditUnavailable, Err: cause,
		Message: "the audit log cannot be written, and tokenvend answers no request it cannot audit: an operator must check where the audit lines go"}
}

// fingerprint is Fingerprint, remembered per provider for the token it was
// last computed for: a cached token is fingerprinted once, not per call.
func (s *state) fingerprint(provider, tok string) string {
	p := s.providers[provider]
	if p == nil {
		return Fingerprint(tok)
	}
	memo := &p.fp
	if m := memo.Load(); m != nil && m.token == tok {
		return m.sum
	}
	sum := Fingerprint(tok)
	memo.Store(&fpMemo{token: tok, sum: sum})
	return sum
}

type fpMemo struct{ token, sum string }

// Fingerprint is a short SHA-256 fingerprint of a token: enough to match an
// audit line to a token a caller shows, useless to replay.
func Fingerprint(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:8])
}

// fail counts a failed GetToken, and logs the cause of an internal one
// (which the caller is not told).
func (s *Server) fail(ctx context.Context, provider string, code codes.Code, err error) {
	provider = s.known(provider) // a caller's typo must not mint a new metric series
	s.requests.mu.Lock()
	s.requests.failed[[2]string{provider, code.String()}]++
	s.requests.mu.Unlock()
	if code == codes.Internal {
		s.log.ErrorContext(ctx, "GetToken failed", "provider", provider, "error", err.Error())
	}
}

// ListProviders describes the providers the caller may get, without
// secrets.
func (s *Server) ListProviders(ctx context.Context, _ *tokenvendv1.ListProvidersRequest) (*tokenvendv1.ListProvidersResponse, error) {
	caller, _ := auth.CallerFrom(ctx)
	cur := s.state.Load()
	if err := cur.identified(caller); err != nil {
		return nil, toStatus(err, "")
	}
	var resp tokenvendv1.ListProvidersResponse
	for _, p := range cur.broker.Providers() {
		var scopes []string
		for _, sc := range p.Scopes {
			if cur.policy.Decide(caller, p.Name, sc, sc == p.DefaultScope, "") == auth.Allow {
				scopes = append(scopes, sc)
			}
		}
		if len(scopes) == 0 && cur.policy.Decide(caller, p.Name, p.DefaultScope, true, "") != auth.Allow {
			continue
		}
		resp.Providers = append(resp.Providers, &tokenvendv1.Provider{
			Name:               p.Name,
			Kind:               p.Kind,
			Scopes:             scopes,
			DefaultScope:       p.DefaultScope,
			HasValidCredential: p.Valid,
		})
	}
	return &resp, nil
}
