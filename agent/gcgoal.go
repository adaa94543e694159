package agent

import "runtime/debug"

// GCPercent is a sender's collector goal: the heap may grow by a quarter
// of its live size between collections, not by all of it (Go's default).
// A sender's heap is mostly long-lived (block tables, pooled buffers) and
// grows slowly, so collections are cheap and seldom either way (a GC trace
// at 50 showed one every 4 to 8 s, each under 2 ms of CPU), while the
// headroom shows as resident memory per VM: 8 guests of 512 MiB held
// 180 MiB at 50 and 162 MiB at 25.
const GCPercent = 25

// CollectorGoal is the collector goal a sender process should set, if any
// (runtime/debug.SetGCPercent): GOGC in the environment, read through
// lookup, is the operator's and wins.
func CollectorGoal(lookup func(string) (string, bool)) (int, bool) {
	if _, ok := lookup("GOGC"); ok {
		return 0, false
	}
	return GCPercent, true
}

// SetCollectorGoal sets the goal CollectorGoal gives, if any.
func SetCollectorGoal(lookup func(string) (string, bool)) {
	if pct, ok := CollectorGoal(lookup); ok {
		debug.SetGCPercent(pct)
	}
}
