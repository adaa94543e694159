package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/vfs"
)

func failoverCommand() *command {
	var path string
	var dry, drill bool
	var discard string
	var hold time.Duration
	var epoch uint64
	var before, cgroup string
	c := &command{
		name:  "failover",
		short: "bring VMs up at the DR site from their replicas, by a runbook",
		args:  "--runbook FILE [--dry-run | --drill [--hold DURATION]] [--epoch N | --before TIME] [--consistency-group NAME] [--discard-dr-writes VM[,VM...]]",
		summary: `Run a failover runbook at the DR site: hooks before (fence the failed
site), then the VMs group by group, each resumed from its replica's last
committed epoch with its memory (no reboot) and checked healthy before the
next group starts, then hooks after (switch DNS). Every replica is checked
before anything starts. A taken-over replica refuses further epochs from
its sender. A run interrupted halfway continues where it stopped when run
again: the run log (log = ..., default <work_dir>/run.log) says what is done.
--dry-run prints the plan and checks every replica, starting nothing.
The started VMs keep running after drsync exits.

--epoch N or --before TIME resume a retained recovery point (receiver
option keep_points) instead of the newest epoch, e.g. after corruption was
replicated; the point is rebuilt in the work directory.

After a failover the VM's disk overlays (<work_dir>/<vm>/disk-*.qcow2) hold
what it wrote at the DR site: no run deletes them. When the VM is gone
and its overlays hold writes, a run boots it cold from them (no memory
state: the replica's older memory is not loaded over newer disks). A run
refuses while a QEMU holds them, or when --epoch/--before asks for another
point than the one the VM runs or ran from. --discard-dr-writes VM[,VM...] starts
the VMs it names over from their replicas: each one's work directory is
moved aside to <work_dir>/_discarded/<vm>-<time>, not deleted; refused
while the VM runs.

--drill tests the runbook without a disaster: each VM starts from a copy
of its replica's committed epoch (the replica is not touched and
replication goes on), without its NICs and without hooks; the checks run,
then the VMs are stopped and the copies removed.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&path, "runbook", "", "runbook file (required)")
			set.BoolVar(&dry, "dry-run", false, "print the plan and check the replicas; start nothing")
			set.BoolVar(&drill, "drill", false, "DR test: start isolated copies, check them, tear them down")
			set.DurationVar(&hold, "hold", 0, "with --drill: keep the VMs up this long after their checks (or until interrupted)")
			set.Uint64Var(&epoch, "epoch", 0, "resume this retained recovery point instead of the newest epoch")
			set.StringVar(&before, "before", "", "resume the newest recovery point cut before TIME (RFC 3339, e.g. 2026-11-22T08:00:00Z)")
			set.StringVar(&cgroup, "consistency-group", "", "resume this consistency group's members from its newest complete group point (with --before: the newest cut before TIME)")
			set.StringVar(&discard, "discard-dr-writes", "", "start these VMs (comma-separated) over from their replicas; what they wrote at the DR site is moved aside")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if path == "" {
			return usagef("--runbook is required")
		}
		if dry && drill {
			return usagef("--dry-run and --drill exclude each other")
		}
		var discardVMs []string
		for _, name := range strings.Split(discard, ",") {
			if name = strings.TrimSpace(name); name != "" {
				discardVMs = append(discardVMs, name)
			}
		}
		if discard != "" && drill {
			return usagef("--discard-dr-writes and --drill exclude each other (a drill never touches a failover's overlays)")
		}
		rb, logPath, err := loadRunbook(path)
		if err != nil {
			return err
		}
		if epoch != 0 && before != "" {
			return usagef("--epoch and --before exclude each other")
		}
		if before != "" {
			t, err := time.Parse(time.RFC3339, before)
			if err != nil {
				return usagef("--before %q: want RFC 3339 time, e.g. 2026-11-22T08:00:00Z", before)
			}
			rb.Before = t
		}
		rb.Epoch = epoch
		if err := rb.PinConsistencyGroupIn(cgroup, e.stdout, e.now()); err != nil {
			return err
		}
		if drill {
			// A drill starts afresh every time; its log is its own.
			rb.Drill = true
			logPath = filepath.Join(rb.WorkDir, "drill.log")
			os.Remove(logPath)
		}
		if err := os.MkdirAll(filepath.Dir(logPath), 0o750); err != nil {
			return err
		}
		log, err := runbook.OpenLog(logPath)
		if err != nil {
			return err
		}
		defer log.Close()
		if hold != 0 && !drill {
			return usagef("--hold goes with --drill")
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = runbook.Run(ctx, rb, log, runbook.QEMUEnv{Out: e.stderr}, runbook.Options{DryRun: dry, Hold: hold, Out: e.stdout, Now: e.now, DiscardDRWrites: discardVMs})
		if drill && (err == nil || ctx.Err() == nil) {
			// The receiver exports the outcome, so that a failed drill alerts;
			// an interrupted one proves nothing either way.
			if werr := runbook.WriteDrillResults(vfs.Default, rb.Replicas, runbook.DrillOutcomes(rb, log, err, e.now())); werr != nil {
				fmt.Fprintf(e.stderr, "drsync failover: drill result not recorded: %v\n", werr)
			}
		}
		return err
	}
	return c
}
