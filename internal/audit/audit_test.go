package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sink records every Write call it gets. Until release is closed, its
// first Write blocks (so that the test can queue callers behind it); while
// fail is set, every Write fails.
type sink struct {
	mu      sync.Mutex
	writes  [][]byte
	entered chan struct{} // closed when the first Write has begun
	release chan struct{}
	fail    atomic.Bool
	once    sync.Once
}

var errSink = errors.New("disk full")

func newSink(blockFirst bool) *sink {
	s := &sink{entered: make(chan struct{}), release: make(chan struct{})}
	if !blockFirst {
		close(s.release)
	}
	return s
}

func (s *sink) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.entered) })
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, bytes.Clone(p))
	if s.fail.Load() {
		return 0, errSink
	}
	return len(p), nil
}

func (s *sink) calls() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

// queued waits until w's next batch holds n lines: callers that have
// appended their line and wait for the write in progress.
func queued(t *testing.T, w *Writer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		got := bytes.Count(w.next.buf, []byte("\n"))
		w.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queued lines: got %d, want %d", got, n)
		}
		runtime.Gosched()
	}
}

// TestCallersQueuedBehindAWriteShareTheNext: while one line is being
// written, the lines of every caller that arrives wait, and go out
// together in the next single Write.
func TestCallersQueuedBehindAWriteShareTheNext(t *testing.T) {
	t.Parallel()
	const n = 50
	s := newSink(true)
	w := New(s)
	errs := make(chan error, n+1)
	go func() { errs <- w.Write([]byte("first\n")) }()
	<-s.entered
	for i := range n {
		go func() { errs <- w.Write(fmt.Appendf(nil, "line %d\n", i)) }()
	}
	queued(t, w, n)
	close(s.release)
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Errorf("Write: got %v, want nil", err)
		}
	}
	calls := s.calls()
	if len(calls) != 2 {
		t.Fatalf("Write calls: got %d, want 2 (the first line, then the %d queued behind it)", len(calls), n)
	}
	if string(calls[0]) != "first\n" {
		t.Errorf("first Write: got %q, want %q", calls[0], "first\n")
	}
	if got := bytes.Count(calls[1], []byte("\n")); got != n {
		t.Errorf("second Write: got %d lines, want %d", got, n)
	}
}

// TestAFailedWriteFailsEveryCallerOfItsBatch: each caller whose line was
// in a failed Write gets the error; the next batch is tried afresh.
func TestAFailedWriteFailsEveryCallerOfItsBatch(t *testing.T) {
	t.Parallel()
	const n = 20
	s := newSink(true)
	s.fail.Store(true)
	w := New(s)
	errs := make(chan error, n+1)
	go func() { errs <- w.Write([]byte("first\n")) }()
	<-s.entered
	for i := range n {
		go func() { errs <- w.Write(fmt.Appendf(nil, "line %d\n", i)) }()
	}
	queued(t, w, n)
	close(s.release)
	for range n + 1 {
		if err := <-errs; !errors.Is(err, errSink) {
			t.Errorf("Write: got %v, want %v", err, errSink)
		}
	}
	if got := len(s.calls()); got != 2 {
		t.Errorf("Write calls: got %d, want 2", got)
	}
	s.fail.Store(false)
	if err := w.Write([]byte("after\n")); err != nil {
		t.Errorf("Write once the sink works again: got %v, want nil", err)
	}
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestShortWriteIsAnError(t *testing.T) {
	t.Parallel()
	if err := New(shortWriter{}).Write([]byte("a line\n")); !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("got %v, want io.ErrShortWrite", err)
	}
}

// countingFile counts the Write calls that reach a real file. With slow
// set, it yields after each, as a slow disk would let other goroutines
// run (even with GOMAXPROCS=1).
type countingFile struct {
	f      *os.File
	slow   bool
	writes atomic.Int64
}

func (c *countingFile) Write(p []byte) (int, error) {
	c.writes.Add(1)
	n, err := c.f.Write(p)
	if c.slow {
		runtime.Gosched()
	}
	return n, err
}

