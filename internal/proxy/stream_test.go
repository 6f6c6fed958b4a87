package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

const bigBody = 8 << 20

// TestLargeUploadStreams: an 8 MB upload reaches the upstream while the
// caller is still sending it (the proxy keeps no copy beyond the first MiB
// of a chunked one, read ahead in case it ends there), and costs far less
// than 8 MB of allocation, its length known or not. Not parallel: it
// measures the process's allocations.
func TestLargeUploadStreams(t *testing.T) {
	for _, length := range []int64{bigBody, -1} {
		t.Run(fmt.Sprintf("Content-Length %d", length), func(t *testing.T) { testLargeUploadStreams(t, length) })
	}
}

func testLargeUploadStreams(t *testing.T, length int64) {
	up := startKYC(t)
	halfway := make(chan struct{})
	received := make(chan int64, 1)
	sink := newSink(t, func(r *http.Request) {
		n, _ := io.CopyN(io.Discard, r.Body, bigBody/2)
		close(halfway)
		m, _ := io.Copy(io.Discard, r.Body)
		received <- n + m
	})
	p := startProxy(t, newVendor(t, up), block("kyc", sink, ""), false)

	pr, pw := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		chunk := bytes.Repeat([]byte("u"), 32<<10)
		for sent := 0; sent < bigBody; sent += len(chunk) {
			if sent == bigBody/2+len(chunk) {
				// The upstream must have half of the body before the
				// caller sends the rest: a proxy that buffered it
				// would wait here for ever.
				select {
				case <-halfway:
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				}
			}
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.url+"/kyc/upload", pr)
	req.ContentLength = length

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := do(t, req)
	runtime.ReadMemStats(&after)
	if a.status != http.StatusOK {
		t.Fatalf("got %d %q, want 200", a.status, a.body)
	}
	if n := <-received; n != bigBody {
		t.Errorf("upstream got %d bytes, want %d", n, bigBody)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > bigBody/4 {
		t.Errorf("the upload allocated %d bytes, want well under the body's %d", d, bigBody)
	}
}

// TestLargeDownloadStreams: the caller gets the start of the upstream's
// answer before the upstream has sent the rest, in bounded memory.
func TestLargeDownloadStreams(t *testing.T) {
	up := startKYC(t)
	firstRead := make(chan struct{})
	src := newSource(t, func(w http.ResponseWriter) {
		chunk := bytes.Repeat([]byte("d"), 32<<10)
		for sent := 0; sent < bigBody; sent += len(chunk) {
			if sent == len(chunk) {
				w.(http.Flusher).Flush()
				select {
				case <-firstRead:
				case <-time.After(30 * time.Second):
					return
				}
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	p := startProxy(t, newVendor(t, up), block("kyc", src, ""), false)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := http.Get(p.url + "/kyc/download")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 32<<10)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatalf("reading the first chunk: %v", err)
	}
	close(firstRead)
	n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
	runtime.ReadMemStats(&after)
	if err != nil || n+int64(len(buf)) != bigBody {
		t.Errorf("got %d bytes (%v), want %d", n+int64(len(buf)), err, bigBody)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > bigBody/4 {
		t.Errorf("the download allocated %d bytes, want well under the body's %d", d, bigBody)
	}
}

// newSink is an upstream that reads requests with read and answers 200.
func newSink(t *testing.T, read func(r *http.Request)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		read(r)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// newSource is an upstream whose answers write writes.
func newSource(t *testing.T, write func(w http.ResponseWriter)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { write(w) }))
	t.Cleanup(srv.Close)
	return srv.URL
}
