package main

import "runtime/debug"

// gcPercent is tokenvend's garbage collection target unless GOGC says
// otherwise. Its live heap is a few MiB, and Go's default (100) collects
// whenever as much again has been allocated: under load, dozens of times a
// second, which was 30% of the server's CPU per call in `make bench`. At
// 400 the collector runs a quarter as often for about 13 MiB more resident
// memory; a deployment bounds the heap with GOMEMLIMIT (deploy/ sets it
// under the container's memory limit).
const gcPercent = 400

// tuneGC applies gcPercent when GOGC is unset, and reports whether it did.
func tuneGC(getenv func(string) string) bool {
	if getenv("GOGC") != "" {
		return false
	}
	debug.SetGCPercent(gcPercent)
	return true
}
