package app_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
)

// auditSink is where the service's audit lines go: a buffer, or while
// full is set /dev/full, a real file that refuses every write (ENOSPC).
type auditSink struct {
	full    atomic.Bool
	devFull *os.File
	lines   syncBuffer
}

func (s *auditSink) Write(p []byte) (int, error) {
	if s.full.Load() {
		return s.devFull.Write(p)
	}
	return s.lines.Write(p)
}

// TestAuditSinkFailureFailsGetToken: while the audit lines cannot be
// written, GetToken answers UNAVAILABLE AUDIT_UNAVAILABLE (REST: 503) and
// no token, as Vault refuses what it cannot audit; once they can, it
// answers again, and every answered call has its line.
func TestAuditSinkFailureFailsGetToken(t *testing.T) {
	t.Parallel()
	devFull, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	t.Cleanup(func() { devFull.Close() })
	sink := &auditSink{devFull: devFull}

	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: kycUser, Password: kycPassword}}})
	url := serve(t, sim)
	cfg, err := config.Parse([]byte("server:\n  grpc_addr: 127.0.0.1:0\n  http_addr: 127.0.0.1:0\nproviders:" + kycProvider("kyc", url, kycPassword)))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, app.Options{Log: slog.New(slog.NewJSONHandler(logs, nil)), Audit: sink})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(a.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &service{t: t, client: tokenvendv1.NewTokenServiceClient(conn), base: "http://" + a.HTTPAddr(), logs: logs}

	first := s.mustGet("kyc")
	sink.full.Store(true)
	resp, err := s.get(&tokenvendv1.GetTokenRequest{Provider: "kyc"})
	code, info := errorInfo(t, err)
	if code != codes.Unavailable || info.GetReason() != "AUDIT_UNAVAILABLE" || resp.GetAccessToken() != "" {
		t.Errorf("audit sink full: got %v %s and token %q, want Unavailable AUDIT_UNAVAILABLE and none", code, info.GetReason(), resp.GetAccessToken())
	}
	r := s.rest(http.MethodGet, "/v1/providers/kyc/token", "")
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(r.Raw, "AUDIT_UNAVAILABLE") || strings.Contains(r.Raw, first.GetAccessToken()) {
		t.Errorf("REST, audit sink full: got %d %s, want 503 AUDIT_UNAVAILABLE without the token", r.Status, r.Raw)
	}
	if !strings.Contains(logs.String(), "the audit line cannot be written") {
		t.Errorf("the service log does not say the audit failed:\n%s", logs.String())
	}
	// A report is audited in the same stream, and fails the same way.
	_, err = s.client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{Provider: "kyc", AccessToken: "made-up"})
	if code, info := errorInfo(t, err); code != codes.Unavailable || info.GetReason() != "AUDIT_UNAVAILABLE" {
		t.Errorf("InvalidateToken, audit sink full: got %v %s, want Unavailable AUDIT_UNAVAILABLE", code, info.GetReason())
	}

	sink.full.Store(false)
	again := s.mustGet("kyc")
	if got := useHeaders(t, url+kycsim.ResourcePath, again.GetHeaders()); got != http.StatusOK {
		t.Errorf("after the sink recovers: protected endpoint got %d, want 200", got)
	}
	if got := strings.Count(sink.lines.String(), `"msg":"audit"`); got != 2 {
		t.Errorf("audit lines written: got %d, want 2 (the answered calls):\n%s", got, sink.lines.String())
	}
	if _, err := s.client.InvalidateToken(context.Background(), &tokenvendv1.InvalidateTokenRequest{Provider: "kyc", AccessToken: "made-up"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(sink.lines.String(), `"msg":"audit invalidate"`); got != 1 {
		t.Errorf("invalidation audit lines in the audit stream: got %d, want 1:\n%s", got, sink.lines.String())
	}
}
