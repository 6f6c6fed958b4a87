package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// table is the one table the bench prints: a markdown table whose
// columns are also aligned for reading as text.
type table struct {
	rows  [][]string
	notes []string
}

var header = []string{"#", "measurement", "tokenvend", "baseline", "ratio", "goal"}

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

// note adds a line printed under the table.
func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

// pair adds the rows of a call measured against its floor: throughput,
// the latency percentiles and the CPU per call. minRatio, maxP99 and
// maxCPU are the goals (0: none).
func (t *table) pair(n, title string, call, floor result, p50 bool, minRatio, maxP99, maxCPU float64) {
	ratio := call.rps / floor.rps
	t.row(n, title+": requests/s", rate(call), rate(floor), fmt.Sprintf("%.2fx", ratio), goal(minRatio > 0, ratio >= minRatio, fmt.Sprintf(">= %gx", minRatio)))
	if p50 {
		t.row(n, "... p50 latency", ms(call.p50), ms(floor.p50), fmt.Sprintf("%.2fx", call.p50.Seconds()/floor.p50.Seconds()), "")
	}
	p99 := call.p99.Seconds() / floor.p99.Seconds()
	t.row(n, "... p99 latency", ms(call.p99), ms(floor.p99), fmt.Sprintf("%.2fx", p99), goal(maxP99 > 0, p99 <= maxP99, fmt.Sprintf("<= %.1fx", maxP99)))
	cpu := call.cpuPerCall.Seconds() / floor.cpuPerCall.Seconds()
	t.row(n, "... server CPU per call", us(call.cpuPerCall), us(floor.cpuPerCall), fmt.Sprintf("%.2fx", cpu), goal(maxCPU > 0, cpu <= maxCPU, fmt.Sprintf("<= %.1fx", maxCPU)))
	t.row(n, "... load generator CPU per call (same machine)", us(call.loadCPUPerCall), us(floor.loadCPUPerCall),
		fmt.Sprintf("%.2fx", call.loadCPUPerCall.Seconds()/floor.loadCPUPerCall.Seconds()), "")
	t.failures(n, call, floor)
}

// cold adds the row of a cold-start burst (run n): the goal is one
// login per key and no failure.
func (t *table) cold(n string, r coldResult) {
	what := fmt.Sprintf("cold key, %s caller(s) at once: upstream logins; last answer after", thousands(r.callers))
	want := "1 login"
	if r.keys > 1 {
		what = fmt.Sprintf("%s cold keys, %s callers at once: upstream logins; last answer after", thousands(r.keys), thousands(r.callers))
		want = thousands(r.keys) + " logins (1 per key)"
	}
	got := fmt.Sprintf("%.0f; %s", r.logins, ms(r.last))
	if r.failed > 0 {
		got += fmt.Sprintf("; %d FAILED (%s)", r.failed, r.err)
	}
	t.row(n, what, got, "0; "+ms(r.warm), fmt.Sprintf("%.2fx", r.last.Seconds()/r.warm.Seconds()), goal(true, r.met(), want))
}

func (t *table) expiry(e expiryResult) {
	p99 := e.across.p99.Seconds() / e.outside.p99.Seconds()
	t.row("5", "gRPC GetToken(kyc) p99 across the refresh point vs away from it",
		ms(e.across.p99), ms(e.outside.p99), fmt.Sprintf("%.2fx", p99), goal(true, p99 <= 1.2, "no difference (<= 1.2x)"))
	t.row("5", "... max latency", ms(e.across.max), ms(e.outside.max), fmt.Sprintf("%.2fx", e.across.max.Seconds()/e.outside.max.Seconds()), "")
	t.row("5", "... upstream logins (the refresh); callers that waited",
		fmt.Sprintf("%.0f; %.0f", e.refreshes, e.waited), fmt.Sprintf("%.0f; 0", e.outsideLogins), "",
		goal(true, e.refreshes >= 1 && e.waited == 0, "refresh in window; 0 waited"))
	t.note("5: token lifetime %s via %s; %d callers; a %s window centred on the refresh point (half the lifetime) vs two windows as long away from it, one right after the login and one right after the first.",
		e.lifetime, e.how, e.concurrency, e.across.measuredWindow.Round(100*time.Millisecond))
	for _, r := range []result{e.across, e.outside} {
		if r.failed > 0 {
			t.row("5", fmt.Sprintf("... FAILED calls (first: %s)", r.firstFailure), fmt.Sprint(r.failed), "", "", "no failures: MISSED")
		}
	}
}

