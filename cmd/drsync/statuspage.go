package main

import (
	"path/filepath"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/vfs"
)

// The status page beside the metrics reads what "drsync status" reads, the
// status files and the replicas, so it needs nothing from the daemons'
// loops and shows the same truth as the command.

// pageSampleEvery is how often the page samples each VM's lag, whether or
// not anyone looks: often enough to catch the peak before each commit.
const pageSampleEvery = 10 * time.Second

// senderPage is the status page of a sender replicating vms.
func senderPage(e *env, cfg *SenderConfig, vms []*VMConfig) *statuspage.Handler {
	sel := *cfg
	sel.VMs = make([]VMConfig, len(vms))
	for i, v := range vms {
		sel.VMs[i] = *v
	}
	src := statuspage.SourceFunc(func(now time.Time) statuspage.Page { return senderPageOf(&sel, now) })
	return statuspage.New(src, statuspage.Options{Now: e.now})
}

// receiverPage is the status page of a receiver.
func receiverPage(e *env, cfg *ReceiverConfig) *statuspage.Handler {
	src := statuspage.SourceFunc(func(now time.Time) statuspage.Page { return receiverPageOf(cfg, now) })
	return statuspage.New(src, statuspage.Options{Now: e.now})
}

// senderPageOf is the sender's page at now, from each VM's status.json.
func senderPageOf(cfg *SenderConfig, now time.Time) statuspage.Page {
	rows, _ := senderStatuses(cfg, now) // a row says what it could not read
	p := statuspage.Page{Role: "sender"}
	for i, r := range rows {
		v := statuspage.VM{Name: r.VM, Epoch: r.Epoch, Cut: r.Cut, RPOTarget: cfg.VMs[i].RPOTarget.D()}
		switch {
		case r.ConsecutiveFailures == nil:
			v.LastError = r.LastError // the status file is unreadable
		case *r.ConsecutiveFailures > 0:
			// With none since the last commit, the last error is history.
			v.Failures, v.LastError = *r.ConsecutiveFailures, r.LastError
		}
		if g := r.GuestPause; g != nil {
			v.LastPause = time.Duration(g.LastMS * float64(time.Millisecond))
		}
		if f := r.Flow; f != nil {
			v.Goodput = f.GoodputBytesPerSecond
			v.BreachPredicted = f.BreachPredicted
			if f.RPOTargetSeconds > 0 {
				v.RPOTarget = time.Duration(f.RPOTargetSeconds * float64(time.Second))
			}
		}
		if g := r.Guest; g != nil && g.Paused {
			v.GuestPaused, v.PausedSince = g.Detail, g.Since
			if v.GuestPaused == "" {
				v.GuestPaused = "paused"
			}
		}
		p.VMs = append(p.VMs, v)
	}
	return p
}

// receiverPageOf is the receiver's page at now, from each replica's
// manifest, recovery points, STATUS.json and DRILL.json.
func receiverPageOf(cfg *ReceiverConfig, now time.Time) statuspage.Page {
	rows, _ := receiverStatuses(cfg, now) // a row says what it could not read
	p := statuspage.Page{Role: "receiver"}
	for _, r := range rows {
		v := statuspage.VM{Name: r.VM, Epoch: r.Epoch, Cut: r.Cut, LastError: r.LastError}
		dir := cfg.replicaDir(r.VM)
		if pts, err := replica.Points(vfs.Default, dir); err == nil {
			v.Points = len(pts)
		}
		if d, err := runbook.ReadDrillResult(vfs.Default, filepath.Join(dir, runbook.DrillResultFile)); err == nil {
			v.Drill = &statuspage.Drill{Epoch: d.Epoch, At: d.At, OK: d.OK, Detail: d.Detail}
		}
		p.VMs = append(p.VMs, v)
	}
	p.ConsistencyGroups, _ = replica.NewestGroupPoints(vfs.Default, cfg.Storage.Dir, cfg.vmNames())
	return p
}