// TestEveryLineOnceAndWhole: many goroutines write to a real file; every
// line is in it exactly once and whole, and under concurrency there are
// fewer Write calls than lines.
func TestEveryLineOnceAndWhole(t *testing.T) {
	t.Parallel()
	const goroutines, perG = 16, 300
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := &countingFile{f: f, slow: true}
	w := New(out)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				// Lines of varying length, so that a torn line shows.
				line := fmt.Appendf(nil, "g%d-i%d-%s\n", g, i, strings.Repeat("x", i%37))
				if err := w.Write(line); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		seen[l]++
	}
	for g := range goroutines {
		for i := range perG {
			l := fmt.Sprintf("g%d-i%d-%s", g, i, strings.Repeat("x", i%37))
			if seen[l] != 1 {
				t.Fatalf("line %q: written %d times, want 1", l, seen[l])
			}
			delete(seen, l)
		}
	}
	if len(seen) != 0 {
		t.Errorf("got %d lines nobody wrote (torn lines?), e.g. %v", len(seen), seen)
	}
	lines, writes := int64(goroutines*perG), out.writes.Load()
	t.Logf("%d lines in %d writes", lines, writes)
	if writes >= lines {
		t.Errorf("Write calls: got %d for %d lines, want fewer (group commit)", writes, lines)
	}
}

// TestAloneACallerWritesItsOwnLine: with no one else waiting, each line
// is its own Write, done before Write returns.
func TestAloneACallerWritesItsOwnLine(t *testing.T) {
	t.Parallel()
	s := newSink(false)
	w := New(s)
	for i := range 3 {
		if err := w.Write(fmt.Appendf(nil, "line %d\n", i)); err != nil {
			t.Fatal(err)
		}
		if got := len(s.calls()); got != i+1 {
			t.Fatalf("after line %d: got %d Write calls, want %d", i, got, i+1)
		}
	}
}

// TestALoneWriteAllocatesNothing: the audit line is on GetToken's hot
// path. (Not parallel: AllocsPerRun counts the whole process.)
func TestALoneWriteAllocatesNothing(t *testing.T) {
	w := New(io.Discard)
	line := []byte("a line\n")
	if got := testing.AllocsPerRun(100, func() { w.Write(line) }); got != 0 {
		t.Errorf("allocations per lone Write: got %v, want 0", got)
	}
}

