package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenvendv1 "github.com/tokenvend/tokenvend/gen/tokenvend/v1"
	"github.com/tokenvend/tokenvend/internal/server"
)

// answered is one GetToken that got a token back.
type answered struct{ subject, fingerprint string }

// TestKilledUnderLoadEveryAnswerWasAudited runs `tokenvend demo` as its own
// process, loads it with 20 concurrent gRPC callers, SIGKILLs it while
// they run, and then reads what it wrote to stderr: every GetToken that
// got a token has its audit line, since the line is written before the
// answer leaves. (An audit writer that buffered lines and wrote them
// later would lose the last ones here.)
func TestKilledUnderLoadEveryAnswerWasAudited(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	// Read every line the process writes, and learn its gRPC address.
	var lines []string
	addr := make(chan string, 1)
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			var rec struct {
				Msg      string
				GRPCAddr string `json:"grpc_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "tokenvend serving" {
				addr <- rec.GRPCAddr
			}
		}
	}()
	var grpcAddr string
	select {
	case grpcAddr = <-addr:
	case <-eof:
		t.Fatal("the process ended before serving")
	case <-time.After(30 * time.Second):
		t.Fatal("the process did not start serving within 30s")
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tokenvendv1.NewTokenServiceClient(conn)

	// 20 callers, each asking for fresh single-use loginid tokens under a
	// subject of its own per call, until the process dies; it is killed
	// once killAt answers are in (about a second of load), while the
	// callers keep going.
	const callers, killAt = 20, 1000
	var (
		mu    sync.Mutex
		got   []answered
		n     atomic.Int64
		ready = make(chan struct{})
		wg    sync.WaitGroup
	)
	for c := range callers {
		wg.Go(func() {
			for i := 0; ; i++ {
				subject := fmt.Sprintf("caller%02d-call%06d@example.com", c, i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := client.GetToken(ctx, &tokenvendv1.GetTokenRequest{Provider: "loginid", Scope: "users.retrieve", Subject: subject})
				cancel()
				if err != nil {
					return // the process is gone (or failing): stop
				}
				mu.Lock()
				got = append(got, answered{subject, server.Fingerprint(resp.GetAccessToken())})
				mu.Unlock()
				if n.Add(1) == killAt {
					close(ready)
				}
			}
		})
	}
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d answers within 60s", n.Load())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	wg.Wait()
	<-eof
	if err := cmd.Wait(); err == nil {
		t.Fatal("the process exited cleanly, want it killed")
	}

	// What the process wrote before it died: its audit lines, by subject.
	audited := map[string]string{} // subject -> token_sha256
	torn := 0
	for _, l := range lines {
		var rec struct {
			Msg, Code, Subject, Result string
			Fingerprint                string `json:"token_sha256"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			torn++ // only the last line may be, if the kill cut a write short
			continue
		}
		if rec.Msg == "audit" && rec.Code == "OK" {
			audited[rec.Subject] = rec.Fingerprint
		}
	}
	if torn > 1 {
		t.Errorf("got %d lines that are not JSON, want at most the last one", torn)
	}
	missing := 0
	for _, a := range got {
		fp, ok := audited[a.subject]
		switch {
		case !ok:
			missing++
		case fp != a.fingerprint:
			t.Errorf("subject %s: audit line has token_sha256 %s, the answer's token is %s", a.subject, fp, a.fingerprint)
		}
	}
	t.Logf("%d answers, %d OK audit lines (calls whose answer the kill cut off may have a line too)", len(got), len(audited))
	if missing > 0 {
		t.Errorf("%d of %d answered GetTokens have no audit line", missing, len(got))
	}
}
