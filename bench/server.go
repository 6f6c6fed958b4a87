package main

import (
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
	// proxyAddr is proxy mode's address, "" when it is off; upstreams
	// are the demo's protected endpoints, by provider.
	proxyAddr string
	upstreams map[string]string
	exited    chan struct{}
	waitErr   error
	log       *os.File // what it writes to stderr (its log, an audit line per call)
	done      chan struct{}
	cleaned   sync.Once
}

// The server's log goes to a file that no one reads while it runs, as a
// container runtime's log file would: a pipe read by the harness would put
// the reader's work, on the same CPUs, on the calls that log (GetToken
// writes an audit line; the health checks write none). The file is
// emptied when it passes logLimit, so a long run does not fill the disk.
const logLimit = 64 << 20

// startServer runs bin with args (which must make it listen on port 0)
// and waits for its "tokenvend serving" log line, which names the
// addresses it listens on.
func startServer(bin string, args ...string) (*server, error) {
	return startServerEnv(nil, bin, args...)
}

// startServerEnv is startServer with env ("KEY=value") added to the
// server's environment.
func startServerEnv(env []string, bin string, args ...string) (*server, error) {
	log, err := os.CreateTemp("", "tokenvend-bench-*.log")
	if err != nil {
		return nil, err
	}
	// The server appends: when the harness empties the file, its next
	// line goes at the start, not after a hole.
	stderr, err := os.OpenFile(log.Name(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		log.Close()
		os.Remove(log.Name())
		return nil, err
	}
	defer stderr.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "OTEL_TRACES_EXPORTER="), env...) // as `make run`: no tracing
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		log.Close()
		os.Remove(log.Name())
		return nil, err
	}
	s := &server{cmd: cmd, exited: make(chan struct{}), log: log, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	go s.bound()

	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if l, ok := s.serving(); ok {
			s.grpcAddr, s.httpAddr, s.proxyAddr, s.upstreams = l.GRPCAddr, l.HTTPAddr, l.ProxyAddr, l.upstreams
			return s, nil
		}
		select {
		case <-s.exited:
			defer s.cleanup()
			return nil, fmt.Errorf("%s %s exited before serving (%v):\n%s", bin, strings.Join(args, " "), s.waitErr, s.tail())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-s.exited
			defer s.cleanup()
			return nil, fmt.Errorf("%s %s did not start serving within 20s:\n%s", bin, strings.Join(args, " "), s.tail())
		case <-tick.C:
		}
	}
}

// servingLine is the "tokenvend serving" log line, with the demo's
// "demo upstream" lines before it.
type servingLine struct {
	GRPCAddr  string `json:"grpc_addr"`
	HTTPAddr  string `json:"http_addr"`
	ProxyAddr string `json:"proxy_addr"`
	upstreams map[string]string
}

// serving looks for the "tokenvend serving" line in the log so far.
func (s *server) serving() (servingLine, bool) {
	b, err := os.ReadFile(s.log.Name())
	if err != nil {
		return servingLine{}, false
	}
	upstreams := map[string]string{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec struct {
			servingLine
			Msg       string `json:"msg"`
			Provider  string `json:"provider"`
			Protected string `json:"protected_endpoint"`
		}
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		switch rec.Msg {
		case "demo upstream":
			upstreams[rec.Provider] = rec.Protected
		case "tokenvend serving":
			rec.servingLine.upstreams = upstreams
			return rec.servingLine, true
		}
	}
	return servingLine{}, false
}

// bound empties the log whenever it passes logLimit, until the server
// is cleaned up.
func (s *server) bound() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if fi, err := s.log.Stat(); err == nil && fi.Size() > logLimit {
				_ = s.log.Truncate(0)
			}
		}
	}
}

// tail is the end of the log, for errors.
func (s *server) tail() string {
	const max = 8 << 10
	fi, err := s.log.Stat()
	if err != nil {
		return err.Error()
	}
	b := make([]byte, min(fi.Size(), max))
	n, _ := s.log.ReadAt(b, fi.Size()-int64(len(b)))
	return string(bytes.TrimSpace(b[:n]))
}

// cleanup removes the log file.
func (s *server) cleanup() {
	s.cleaned.Do(func() {
		close(s.done)
		s.log.Close()
		os.Remove(s.log.Name())
	})
}

// pid is the server's process id.
func (s *server) pid() int { return s.cmd.Process.Pid }

// stop sends SIGTERM and waits for a graceful exit (killing it after 20s).
func (s *server) stop() error {
	defer s.cleanup()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("tokenvend did not stop within 20s of SIGTERM")
	}
	if s.waitErr != nil {
		return fmt.Errorf("tokenvend exited: %v\n%s", s.waitErr, s.tail())
	}
	return nil
}

// alive returns an error when the process has exited.
func (s *server) alive() error {
	select {
	case <-s.exited:
		return fmt.Errorf("tokenvend exited during the run (%v):\n%s", s.waitErr, s.tail())
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
