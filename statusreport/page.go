package statusreport

import (
	"time"

	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/statuspage"
	"github.com/drsync/drsync/vfs"
)

// The status page beside the metrics shows what "drsync status" shows, from
// the same rows, so it needs nothing from the daemons' loops.

// SenderPage is the sender's page at now, from each VM's status file.
func SenderPage(vms []SenderVM, now time.Time) statuspage.Page {
	rows, _ := Sender(vms, now) // a row says what it could not read
	p := statuspage.Page{Role: "sender"}
	for i, r := range rows {
		v := statuspage.VM{Name: r.VM, Epoch: r.Epoch, Cut: r.Cut, RPOTarget: vms[i].RPOTarget}
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
		if d := r.Domain; d != nil && d.Held {
			v.DomainHeld = d.Detail
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

// Page is the receiver's page at now, from each replica's manifest,
// recovery points, STATUS.json and drill result.
func (r Receiver) Page(now time.Time) statuspage.Page {
	rows, _ := r.Rows(now) // a row says what it could not read
	p := statuspage.Page{Role: "receiver"}
	for _, row := range rows {
		v := statuspage.VM{Name: row.VM, Epoch: row.Epoch, Cut: row.Cut, LastError: row.LastError}
		if pts, err := r.Store.Points(row.VM); err == nil {
			v.Points = len(pts)
		}
		if d, err := runbook.ReadDrillResult(vfs.Default, r.side(row.VM, runbook.DrillResultFile)); err == nil {
			v.Drill = &statuspage.Drill{Epoch: d.Epoch, At: d.At, OK: d.OK, Detail: d.Detail}
		}
		p.VMs = append(p.VMs, v)
	}
	p.ConsistencyGroups = r.pageGroups()
	return p
}