// TestRecordIsWhatSlogsJSONHandlerWrites: the audit line's format is the
// service log's.
func TestRecordIsWhatSlogsJSONHandlerWrites(t *testing.T) {
	t.Parallel()
	rec := slog.NewRecord(time.Date(2026, 12, 1, 12, 0, 0, 123, time.UTC), slog.LevelInfo, "audit", 0)
	rec.AddAttrs(slog.String("caller", `spiffe://x/"y"`), slog.String("provider", "kyc"), slog.String("token_sha256", "0011223344556677"))
	var want bytes.Buffer
	if err := slog.NewJSONHandler(&want, nil).Handle(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	s := newSink(false)
	w := New(s)
	for range 2 { // the second from a pooled encoder
		if err := w.Record(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	calls := s.calls()
	if len(calls) != 2 || string(calls[0]) != want.String() || string(calls[1]) != want.String() {
		t.Errorf("got %q, want %q twice", calls, want.String())
	}
}

// slogLine is rec as slog's JSON handler writes it.
func slogLine(t testing.TB, rec slog.Record) string {
	var b bytes.Buffer
	if err := slog.NewJSONHandler(&b, nil).Handle(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// recordLine is rec as Record writes it.
func recordLine(t testing.TB, rec slog.Record) string {
	var b bytes.Buffer
	if err := New(&b).Record(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func attrsOf(rec slog.Record) []slog.Attr {
	var attrs []slog.Attr
	rec.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a); return true })
	return attrs
}

// logLine is rec as Log writes it.
func logLine(t testing.TB, rec slog.Record) string {
	var b bytes.Buffer
	if err := New(&b).Log(context.Background(), rec.Time, rec.Level, rec.Message, attrsOf(rec)...); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestAppendLineIsWhatSlogWrites: the hand-written encoding of an audit
// line is byte for byte slog's, for the strings a caller can send
// (subject, scope) and for records it does not handle itself.
func TestAppendLineIsWhatSlogWrites(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 1, 12, 0, 0, 123456789, time.UTC)
	for _, tc := range []struct {
		name string
		rec  func() slog.Record
		fast bool // appendLine encodes it (rather than slog's handler)
	}{
		{"plain", func() slog.Record {
			r := slog.NewRecord(at, slog.LevelInfo, "audit", 0)
			r.AddAttrs(slog.String("caller", "spiffe://example.org/ns/a/sa/b"), slog.String("scope", ""))
			return r
		}, true},
		{"escapes", func() slog.Record {
			r := slog.NewRecord(at.In(time.FixedZone("x", 5*3600+1800)), slog.LevelWarn+1, "a \"msg\"\n", 0)
			r.AddAttrs(slog.String("subject", "q\"b\\s/\n\r\t\x00\x01\x1f\x7f<>&é😀\u2028\u2029\xff\xc3"),
				slog.String("k\"ey", "v"))
			return r
		}, true},
		{"eight attributes", func() slog.Record {
			r := slog.NewRecord(at, slog.LevelInfo, "audit", 0)
			for _, k := range []string{"caller", "provider", "scope", "subject", "code", "result", "token_sha256", "trace_id"} {
				r.AddAttrs(slog.String(k, k+"-value"))
			}
			return r
		}, true},
		{"a number", func() slog.Record {
			r := slog.NewRecord(at, slog.LevelInfo, "audit", 0)
			r.AddAttrs(slog.String("caller", "c"), slog.Int("n", 3))
			return r
		}, false},
		{"a group", func() slog.Record {
			r := slog.NewRecord(at, slog.LevelInfo, "audit", 0)
			r.AddAttrs(slog.Group("g", slog.String("a", "b")))
			return r
		}, false},
		{"an empty key", func() slog.Record {
			r := slog.NewRecord(at, slog.LevelInfo, "audit", 0)
			r.AddAttrs(slog.String("", "v"))
			return r
		}, false},
		{"no time", func() slog.Record { return slog.NewRecord(time.Time{}, slog.LevelInfo, "audit", 0) }, false},
		{"year 10000", func() slog.Record {
			return slog.NewRecord(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), slog.LevelInfo, "audit", 0)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := tc.rec()
			want := slogLine(t, rec)
			if got := recordLine(t, rec); got != want {
				t.Errorf("Record wrote\n%q, want\n%q", got, want)
			}
			if got := logLine(t, rec); got != want {
				t.Errorf("Log wrote\n%q, want\n%q", got, want)
			}
			if _, fast := appendLine(nil, rec.Time, rec.Level, rec.Message, attrsOf(rec)); fast != tc.fast {
				t.Errorf("appendLine handled it: got %v, want %v", fast, tc.fast)
			}
		})
	}
}

// FuzzAppendLine holds Record and Log to slog's bytes for any message and string
// attribute.
func FuzzAppendLine(f *testing.F) {
	f.Add("audit", "subject", "alice@example.com")
	f.Add("\u2028", "k\x00", "\xff\xfe\"\\")
	f.Fuzz(func(t *testing.T, msg, key, value string) {
		rec := slog.NewRecord(time.Date(2026, 12, 1, 12, 0, 0, 1, time.UTC), slog.LevelInfo, msg, 0)
		rec.AddAttrs(slog.String(key, value))
		want := slogLine(t, rec)
		if got := recordLine(t, rec); got != want {
			t.Errorf("Record wrote\n%q, want\n%q", got, want)
		}
		if got := logLine(t, rec); got != want {
			t.Errorf("Log wrote\n%q, want\n%q", got, want)
		}
	})
}

// TestALoneLogAllocatesNothing: an audit line of eight attributes, the
// GetToken one, is encoded and written without an allocation.
func TestALoneLogAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops encoders at random under the race detector")
	}
	w := New(io.Discard)
	at := time.Now()
	attrs := []slog.Attr{slog.String("caller", "c"), slog.String("provider", "kyc"), slog.String("scope", ""),
		slog.String("subject", ""), slog.String("code", "OK"), slog.String("result", "hit"),
		slog.String("token_sha256", "0011223344556677"), slog.String("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")}
	w.Log(context.Background(), at, slog.LevelInfo, "audit", attrs...) // the pool's first encoder
	if got := testing.AllocsPerRun(100, func() { w.Log(context.Background(), at, slog.LevelInfo, "audit", attrs...) }); got != 0 {
		t.Errorf("allocations per lone Log: got %v, want 0", got)
	}
}
