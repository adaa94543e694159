package livecut

import (
	"path"
	"slices"
	"strings"
)

// observed is what a QMP session finds in QEMU when it starts.
type observed struct {
	Status    string // query-status
	Migration string // query-migrate status, "" if none ran
	Exports   []string
	Jobs      []string
	Nodes     []string
	// Bitmaps lists the dirty bitmaps of the disks livecut replicates.
	Bitmaps []observedBitmap
	Files   []string // names in the work directory
	// CutInFlight: the cut marker exists, so a predecessor died during a cut.
	CutInFlight bool
	// CutStopped: and its mark says it stopped the guest itself.
	CutStopped bool
}

type observedBitmap struct {
	Node, Name string
	Recording  bool
}

// step is one QMP command, or the removal of a work file (Cmd "").
type step struct {
	Cmd  string
	Args map[string]any
	File string
	// WaitGone names the job or export whose disappearance the step waits for.
	WaitGone string
}

// migrationActive lists migration states in which a migration is running.
var migrationActive = []string{"setup", "active", "pre-switchover", "device", "wait-unplug", "postcopy-active", "postcopy-paused", "postcopy-recover"}

// planCleanup decides how to remove what a killed predecessor left behind.
// keep is the one bitmap to spare (the chain the state file continues), if
// it is still recording on every disk; keepOK reports whether it was kept.
// The guest is resumed first, since every millisecond it stays paused is
// downtime for the protected VM.
func planCleanup(o observed, disks []string, keep string) (steps []step, keepOK bool) {
	// A migration runs for a cut only while its mark exists: one without
	// the mark is someone else's (an operator's own), and left alone.
	if o.CutInFlight && slices.Contains(migrationActive, o.Migration) {
		steps = append(steps, step{Cmd: "migrate_cancel"})
	}
	if resumeAfterKilledCut(o) || o.CutInFlight && o.CutStopped && o.Status == "paused" {
		// Stopped by our cut's migration, whose cont never came. Without
		// the cut marker a completed migration may be the operator's, and
		// its source must stay stopped. A cut that stopped the guest
		// itself marked so: its guest is resumed whatever became of the
		// migration (cancelled just above if it still ran).
		steps = append(steps, step{Cmd: "cont"})
	}
	for _, id := range o.Exports {
		if ours(id) {
			steps = append(steps, step{Cmd: "block-export-del", Args: map[string]any{"id": id, "mode": "hard"}, WaitGone: id})
		}
	}
	for _, id := range o.Jobs {
		if ours(id) {
			steps = append(steps, step{Cmd: "block-job-cancel", Args: map[string]any{"device": id, "force": true}, WaitGone: id})
		}
	}
	for _, n := range o.Nodes {
		if ours(n) {
			steps = append(steps, step{Cmd: "blockdev-del", Args: map[string]any{"node-name": n}})
		}
	}
	keepOK = keep != ""
	if keepOK {
		for _, d := range disks {
			if !slices.ContainsFunc(o.Bitmaps, func(b observedBitmap) bool { return b.Node == d && b.Name == keep && b.Recording }) {
				keepOK = false
			}
		}
	}
	for _, b := range o.Bitmaps {
		if !ours(b.Name) || keepOK && b.Name == keep {
			continue
		}
		steps = append(steps, step{Cmd: "block-dirty-bitmap-remove", Args: map[string]any{"node": b.Node, "name": b.Name}})
	}
	for _, f := range o.Files {
		if strings.HasPrefix(f, "fleece-") && path.Ext(f) == ".qcow2" || f == cutMarkerFile {
			steps = append(steps, step{File: f})
		}
	}
	return steps, keepOK
}
