package audit

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// BenchmarkAudit writes audit lines from about 50 concurrent callers to
// /dev/null, a real file (so every Write is a write(2)), and reports the
// Write calls per line: one per line as slog's JSON handler does it, far
// fewer in group commit.
func BenchmarkAudit(b *testing.B) {
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "audit", 0)
	rec.AddAttrs(slog.String("caller", "spiffe://example.org/ns/billing/sa/api"), slog.String("provider", "kyc"),
		slog.String("scope", ""), slog.String("subject", ""), slog.String("code", "OK"), slog.String("result", "hit"),
		slog.String("token_sha256", "0123456789abcdef"), slog.String("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"))
	devNull := func(b *testing.B) *countingFile {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		return &countingFile{f: f}
	}
	run := func(b *testing.B, out *countingFile, write func(context.Context) error) {
		b.ReportAllocs()
		b.SetParallelism(max(1, 50/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				if err := write(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(out.writes.Load())/float64(b.N), "writes/line")
	}
	pipe := func(b *testing.B) *countingFile {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, r); close(done) }()
		b.Cleanup(func() { w.Close(); <-done; r.Close() })
		return &countingFile{f: w}
	}
	file := func(flags int) func(b *testing.B) *countingFile {
		return func(b *testing.B) *countingFile {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "audit.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND|flags, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { f.Close() })
			return &countingFile{f: f}
		}
	}
	for _, sk := range []struct {
		name string
		open func(*testing.B) *countingFile
	}{{"devnull", devNull}, {"pipe", pipe}, {"file", file(0)}, {"osync file", file(os.O_SYNC)}} {
		b.Run(sk.name+"/write per line", func(b *testing.B) {
			out := sk.open(b)
			h := slog.NewJSONHandler(out, nil)
			run(b, out, func(ctx context.Context) error { return h.Handle(ctx, rec) })
		})
		b.Run(sk.name+"/group commit", func(b *testing.B) {
			out := sk.open(b)
			w := New(out)
			run(b, out, func(ctx context.Context) error { return w.Record(ctx, rec) })
		})
	}
}
