// Package audit writes audit lines in group commit: a line is written out
// before Write returns, as Vault refuses a request it cannot audit, yet
// the lines of every caller waiting at the same time go out in one Write
// (one write(2) on a file), as a database commits its log.
//
// It uses the leader-follower pattern. A caller appends its line to the
// batch being collected; if no write is in progress, it becomes the
// leader: it takes the batch, writes it with one Write call, and wakes
// every caller of that batch with the result. Lines that arrive during the
// write collect in the next batch, and the leader hands that batch to one
// of its callers, who writes it in turn. Alone, a caller waits for its own
// write only; under load, one write carries the lines of every call that
// queued behind the one before, and no goroutine sits idle in between.
package audit

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"
)

// Writer is a group-commit writer of whole lines to one sink. It is safe
// for concurrent use.
type Writer struct {
	out io.Writer

	mu sync.Mutex
	// next collects the lines of the callers that wait for the next write.
	next *batch
	// writing is set from when a batch is taken for writing until no
	// batch is left waiting: at most one Write call to out is in flight,
	// so batches go out whole and in order.
	writing bool
	// free is a written batch that no caller waited on, and spare the
	// buffer of the last batch written: reused, so that a lone caller
	// allocates nothing.
	free  *batch
	spare []byte
}

// batch is the lines of one Write, and its outcome once written.
type batch struct {
	buf []byte
	// done and lead are made when a caller first waits on the batch (a
	// lone caller's needs neither). done is closed once the batch is
	// written, err set before; lead hands the batch to one of its
	// callers, to write it.
	done chan struct{}
	lead chan struct{}
	err  error
}

// maxSpare bounds the buffer kept for reuse: a burst must not pin a large
// buffer for the life of the process.
const maxSpare = 1 << 20

// New returns a Writer to out. Each Write call to out carries whole lines
// only: out sees no line split across two calls.
func New(out io.Writer) *Writer {
	return &Writer{out: out, next: &batch{}}
}

// Write writes line, which must be one or more whole lines ending in a
// newline, and returns once it is written, with the error of the Write
// call that carried it. On an error the line may or may not have reached
// the sink (a short write); it is never dropped without its caller being
// told. Write copies line: the caller may reuse it at once.
func (w *Writer) Write(line []byte) error {
	w.mu.Lock()
	b := w.next
	b.buf = append(b.buf, line...)
	if w.writing {
		// Wait for a leader to write the batch, or to hand it over.
		if b.done == nil {
			b.done, b.lead = make(chan struct{}), make(chan struct{}, 1)
		}
		done, lead := b.done, b.lead
		w.mu.Unlock()
		select {
		case <-done:
			return b.err
		case <-lead:
		}
		w.mu.Lock()
	}
	// Lead b, with every line that joined it until now.
	w.next = w.newBatch()
	w.writing = true
	w.mu.Unlock()

	err := write(w.out, b.buf)

	w.mu.Lock()
	w.finish(b, err)
	if len(w.next.buf) > 0 {
		// Its callers all wait (they found a write in progress): one of
		// them writes it, and writing stays set.
		w.next.lead <- struct{}{}
	} else {
		w.writing = false
	}
	w.mu.Unlock()
	return err
}

// newBatch returns an empty batch, reusing what it can; w.mu is held.
func (w *Writer) newBatch() *batch {
	b := w.free
	if b == nil {
		b = &batch{}
	}
	w.free = nil
	b.buf, w.spare = w.spare[:0], nil
	return b
}

// finish records the outcome of b, written, and wakes its callers; w.mu is
// held. A batch no one waited on is kept for reuse: nothing else refers to
// it, since callers join only the batch not yet taken.
func (w *Writer) finish(b *batch, err error) {
	if cap(b.buf) <= maxSpare {
		w.spare = b.buf[:0]
	}
	if b.done == nil {
		*b = batch{}
		w.free = b
		return
	}
	b.buf, b.err = nil, err
	close(b.done)
}

// write writes p with one Write call, reporting a short write that out
// did not report as an error.
func write(out io.Writer, p []byte) error {
	n, err := out.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return err
}

