package main

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	// Not parallel: the GC percent is the process's.
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })

	env := map[string]string{}
	if !tuneGC(func(k string) string { return env[k] }) {
		t.Fatal("GOGC unset: tuneGC did nothing")
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("GOGC unset: GC percent %d, want %d", got, gcPercent)
	}

	env["GOGC"] = "50" // the runtime has applied it; tuneGC must leave it
	if tuneGC(func(k string) string { return env[k] }) {
		t.Fatal("GOGC=50: tuneGC overrode it")
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC=50: GC percent changed to %d", got)
	}
}
