package token_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/telemetry"
	"github.com/tokenvend/tokenvend/internal/token"
)

// benchSource answers every login at once with a token valid for an hour,
// so a benchmark measures the cache, not an upstream.
type benchSource struct{}

func (benchSource) Token(context.Context, token.Request) (*token.Token, error) {
	now := time.Now()
	return &token.Token{
		AccessToken: "bench-token",
		Type:        "Bearer",
		Headers:     map[string]string{"Authorization": "Bearer bench-token"},
		IssuedAt:    now,
		Expiry:      now.Add(time.Hour),
	}, nil
}

// benchCache returns a Cache holding a valid token for the empty key: every
// Get after this is a hit. With served, it has the instruments and tracer
// the service gives it (telemetry.New: Prometheus metrics, and the tracer
// OTEL_* selects, a no-op one by default); without, neither.
func benchCache(b *testing.B, served bool) *token.Cache {
	b.Helper()
	o := token.Options{Provider: "bench", Kind: "bench"}
	if served {
		tel, err := telemetry.New(b.Context(), telemetry.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
		if o.Metrics, err = token.NewMetrics(tel.Meter.Meter("tokenvend")); err != nil {
			b.Fatal(err)
		}
		o.Tracer = tel.Tracer.Tracer("tokenvend")
	}
	c := token.NewCache(benchSource{}, o)
	if _, out, err := c.Get(b.Context(), token.Key{}, 0); err != nil || out.Hit {
		b.Fatalf("first Get: got %v, %v; want a login", out, err)
	}
	return c
}

// BenchmarkCacheHit is the cache's hot path: a Get answered from a valid
// cached token, by one caller (serial) and by many at once (parallel, so
// the cache's lock is contended), bare and with the service's telemetry.
func BenchmarkCacheHit(b *testing.B) {
	for _, served := range []bool{false, true} {
		name := "bare"
		if served {
			name = "telemetry"
		}
		b.Run(name+"/serial", func(b *testing.B) {
			c := benchCache(b, served)
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if _, out, err := c.Get(ctx, token.Key{}, 0); err != nil || !out.Hit {
					b.Fatalf("Get: got %v, %v; want a hit", out, err)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			c := benchCache(b, served)
			ctx := b.Context()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, out, err := c.Get(ctx, token.Key{}, 0); err != nil || !out.Hit {
						b.Errorf("Get: got %v, %v; want a hit", out, err)
						return
					}
				}
			})
		})
	}
}
