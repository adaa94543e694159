package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/statusreport"
	"github.com/drsync/drsync/vfs"
)

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
		if st, err := os.Stat(dir); err != nil {
			return usagef("--replica %s: %v", dir, err)
		} else if !st.IsDir() {
			return usagef("--replica %s: not a directory; give <storage dir>/<vm>", dir)
		}
		rep, err := statusreport.Verify(ctx, replica.DirStore(vfs.Default, dir), wait)
		if asJSON {
			if jerr := statusreport.WriteJSON(e.stdout, statusreport.NewVerifyView(dir, rep, err)); jerr != nil && err == nil {
				err = jerr
			}
		} else if rep != nil {
			statusreport.WriteVerify(e.stdout, dir, rep)
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
