package server_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/server"
	"github.com/tokenvend/tokenvend/internal/telemetry"
	"github.com/tokenvend/tokenvend/internal/token"
)

// benchSource answers every login at once with a token valid for an hour.
type benchSource struct{}

func (benchSource) Token(context.Context, token.Request) (*token.Token, error) {
	const jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI4ZjE0ZTQ1Zi1jZWE2LTRhYjAtYjNlZC1hZjEyMzQ1Njc4OTAiLCJhdWQiOlsiZmFzdGFwaS11c2VyczphdXRoIl0sImV4cCI6MTc5NTQ1MTI3MH0.c2lnbmF0dXJlLW9mLWEtYmVuY2gtdG9rZW4tMzItYnl0ZXM"
	now := time.Now()
	return &token.Token{
		AccessToken: jwt,
		Type:        "Bearer",
		Headers:     map[string]string{"Authorization": "Bearer " + jwt},
		IssuedAt:    now,
		Expiry:      now.Add(time.Hour),
	}, nil
}

// BenchmarkGetToken is the TokenService handler alone, answering from a
// warm cache with the service's telemetry and a JSON log written to
// /dev/null: what GetToken adds to a unary gRPC call on the server, less
// the transport (see internal/app's BenchmarkGetTokenGRPC for that).
func BenchmarkGetToken(b *testing.B) {
	tel, err := telemetry.New(b.Context(), telemetry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	metrics, err := token.NewMetrics(tel.Meter.Meter("tokenvend"))
	if err != nil {
		b.Fatal(err)
	}
	br := broker.New([]broker.Provider{{Name: "kyc", Kind: "kyc", Source: benchSource{}}},
		token.Options{Metrics: metrics, Tracer: tel.Tracer.Tracer("tokenvend")}, nil)
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { devNull.Close() })
	s, err := server.New(br, auth.New(nil), slog.New(slog.NewJSONHandler(devNull, nil)), audit.New(devNull), tel.Meter.Meter("tokenvend"))
	if err != nil {
		b.Fatal(err)
	}
	req := &tokenvendv1.GetTokenRequest{Provider: "kyc"}
	if _, err := s.GetToken(b.Context(), req); err != nil {
		b.Fatalf("first GetToken: %v", err)
	}
	b.Run("serial", func(b *testing.B) {
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.GetToken(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		ctx := b.Context()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.GetToken(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
