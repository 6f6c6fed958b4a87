package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// server is one tokenvend process started by the harness.
type server struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	exited   chan struct{}
	waitErr  error
	tail     *tailBuffer // the last of what it wrote to stderr, for errors
}

// startServer runs bin with args (which must make it listen on port 0)
// and waits for its "tokenvend serving" log line, which names the
// addresses it listens on.
func startServer(bin string, args ...string) (*server, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=") // as `make run`: no tracing
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, exited: make(chan struct{}), tail: &tailBuffer{max: 8 << 10}}
	ready := make(chan [2]string, 1)
	go func() {
		// Read line by line until the service says where it listens; then
		// drain the rest cheaply (an audit log may write a line per call).
		r := bufio.NewReaderSize(stderr, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			_, _ = s.tail.Write(line)
			var rec struct {
				Msg      string `json:"msg"`
				GRPCAddr string `json:"grpc_addr"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "tokenvend serving" {
				ready <- [2]string{rec.GRPCAddr, rec.HTTPAddr}
				break
			}
			if err != nil {
				break
			}
		}
		_, _ = io.Copy(s.tail, r)
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	select {
	case addrs := <-ready:
		s.grpcAddr, s.httpAddr = addrs[0], addrs[1]
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("%s %s exited before serving (%v):\n%s", bin, strings.Join(args, " "), s.waitErr, s.tail)
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-s.exited
		return nil, fmt.Errorf("%s %s did not start serving within 20s:\n%s", bin, strings.Join(args, " "), s.tail)
	}
}

// pid is the server's process id.
func (s *server) pid() int { return s.cmd.Process.Pid }

// stop sends SIGTERM and waits for a graceful exit (killing it after 20s).
func (s *server) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("tokenvend did not stop within 20s of SIGTERM")
	}
	if s.waitErr != nil {
		return fmt.Errorf("tokenvend exited: %v\n%s", s.waitErr, s.tail)
	}
	return nil
}

// alive returns an error when the process has exited.
func (s *server) alive() error {
	select {
	case <-s.exited:
		return fmt.Errorf("tokenvend exited during the run (%v):\n%s", s.waitErr, s.tail)
	default:
		return nil
	}
}

// promSample is one Prometheus text-format sample.
var promSample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)`)
var label = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// metrics scrapes the server's /metrics.
func (s *server) metrics(ctx context.Context) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.httpAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(string(body)), nil
}

// parseMetrics reads the samples of a Prometheus text exposition.
func parseMetrics(text string) metrics {
	var m metrics
	for _, line := range strings.Split(text, "\n") {
		g := promSample.FindStringSubmatch(line)
		if g == nil || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(g[3], 64)
		if err != nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range label.FindAllStringSubmatch(g[2], -1) {
			labels[l[1]] = l[2]
		}
		m = append(m, metricSample{name: g[1], labels: labels, value: v})
	}
	return m
}

type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

type metrics []metricSample

// sum adds up every sample of name whose labels include want ("k", "v",
// ...); a value "!v" matches any value but v.
func (m metrics) sum(name string, want ...string) float64 {
	var total float64
next:
	for _, s := range m {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(want); i += 2 {
			got, ok := s.labels[want[i]]
			if not, neg := strings.CutPrefix(want[i+1], "!"); neg {
				if ok && got == not {
					continue next
				}
			} else if got != want[i+1] {
				continue next
			}
		}
		total += s.value
	}
	return total
}

// memory reads the resident set size now (VmRSS) and at its peak (VmHWM)
// of a process, in bytes.
func memory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			peak = n << 10
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return rss, peak, nil
}

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// cpuTime is the CPU time (user and system) a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields are
	// counted after its closing one. utime and stime are fields 14 and 15.
	_, rest, ok := bytes.Cut(b, []byte(") "))
	f := strings.Fields(string(rest))
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// selfCPU is the CPU time (user and system) this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}
