package app_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/demo"
)

// benchService is the demo served as `make run` serves it, on loopback
// ports, with a gRPC client connected and the kyc token already cached.
type benchService struct {
	conn   *grpc.ClientConn
	tokens tokenvendv1.TokenServiceClient
	health healthpb.HealthClient
	base   string // http://host:port of the HTTP port
}

func startBenchService(b *testing.B) *benchService {
	b.Helper()
	d, err := demo.Start("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.Close)
	ctx, cancel := context.WithCancel(context.Background())
	// The service's log as `tokenvend demo` writes it: JSON lines, each
	// written to a file (/dev/null), so formatting and writing a line per
	// call, if there is one, count as they do in production.
	sink := benchLogSink(b)
	a, err := app.New(ctx, d.Config, app.Options{Log: slog.New(slog.NewJSONHandler(sink, nil)), Audit: sink})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(a.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	s := &benchService{
		conn:   conn,
		tokens: tokenvendv1.NewTokenServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
		base:   "http://" + a.HTTPAddr(),
	}
	if _, err := s.tokens.GetToken(b.Context(), &tokenvendv1.GetTokenRequest{Provider: "kyc"}); err != nil {
		b.Fatalf("warming GetToken(kyc): %v", err)
	}
	return s
}

// benchLogSink is /dev/null opened for writing, closed when b ends.
func benchLogSink(b *testing.B) *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// benchParallelism makes RunParallel run about 50 callers, as `make bench`
// does, whatever GOMAXPROCS is.
func benchParallelism() int { return max(1, 50/runtime.GOMAXPROCS(0)) }

// BenchmarkGetTokenGRPC is a cached GetToken through the real service
// over loopback gRPC (client included), beside the health check on the
// same server: the floor of a unary call. Run with -cpuprofile to see
// what GetToken adds to the floor.
func BenchmarkGetTokenGRPC(b *testing.B) {
	req := &tokenvendv1.GetTokenRequest{Provider: "kyc"}
	minted := &tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.create"}
	calls := []struct {
		name string
		call func(context.Context, *benchService) error
	}{
		{"GetToken", func(ctx context.Context, s *benchService) error {
			_, err := s.tokens.GetToken(ctx, req)
			return err
		}},
		// A fresh ES256 token per call: what minting adds to GetToken.
		{"GetTokenLoginID", func(ctx context.Context, s *benchService) error {
			_, err := s.tokens.GetToken(ctx, minted)
			return err
		}},
		{"HealthCheck", func(ctx context.Context, s *benchService) error {
			_, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
	}
	for _, c := range calls {
		b.Run(c.name+"/serial", func(b *testing.B) {
			s := startBenchService(b)
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.call(ctx, s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			s := startBenchService(b)
			ctx := b.Context()
			b.ReportAllocs()
			b.SetParallelism(benchParallelism())
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.call(ctx, s); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGetTokenREST is a cached GetToken through the REST gateway
// (which calls the TokenService in process), beside /healthz on the same
// HTTP port.
func BenchmarkGetTokenREST(b *testing.B) {
	for _, path := range []string{"/v1/providers/kyc/token", "/healthz"} {
		b.Run(path, func(b *testing.B) {
			s := startBenchService(b)
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
			b.Cleanup(hc.CloseIdleConnections)
			url := s.base + path
			b.ReportAllocs()
			b.SetParallelism(benchParallelism())
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := hc.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("GET %s: got %d, want 200", path, resp.StatusCode)
						return
					}
				}
			})
		})
	}
}
