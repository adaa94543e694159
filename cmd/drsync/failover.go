package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"

	"github.com/drsync/drsync/runbook"
)

func failoverCommand() *command {
	var path string
	var dry bool
	c := &command{
		name:  "failover",
		short: "bring VMs up at the DR site from their replicas, by a runbook",
		args:  "--runbook FILE [--dry-run]",
		summary: `Run a failover runbook at the DR site: hooks before (fence the failed
site), then the VMs group by group, each resumed from its replica's last
committed epoch with its memory (no reboot) and checked healthy before the
next group starts, then hooks after (switch DNS). Every replica is checked
before anything starts. A taken-over replica refuses further epochs from
its sender. A run interrupted halfway continues where it stopped when run
again: the run log (log = ..., default <work_dir>/run.log) says what is done.
--dry-run prints the plan and checks every replica, starting nothing.
The started VMs keep running after drsync exits.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&path, "runbook", "", "runbook file (required)")
			set.BoolVar(&dry, "dry-run", false, "print the plan and check the replicas; start nothing")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if path == "" {
			return usagef("--runbook is required")
		}
		rb, logPath, err := loadRunbook(path)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(logPath), 0o750); err != nil {
			return err
		}
		log, err := runbook.OpenLog(logPath)
		if err != nil {
			return err
		}
		defer log.Close()
		return runbook.Run(ctx, rb, log, runbook.QEMUEnv{Out: e.stderr}, runbook.Options{DryRun: dry, Out: e.stdout, Now: e.now})
	}
	return c
}
