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

// encoder is a JSON handler that writes into its own buffer.
type encoder struct {
	buf bytes.Buffer
	h   slog.Handler
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.h = slog.NewJSONHandler(&e.buf, nil)
	return e
}}

// maxPooledLine bounds the buffer of an encoder put back in the pool.
const maxPooledLine = 64 << 10

// Record encodes rec exactly as slog.NewJSONHandler(w, nil) would write
// it, in the caller's goroutine, and writes the line as Write does.
func (w *Writer) Record(ctx context.Context, rec slog.Record) error {
	e := encoders.Get().(*encoder)
	defer func() {
		if e.buf.Cap() <= maxPooledLine {
			e.buf.Reset()
			encoders.Put(e)
		}
	}()
	if err := e.h.Handle(ctx, rec); err != nil {
		return err
	}
	return w.Write(e.buf.Bytes())
}
