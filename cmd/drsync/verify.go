package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
)

// lockPoll is how often verify retries a replica locked by an epoch being
// applied.
const lockPoll = 250 * time.Millisecond

func verifyCommand() *command {
	var dir string
	var asJSON bool
	var wait time.Duration
	c := &command{
		name:  "verify",
		short: "check that a replica is exactly its last committed epoch",
		args:  "--replica DIR [--json] [--wait DURATION]",
		summary: `Check that a replica is exactly its last committed epoch: recompute the
hash of every block of every image and compare with the block tables and
the manifest, and check the device state and the journal. Changes nothing.
DIR is one VM's replica directory, <storage dir>/<vm>; one where nothing is
committed yet passes as epoch 0. Exits 3 if anything
does not match, 5 if the replica stayed locked (an epoch being applied)
for longer than --wait.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&dir, "replica", "", "replica directory of one VM (required)")
			set.BoolVar(&asJSON, "json", false, "print the report as JSON")
			set.DurationVar(&wait, "wait", 30*time.Second, "how long to keep retrying while the replica is locked")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if dir == "" {
			return usagef("--replica is required")
		}
		if wait < 0 {
			return usagef("--wait %s: must not be negative", wait)
		}
		rep, err := verifyReplica(ctx, dir, wait)
		if asJSON {
			v := newVerifyView(dir, rep, err)
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			if jerr := enc.Encode(v); jerr != nil && err == nil {
				err = jerr
			}
		} else if rep != nil {
			printVerifyReport(e.stdout, dir, rep)
		}
		if err != nil {
			return err
		}
		if !rep.OK() {
			return fmt.Errorf("%w: %d problem(s) in %s", errMismatch, len(rep.Problems), dir)
		}
		return nil
	}
	return c
}

// verifyReplica runs replica.Verify, retrying for up to wait while the
// replica is locked.
func verifyReplica(ctx context.Context, dir string, wait time.Duration) (*replica.Report, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, usagef("--replica %s: %v", dir, err)
	}
	if !st.IsDir() {
		return nil, usagef("--replica %s: not a directory; give <storage dir>/<vm>", dir)
	}
	// Checked here so that verify never leaves a lock file in a directory
	// that is not a replica: the receiver creates LOCK when it first opens
	// a replica, MANIFEST when it commits the first epoch.
	if !exists(filepath.Join(dir, manifestFile)) && !exists(filepath.Join(dir, replicaLockName)) {
		return nil, fmt.Errorf("%s is not a replica directory (no %s, no %s); give <storage dir>/<vm>", dir, manifestFile, replicaLockName)
	}
	deadline := time.Now().Add(wait)
	for {
		rep, err := replica.Verify(vfs.Default, dir, "")
		if err == nil {
			return rep, nil
		}
		left := time.Until(deadline)
		if !errors.Is(err, replica.ErrLocked) {
			if !exists(filepath.Join(dir, manifestFile)) && !errors.Is(err, replica.ErrStorage) {
				return emptyReport(dir), nil
			}
			return nil, fmt.Errorf("verify %s: %w", dir, err)
		}
		if left <= 0 {
			return nil, fmt.Errorf("%w; the replica stayed in use for %s: retry later or raise --wait", err, wait)
		}
		if agent.SleepCtx(ctx, min(lockPoll, left)) != nil {
			return nil, err
		}
	}
}

// Replica files verify looks at besides the manifest (package replica
// keeps their names to itself).
const (
	replicaLockName    = "LOCK"
	replicaJournalName = "journal"
)

// emptyReport describes a replica the receiver has set up but where no
// epoch is committed yet: trivially exactly its (empty) epoch 0.
func emptyReport(dir string) *replica.Report {
	rep := &replica.Report{VM: filepath.Base(dir)}
	if exists(filepath.Join(dir, replicaJournalName)) {
		rep.Staged = "epoch 1 is being staged (not committed)"
	}
	return rep
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

func printVerifyReport(w io.Writer, dir string, rep *replica.Report) {
	fmt.Fprintf(w, "Replica %s: VM %s, epoch %d\n", dir, rep.VM, rep.Epoch)
	if rep.Epoch == 0 && len(rep.Targets) == 0 {
		if rep.Staged != "" {
			fmt.Fprintf(w, "  journal  NOTE  %s\n", rep.Staged)
		}
		fmt.Fprintln(w, "Result: OK, nothing committed yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range rep.Targets {
		if t.OK {
			fmt.Fprintf(tw, "  %s %s\tOK\t%s, digest %016x\n", t.Kind, t.Name, formatBytes(uint64(t.Size)), t.Digest)
			continue
		}
		detail := "see problems below"
		if t.BadCount > 0 {
			detail = fmt.Sprintf("%d block(s) differ, first %s", t.BadCount, joinInts(t.BadBlocks))
		}
		fmt.Fprintf(tw, "  %s %s\tMISMATCH\t%s\n", t.Kind, t.Name, detail)
	}
	if d := rep.DeviceState; d != nil {
		state := "MISMATCH"
		if d.OK {
			state = "OK"
		}
		fmt.Fprintf(tw, "  device state\t%s\t%s\n", state, d.File)
	} else {
		fmt.Fprintf(tw, "  device state\t-\tnone in this epoch\n")
	}
	if rep.Staged != "" {
		fmt.Fprintf(tw, "  journal\tNOTE\t%s\n", rep.Staged)
	}
	tw.Flush()
	if rep.OK() {
		fmt.Fprintln(w, "Result: OK, the replica is exactly its committed epoch")
		return
	}
	fmt.Fprintln(w, "Problems:")
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
	fmt.Fprintf(w, "Result: %d problem(s)\n", len(rep.Problems))
}

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

// verifyView is the JSON form of a verify run.
type verifyView struct {
	Replica     string       `json:"replica"`
	OK          bool         `json:"ok"`
	Error       string       `json:"error,omitempty"`
	VM          string       `json:"vm,omitempty"`
	Epoch       uint64       `json:"epoch"`
	Targets     []targetView `json:"targets,omitempty"`
	DeviceState *deviceView  `json:"device_state,omitempty"`
	Staged      string       `json:"staged,omitempty"`
	Problems    []string     `json:"problems,omitempty"`
}

type targetView struct {
	Kind     string  `json:"kind"`
	Name     string  `json:"name"`
	Size     int64   `json:"size"`
	Digest   string  `json:"digest"`
	OK       bool    `json:"ok"`
	BadCount int64   `json:"bad_blocks,omitempty"`
	FirstBad []int64 `json:"first_bad_blocks,omitempty"`
}

type deviceView struct {
	File string `json:"file"`
	OK   bool   `json:"ok"`
}

func newVerifyView(dir string, rep *replica.Report, err error) verifyView {
	v := verifyView{Replica: dir}
	if err != nil {
		v.Error = err.Error()
	}
	if rep == nil {
		return v
	}
	v.OK = err == nil && rep.OK()
	v.VM, v.Epoch, v.Staged, v.Problems = rep.VM, rep.Epoch, rep.Staged, rep.Problems
	for _, t := range rep.Targets {
		v.Targets = append(v.Targets, targetView{Kind: t.Kind, Name: t.Name, Size: t.Size, Digest: fmt.Sprintf("%016x", t.Digest), OK: t.OK, BadCount: t.BadCount, FirstBad: t.BadBlocks})
	}
	if d := rep.DeviceState; d != nil {
		v.DeviceState = &deviceView{File: d.File, OK: d.OK}
	}
	return v
}
