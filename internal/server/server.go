// Package server implements tokenvend.v1.TokenService over the broker. The
// REST gateway calls it through gRPC too, so everything here applies to
// REST callers alike.
package server

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Server is the TokenService.
type Server struct {
	tokenvendv1.UnimplementedTokenServiceServer
	broker   *broker.Broker
	log      *slog.Logger
	requests metric.Int64Counter
	// okAttrs are built once per provider: a successful GetToken is the
	// hot path and must not allocate attribute sets.
	okAttrs map[string]metric.AddOption
}

// New returns a Server answering from b.
func New(b *broker.Broker, log *slog.Logger, meter metric.Meter) (*Server, error) {
	requests, err := meter.Int64Counter("tokenvend.requests",
		metric.WithDescription("GetToken requests, by provider and gRPC code."))
	if err != nil {
		return nil, err
	}
	s := &Server{broker: b, log: log, requests: requests, okAttrs: map[string]metric.AddOption{}}
	for _, p := range b.Providers() {
		s.okAttrs[p.Name] = metric.WithAttributeSet(attribute.NewSet(
			attribute.String("provider", p.Name), attribute.String("code", codes.OK.String())))
	}
	return s, nil
}

// GetToken returns a credential for one provider and scope.
func (s *Server) GetToken(ctx context.Context, req *tokenvendv1.GetTokenRequest) (*tokenvendv1.GetTokenResponse, error) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("tokenvend.provider", req.GetProvider()))
	}
	r := broker.Request{Provider: req.GetProvider(), Scope: req.GetScope(), Subject: req.GetSubject()}
	if d := req.GetMinValidFor(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, s.fail(ctx, req, &token.Error{Kind: token.KindInvalid, Reason: broker.ReasonInvalidMinValid,
				Message: "min_valid_for is not a valid duration"})
		}
		r.MinValidFor = d.AsDuration()
	}
	a, err := s.broker.Token(ctx, r)
	if err != nil {
		return nil, s.fail(ctx, req, err)
	}
	s.requests.Add(ctx, 1, s.okAttrs[req.GetProvider()])
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
	return resp, nil
}

// fail counts, logs and maps a failed GetToken.
func (s *Server) fail(ctx context.Context, req *tokenvendv1.GetTokenRequest, err error) error {
	st := status.Convert(toStatus(err, req.GetProvider()))
	provider := req.GetProvider()
	if _, known := s.okAttrs[provider]; !known {
		provider = "" // a caller's typo must not mint a new metric series
	}
	s.requests.Add(ctx, 1, metric.WithAttributes(
		attribute.String("provider", provider), attribute.String("code", st.Code().String())))
	if st.Code() == codes.Internal {
		s.log.ErrorContext(ctx, "GetToken failed", "provider", provider, "error", err.Error())
	}
	return st.Err()
}

// ListProviders describes the configured providers, without secrets.
func (s *Server) ListProviders(context.Context, *tokenvendv1.ListProvidersRequest) (*tokenvendv1.ListProvidersResponse, error) {
	var resp tokenvendv1.ListProvidersResponse
	for _, p := range s.broker.Providers() {
		resp.Providers = append(resp.Providers, &tokenvendv1.Provider{
			Name:               p.Name,
			Kind:               p.Kind,
			Scopes:             p.Scopes,
			DefaultScope:       p.DefaultScope,
			HasValidCredential: p.Valid,
		})
	}
	return &resp, nil
}
