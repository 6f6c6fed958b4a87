// Package redistest starts real Redis servers for tests: a standalone
// redis-server, or a three-node Redis Cluster, each on free loopback ports
// with its files under t.TempDir(), stopped by its PID when the test ends.
// Nothing here talks to a Redis a test did not start (Debian's packaged
// service, if it runs, listens on 6379, which no test uses), and nothing
// is persisted: a restarted server is empty, as after losing its data.
//
// When redis-server (or, for a cluster, redis-cli) is not installed, tests
// skip, saying how to install it; under CI=true they fail instead, so CI
// cannot pass by skipping them.
package redistest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a server may take to say it is ready.
const startTimeout = 10 * time.Second

// Server is one redis-server process started by a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	args []string
	// Addr is the server's host:port on loopback.
	Addr string
	// Port is its TCP port.
	Port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *bytes.Buffer // the server's output, shown when a test fails
}

// Binary returns the path of the named Redis program, skipping the test
// when it is not installed (failing it under CI=true).
func Binary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed: apt-get install redis-server redis-tools", name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: the Redis tests must run)")
	}
	t.Skip(msg)
	return ""
}

// Start starts a standalone redis-server on a free loopback port. extra
// arguments are passed to it (e.g. "--requirepass", "pw").
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := Binary(t, "redis-server")
	dir, err := os.MkdirTemp(t.TempDir(), "redis")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: dir}
	// A port found free may be taken before the server binds it: try
	// another then.
	for try := 0; ; try++ {
		s.Port = freePort(t)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		s.args = append([]string{
			"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
			"--unixsocket", filepath.Join(dir, "r.sock"),
			"--save", "", "--appendonly", "no", "--dir", dir,
		}, extra...)
		err := s.start()
		if err == nil {
			break
		}
		if try == 2 {
			t.Fatalf("redis-server did not start: %v\n%s", err, s.output())
		}
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("redis-server %s output:\n%s", s.Addr, s.output())
		}
	})
	return s
}

// start runs the server and waits for it to say it is ready.
func (s *Server) start() error {
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(done)
	}()
	log := &bytes.Buffer{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		signalled := false
		for sc.Scan() {
			s.mu.Lock()
			log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if !signalled && strings.Contains(sc.Text(), "Ready to accept connections") {
				signalled = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.log = cmd, done, log
	s.mu.Unlock()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("exited: %v", cmd.ProcessState)
	case <-t.C:
		s.Kill()
		return fmt.Errorf("not ready after %s", startTimeout)
	}
}

func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

// PID is the server process's id, 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Kill kills the server (SIGKILL, by its PID) and waits for it to exit. It
// does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused server dies too
	_ = cmd.Process.Kill()
	<-done
}

// Restart kills the server and starts it again on the same port, empty
// (nothing is persisted); a cluster node keeps its nodes.conf and so its
// place in the cluster.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("redis-server %s did not restart: %v\n%s", s.Addr, err, s.output())
	}
}

// Pause stops the server (SIGSTOP): it holds its connections open but
// answers nothing until Resume.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// CLI runs redis-cli against the server and returns its output.
func (s *Server) CLI(args ...string) (string, error) {
	bin := Binary(s.t, "redis-cli")
	out, err := exec.Command(bin, append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port)}, args...)...).CombinedOutput()
	return string(out), err
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Cluster is a Redis Cluster of primaries started by a test.
type Cluster struct {
	Nodes []*Server
}

// Addrs are the nodes' addresses, the seeds a client is given.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr)
	}
	return a
}

// StartCluster starts three primaries (no replicas) on loopback, each
// with its cluster bus on a port of its own (--cluster-port, so port+10000
// need not be free), forms them into a cluster with redis-cli, and waits
// until every node reports the cluster ok.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	Binary(t, "redis-cli")
	c := &Cluster{}
	for range 3 {
		bus := freePort(t)
		c.Nodes = append(c.Nodes, Start(t,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", "2000",
		))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	if out, err := c.Nodes[0].CLI(append(args, "--cluster-yes")...); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// The nodes learn of each other's slots through gossip: nothing
	// signals the moment all agree, so ask each until it does.
	deadline := time.Now().Add(startTimeout)
	for _, n := range c.Nodes {
		for {
			out, err := n.CLI("cluster", "info")
			if err == nil && strings.Contains(out, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok after %s: %v\n%s", n.Addr, startTimeout, err, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}