// sort orders the rows by run number (as numbers: 10 after 9), keeping
// each run's rows in order, and the notes likewise.
func (t *table) sort() {
	slices.SortStableFunc(t.rows, func(a, b []string) int { return byRun(a[0], b[0]) })
	slices.SortStableFunc(t.notes, byRun)
}

// byRun compares two strings that start with a run number ("10", "7: a
// note") by that number, then as text.
func byRun(a, b string) int {
	if c := cmp.Compare(runNumber(a), runNumber(b)); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

// runNumber is the number s starts with (0 if none).
func runNumber(s string) int {
	end := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(s)
	}
	n, _ := strconv.Atoi(s[:end])
	return n
}

func (t *table) write(w io.Writer) {
	width := make([]int, len(header))
	for _, r := range append([][]string{header}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i := range header {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i >= 2 && i <= 4 { // numbers: right-aligned
				fmt.Fprintf(&b, " %s%s |", pad, c)
			} else {
				fmt.Fprintf(&b, " %s%s |", c, pad)
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(header)
	sep := make([]string, len(header))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
		if i >= 2 && i <= 4 {
			sep[i] = sep[i][1:] + ":"
		}
	}
	line(sep)
	for _, r := range t.rows {
		line(r)
	}
	if len(t.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range t.notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
}

func goal(has, met bool, what string) string {
	switch {
	case !has:
		return ""
	case met:
		return what + ": met"
	default:
		return what + ": MISSED"
	}
}

func rate(r result) string { return thousands(int(r.rps+0.5)) + "/s" }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", d.Seconds()*1e3) }

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", d.Seconds()*1e6) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// step adds run 7's rows for one number of concurrent callers.
func (t *table) step(callers int, call, floor result) {
	ratio := func(a, b float64) string { return fmt.Sprintf("%.2fx", a/b) }
	t.row("7", fmt.Sprintf("%s concurrent caller(s): GetToken(kyc) vs Health/Check, requests/s", thousands(callers)),
		rate(call), rate(floor), ratio(call.rps, floor.rps), "")
	t.row("7", "... p99 latency", ms(call.p99), ms(floor.p99), ratio(call.p99.Seconds(), floor.p99.Seconds()), "")
	t.row("7", "... server CPU per call", us(call.cpuPerCall), us(floor.cpuPerCall), ratio(call.cpuPerCall.Seconds(), floor.cpuPerCall.Seconds()), "")
	t.failures("7", call, floor)
}

// failures adds a row for each side of a pair that had failed calls.
func (t *table) failures(n string, call, floor result) {
	for _, r := range []struct {
		what string
		res  result
	}{{"call", call}, {"floor", floor}} {
		if r.res.failed > 0 {
			t.row(n, fmt.Sprintf("... FAILED %s calls (first: %s)", r.what, r.res.firstFailure), fmt.Sprint(r.res.failed), "", "", "no failures: MISSED")
		}
	}
}

// growthRows add the rows of footprints before and after count things
// (run 8: connections, run 9: keys), on the server as deployed and on the
// lean one (leanGC); the ratio column is the growth per thing. Stacks
// are shown where the things have goroutines of their own (connections);
// for keys they would show only how many calls ran at once.
func (t *table) growthRows(n, title, per string, count int, deployed, lean [2]footprint, stacks bool) {
	g, l := deployed[1].since(deployed[0], count), lean[1].since(lean[0], count)
	t.row(n, title+": server VmRSS", mib(deployed[1].rss), mib(deployed[0].rss), fmt.Sprintf("%+.1f KiB per %s", g.rss/1024, per), "")
	t.row(n, "... VmRSS, "+leanGC, mib(lean[1].rss), mib(lean[0].rss), fmt.Sprintf("%+.1f KiB per %s", l.rss/1024, per), "")
	t.row(n, "... Go heap in use, "+leanGC, mib(int64(lean[1].heap)), mib(int64(lean[0].heap)), fmt.Sprintf("%+.1f KiB per %s", l.heap/1024, per), "")
	if stacks {
		t.row(n, "... goroutine stacks in use", mib(int64(deployed[1].stacks)), mib(int64(deployed[0].stacks)), fmt.Sprintf("%+.1f KiB per %s", g.stacks/1024, per), "")
	}
	t.row(n, "... goroutines", thousands(int(deployed[1].goroutines)), thousands(int(deployed[0].goroutines)), fmt.Sprintf("%+.2f per %s", g.goroutines, per), "")
}

func (t *table) idle(deployed, lean idleResult) {
	t.growthRows("8", thousands(deployed.conns)+" idle gRPC connections", "connection", deployed.conns,
		[2]footprint{deployed.before, deployed.after}, [2]footprint{lean.before, lean.after}, true)
	t.row("8", "... goroutines once they closed", thousands(int(deployed.closed.goroutines)), thousands(int(deployed.before.goroutines)), "",
		goal(true, deployed.settled && lean.settled, "back to the start"))
	t.note("8: a fresh demo process, measured with no gRPC connection, then with %s connections each opened by one Health/Check (%s to open them all, %d at a time) and left idle; again on a second demo with %s, whose heap in use is at most 10%% garbage (tokenvend's own GOGC is 400).",
		thousands(deployed.conns), deployed.dialled.Round(100*time.Millisecond), dialWorkers, leanGC)
}

func (t *table) keys(deployed, lean keysResult) {
	r := deployed
	t.growthRows("9", thousands(r.keys)+" cached keys (scopes of one insly provider)", "key", r.keys,
		[2]footprint{deployed.before, deployed.after}, [2]footprint{lean.before, lean.after}, false)
	t.row("9", "... upstream logins: to fill them; to ask for each again", fmt.Sprintf("%s; %s", thousands(int(r.fillLogins)), thousands(int(r.againLogins))), "", "",
		goal(true, deployed.met() && lean.met(), "1 per key, then 0"))
	t.row("9", "... time to fill them; to ask for each again", fmt.Sprintf("%.2f s; %.2f s", r.fill.Seconds(), r.again.Seconds()), "", "", "")
	t.row("9", "... TCP connections tokenvend opened to the upstream to fill them", thousands(int(r.upstreamConns)), "", "", "")
	t.row("9", fmt.Sprintf("cached GetToken, scope listed %s vs listed 1st: requests/s", ordinal(r.keys)), rate(r.last), rate(r.first), fmt.Sprintf("%.2fx", r.last.rps/r.first.rps), "")
	t.row("9", "... server CPU per call", us(r.last.cpuPerCall), us(r.first.cpuPerCall), fmt.Sprintf("%.2fx", r.last.cpuPerCall.Seconds()/r.first.cpuPerCall.Seconds()), "")
	t.failures("9", r.last, r.first)
	t.note("9: `tokenvend serve` with one insly client_credentials provider listing %s scopes, its upstream a stub in the harness answering ~1 KB tokens after %s; measured after the default scope's login, then after a GetToken of every scope (%d at a time); again on a second server with %s.",
		thousands(r.keys), stubLoginDelay, keyWorkers, leanGC)
}

// ordinal is "1st", "2nd", "10,000th".
func ordinal(n int) string {
	suffix := "th"
	if n%100 < 11 || n%100 > 13 {
		switch n % 10 {
		case 1:
			suffix = "st"
		case 2:
			suffix = "nd"
		case 3:
			suffix = "rd"
		}
	}
	return thousands(n) + suffix
}
