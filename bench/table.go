package main

import (
	"fmt"
	"io"
	"slices"
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
// and the latency percentiles. minRatio and maxP99 are the goals (0:
// none).
func (t *table) pair(n, title string, call, floor result, p50 bool, minRatio, maxP99 float64) {
	ratio := call.rps / floor.rps
	t.row(n, title+": requests/s", rate(call), rate(floor), fmt.Sprintf("%.2fx", ratio), goal(minRatio > 0, ratio >= minRatio, fmt.Sprintf(">= %gx", minRatio)))
	if p50 {
		t.row(n, "... p50 latency", ms(call.p50), ms(floor.p50), fmt.Sprintf("%.2fx", call.p50.Seconds()/floor.p50.Seconds()), "")
	}
	p99 := call.p99.Seconds() / floor.p99.Seconds()
	t.row(n, "... p99 latency", ms(call.p99), ms(floor.p99), fmt.Sprintf("%.2fx", p99), goal(maxP99 > 0, p99 <= maxP99, fmt.Sprintf("<= %.1fx", maxP99)))
	cpu := call.cpuPerCall.Seconds() / floor.cpuPerCall.Seconds()
	t.row(n, "... server CPU per call", us(call.cpuPerCall), us(floor.cpuPerCall), fmt.Sprintf("%.2fx", cpu), "")
	t.row(n, "... load generator CPU per call (same machine)", us(call.loadCPUPerCall), us(floor.loadCPUPerCall),
		fmt.Sprintf("%.2fx", call.loadCPUPerCall.Seconds()/floor.loadCPUPerCall.Seconds()), "")
	for _, r := range []struct {
		what string
		res  result
	}{{"call", call}, {"floor", floor}} {
		if r.res.failed > 0 {
			t.row(n, fmt.Sprintf("... FAILED %s calls (first: %s)", r.what, r.res.firstFailure), fmt.Sprint(r.res.failed), "", "", "no failures: MISSED")
		}
	}
}

func (t *table) cold(r coldResult) {
	what := fmt.Sprintf("cold key, %s caller(s) at once: upstream logins; last answer after", thousands(r.callers))
	got := fmt.Sprintf("%.0f; %s", r.logins, ms(r.last))
	if r.failed > 0 {
		got += fmt.Sprintf("; %d FAILED (%s)", r.failed, r.err)
	}
	t.row("4", what, got, "", "", goal(true, r.logins == 1 && r.failed == 0, "1 login"))
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

// sort orders the rows by run number, keeping each run's rows in order.
func (t *table) sort() {
	slices.SortStableFunc(t.rows, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	slices.Sort(t.notes)
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
