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
	var dir, configPath, vm string
	var asJSON bool
	var wait time.Duration
	c := &command{
		name:  "verify",
		short: "check that a replica is exactly its last committed epoch",
		args:  "(--replica DIR | --config FILE --vm NAME) [--json] [--wait DURATION]",
		summary: `Check that a replica is exactly its last committed epoch (every block's
hash against the block tables and manifest, device state, journal); changes
nothing. DIR is <storage dir>/<vm>; --config verifies VM NAME's replica in a
receiver's storage (files or a Ceph pool). Exits 3 on any mismatch, 5 if the
replica stayed locked (an epoch being applied) for longer than --wait.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&dir, "replica", "", "replica directory of one VM")
			set.StringVar(&configPath, "config", "", "receiver configuration whose storage holds the replica of --vm")
			set.StringVar(&vm, "vm", "", "with --config: the VM whose replica to verify")
			set.BoolVar(&asJSON, "json", false, "print the report as JSON")
			set.DurationVar(&wait, "wait", 30*time.Second, "how long to keep retrying while the replica is locked")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if wait < 0 {
			return usagef("--wait %s: must not be negative", wait)
		}
		var store replica.Store = replica.DirStore(vfs.Default, dir)
		switch {
		case configPath != "" && vm != "" && dir == "":
			cfg, err := loadReceiverConfig(configPath)
			if err != nil {
				return err
			}
			s, closeStore, err := cfg.Storage.OpenStore(cfg.Storage.Dir, nil)
			if err != nil {
				return err
			}
			defer closeStore()
			store, dir = s, s.Where(vm)
		case dir == "" || configPath != "" || vm != "":
			return usagef("--replica DIR is required, or --config FILE and --vm NAME")
		default:
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return usagef("--replica %s: not a replica directory (<storage dir>/<vm>): %v", dir, err)
			}
		}
		rep, err := statusreport.Verify(ctx, store, vm, wait)
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