// encoder is the buffers a line is encoded into: line for appendLine,
// buf for slog's JSON handler h.
type encoder struct {
	line []byte
	buf  bytes.Buffer
	h    slog.Handler
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.h = slog.NewJSONHandler(&e.buf, nil)
	return e
}}

// maxPooledLine bounds the buffers of an encoder put back in the pool.
const maxPooledLine = 64 << 10

// Record encodes rec exactly as slog.NewJSONHandler(w, nil) would write
// it, in the caller's goroutine, and writes the line as Write does.
func (w *Writer) Record(ctx context.Context, rec slog.Record) error {
	attrs := make([]slog.Attr, 0, rec.NumAttrs())
	rec.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	return w.Log(ctx, rec.Time, rec.Level, rec.Message, attrs...)
}

// Log is Record for the record of t, level, msg and attrs, without
// building an slog.Record unless slog's handler has to encode it: a
// record of more than five attributes allocates, and an audit line has
// eight.
func (w *Writer) Log(ctx context.Context, t time.Time, level slog.Level, msg string, attrs ...slog.Attr) error {
	e := encoders.Get().(*encoder)
	defer func() {
		if e.buf.Cap() <= maxPooledLine && cap(e.line) <= maxPooledLine {
			e.buf.Reset()
			encoders.Put(e)
		}
	}()
	var ok bool
	if e.line, ok = appendLine(e.line[:0], t, level, msg, attrs); ok {
		return w.Write(e.line)
	}
	rec := slog.NewRecord(t, level, msg, 0)
	rec.AddAttrs(attrs...)
	if err := e.h.Handle(ctx, rec); err != nil {
		return err
	}
	return w.Write(e.buf.Bytes())
}

// appendLine appends a record of t, level, msg and attrs as slog's JSON
// handler writes it, byte for byte, when it is what an audit line is: a
// time, a level, a message and string attributes. It reports false for
// anything else (a zero time, a group, a number...), which slog's handler
// then encodes.
//
// Why not slog's handler for every line: it is general (groups,
// ReplaceAttr, a Value of any kind) and pays for it: a third of a cached
// GetToken's handler time went to it (see bench/README.md, issue 18).
// TestAppendLineIsWhatSlogWrites and FuzzAppendLine hold the two to the
// same bytes.
func appendLine(dst []byte, t time.Time, level slog.Level, msg string, attrs []slog.Attr) ([]byte, bool) {
	if y := t.Year(); t.IsZero() || y < 0 || y >= 10000 {
		return dst, false
	}
	dst = append(dst, `{"time":"`...)
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","level":`...)
	dst = appendString(dst, level.String())
	dst = append(dst, `,"msg":`...)
	dst = appendString(dst, msg)
	for _, a := range attrs {
		if a.Key == "" || a.Value.Kind() != slog.KindString {
			return dst, false
		}
		dst = append(dst, ',')
		dst = appendString(dst, a.Key)
		dst = append(dst, ':')
		dst = appendString(dst, a.Value.String())
	}
	return append(dst, "}\n"...), true
}

// appendString appends s as a quoted JSON string, escaped as slog's JSON
// handler escapes it: a quote, a backslash and control characters; invalid
// UTF-8 becomes \ufffd, and U+2028 and U+2029 are escaped too.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++ // the common case: printable ASCII, copied as is
			continue
		}
		var esc string
		size := 1
		switch {
		case c == '"':
			esc = `\"`
		case c == '\\':
			esc = `\\`
		case c == '\n':
			esc = `\n`
		case c == '\r':
			esc = `\r`
		case c == '\t':
			esc = `\t`
		case c < 0x20:
			esc = `\u00` + string(hex[c>>4]) + string(hex[c&0xf])
		default:
			var r rune
			r, size = utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				esc = `\ufffd`
			case r == '\u2028':
				esc = `\u2028`
			case r == '\u2029':
				esc = `\u2029`
			default:
				i += size // any other character, as is
				continue
			}
		}
		dst = append(dst, s[start:i]...)
		dst = append(dst, esc...)
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hex = "0123456789abcdef"
