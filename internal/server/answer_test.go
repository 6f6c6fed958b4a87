package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/audit"
	"github.com/tokenvend/tokenvend/internal/auth"
	"github.com/tokenvend/tokenvend/internal/broker"
	"github.com/tokenvend/tokenvend/internal/server"
	"github.com/tokenvend/tokenvend/internal/token"
)

// loginSource answers login n for a scope with token "<scope>-<n>".
type loginSource struct{ logins atomic.Int64 }

func (s *loginSource) Token(_ context.Context, r token.Request) (*token.Token, error) {
	tok := fmt.Sprintf("%s-%d", r.Scope, s.logins.Add(1))
	now := time.Now()
	return &token.Token{AccessToken: tok, Type: "Bearer", Headers: map[string]string{"Authorization": "Bearer " + tok},
		IssuedAt: now, Expiry: now.Add(time.Hour)}, nil
}

// TestACachedTokenIsAnsweredWithOneMessage: every hit on a cached token
// gets the message built on its first call (encoded once per token's
// life, not per call), and a new token, or another scope's, gets its own.
func TestACachedTokenIsAnsweredWithOneMessage(t *testing.T) {
	t.Parallel()
	br := broker.New([]broker.Provider{{Name: "kyc", Kind: "kyc", Source: &loginSource{},
		Scopes: broker.Scopes{Allowed: []string{"a", "b"}, Default: "a"}}}, token.Options{}, nil)
	s, err := server.New(br, auth.New(nil), slog.New(slog.NewJSONHandler(io.Discard, nil)), audit.New(io.Discard), noop.NewMeterProvider().Meter("tokenvend"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func(scope string) *tokenvendv1.GetTokenResponse {
		t.Helper()
		resp, err := s.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "kyc", Scope: scope})
		if err != nil {
			t.Fatalf("GetToken(kyc, %q): %v", scope, err)
		}
		return resp
	}
	first := get("a")
	if second := get("a"); second != first {
		t.Errorf("a second hit on the cached token got a new message (%p, then %p), want the first", first, second)
	}
	// Another scope, then back: each answer is its own token's.
	if got := get("b").GetAccessToken(); got != "b-2" {
		t.Errorf("scope b: got %q, want b-2", got)
	}
	if got := get("a"); got.GetAccessToken() != "a-1" || got.GetHeaders()["Authorization"] != "Bearer a-1" {
		t.Errorf("scope a after b: got %q (%v), want a-1", got.GetAccessToken(), got.GetHeaders())
	}
	// The upstream refused a-1: the next answer is the new token's.
	if _, err := s.InvalidateToken(ctx, &tokenvendv1.InvalidateTokenRequest{Provider: "kyc", Scope: "a", AccessToken: "a-1", UpstreamStatus: 401}); err != nil {
		t.Fatal(err)
	}
	if got := get("a"); got == first || got.GetAccessToken() != "a-3" || got.GetHeaders()["Authorization"] != "Bearer a-3" {
		t.Errorf("after a-1 was invalidated: got %q (%v), want a-3 in a new message", got.GetAccessToken(), got.GetHeaders())
	}
}
