package server

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/token"
)

// InvalidateToken handles a caller's report that the upstream refused a
// credential tokenvend vended: the same identity and grants as GetToken,
// an audit line, and tokenvend_invalidations_total.
func (s *Server) InvalidateToken(ctx context.Context, req *tokenvendv1.InvalidateTokenRequest) (*tokenvendv1.InvalidateTokenResponse, error) {
	caller, _ := auth.CallerFrom(ctx)
	r := broker.Request{Provider: req.GetProvider(), Scope: req.GetScope(), Subject: req.GetSubject()}
	result, err := s.report(ctx, caller, r, req.GetAccessToken(), int(req.GetUpstreamStatus()))
	if err != nil {
		return nil, toStatus(err, broker.Shown(r).Provider)
	}
	return &tokenvendv1.InvalidateTokenResponse{Invalidated: result == token.Invalidated}, nil
}

// report is InvalidateToken for caller, over gRPC, REST and proxy mode
// alike. Its error is the domain's (toStatus makes it a gRPC status).
func (s *Server) report(ctx context.Context, caller string, r broker.Request, accessToken string, upstreamStatus int) (token.Invalidation, error) {
	shown := broker.Shown(r)
	result, scope, err := s.state.Load().invalidate(ctx, caller, r, shown.Scope, accessToken)
	if err != nil {
		result = token.Invalidation("error")
	}
	s.invalidations.add(s.known(r.Provider), string(result))
	if aerr := s.auditInvalidation(ctx, caller, shown, scope, accessToken, upstreamStatus, codeOf(err, shown.Provider), result); aerr != nil {
		// As for GetToken: no answer leaves unaudited.
		return "", aerr
	}
	return result, err
}

func (s *state) invalidate(ctx context.Context, caller string, r broker.Request, shownScope, accessToken string) (token.Invalidation, string, error) {
	if err := s.identified(caller); err != nil {
		return "", shownScope, err
	}
	scope, err := s.permit(caller, r, shownScope)
	if err != nil {
		return "", scope, err
	}
	result, err := s.broker.Invalidate(ctx, r, accessToken)
	return result, scope, err
}

// auditInvalidation writes the audit line of a report, in the audit stream
// beside GetToken's: who reported which token (its fingerprint, never the
// token) of what, the upstream's status, and what the report did.
func (s *Server) auditInvalidation(ctx context.Context, caller string, r broker.Request, scope, accessToken string, upstreamStatus int, code codes.Code, result token.Invalidation) error {
	attrs := []slog.Attr{
		slog.String("caller", caller), slog.String("provider", r.Provider),
		slog.String("scope", scope), slog.String("subject", r.Subject),
		slog.String("code", code.String()), slog.String("result", string(result)),
		slog.Int("upstream_status", upstreamStatus),
	}
	if accessToken != "" {
		attrs = append(attrs, slog.String("token_sha256", Fingerprint(accessToken)))
	}
	if sc := trace.SpanFromContext(ctx).SpanContext(); sc.HasTraceID() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "audit invalidate", 0)
	rec.AddAttrs(attrs...)
	if err := s.auditLog.Record(ctx, rec); err != nil {
		s.log.ErrorContext(ctx, "the audit line cannot be written: the InvalidateToken fails", "provider", r.Provider, "error", err.Error())
		return auditUnavailable(err)
	}
	return nil
}

// known returns provider when it is configured, else "": a caller's typo
// must not mint a new metric series.
func (s *Server) known(provider string) string {
	if _, ok := s.state.Load().providers[provider]; ok {
		return provider
	}
	return ""
}

// invalidationCounts count reports by provider and result.
type invalidationCounts struct {
	counter metric.Int64Counter
}

func (c invalidationCounts) add(provider, result string) {
	c.counter.Add(context.Background(), 1, metric.WithAttributes(
		attribute.String("provider", provider), attribute.String("result", result)))
}
