package redistest_test

import (
	"strings"
	"testing"

	"github.com/tokenvend/tokenvend/internal/store/redistest"
)

func ping(t *testing.T, s *redistest.Server) (string, error) {
	t.Helper()
	out, err := s.CLI("ping")
	return strings.TrimSpace(out), err
}

func TestStartKillRestart(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	if out, err := ping(t, s); err != nil || out != "PONG" {
		t.Fatalf("PING: got %q, %v; want PONG", out, err)
	}
	if out, err := s.CLI("set", "k", "v"); err != nil || strings.TrimSpace(out) != "OK" {
		t.Fatalf("SET: got %q, %v", out, err)
	}
	pid := s.PID()
	s.Kill()
	if out, err := ping(t, s); out == "PONG" {
		t.Fatalf("PING after Kill: got %q, %v; want no answer", out, err)
	}
	s.Restart()
	if s.PID() == pid || s.PID() == 0 {
		t.Errorf("PID after Restart: got %d (was %d), want a new process", s.PID(), pid)
	}
	if out, err := ping(t, s); err != nil || out != "PONG" {
		t.Fatalf("PING after Restart: got %q, %v; want PONG", out, err)
	}
	if out, _ := s.CLI("exists", "k"); strings.TrimSpace(out) != "0" {
		t.Errorf("EXISTS k after Restart: got %q, want 0 (nothing persisted)", out)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	if len(c.Addrs()) != 3 {
		t.Fatalf("Addrs: got %v, want 3", c.Addrs())
	}
	for _, n := range c.Nodes {
		out, err := n.CLI("cluster", "info")
		if err != nil || !strings.Contains(out, "cluster_known_nodes:3") || !strings.Contains(out, "cluster_slots_assigned:16384") {
			t.Errorf("node %s CLUSTER INFO: got %q, %v; want 3 known nodes and every slot assigned", n.Addr, out, err)
		}
	}
}

// TestSkipsWhenMissing: without redis-server on PATH (and CI unset) a test
// is skipped, not failed.
func TestSkipsWhenMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("CI", "")
	var inner *testing.T
	t.Run("missing", func(t *testing.T) {
		inner = t
		redistest.Binary(t, "redis-server")
		t.Error("Binary returned without skipping")
	})
	if !inner.Skipped() {
		t.Errorf("Skipped: got false, want true")
	}
}
