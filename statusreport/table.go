package statusreport

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/runbook"
)

// WriteTable prints rows as a table for people, role "sender" or
// "receiver", followed by a line for each guest that is (or was left)
// paused.
func WriteTable(w io.Writer, role string, rows []Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if role == "sender" {
		fmt.Fprintln(tw, "VM\tEPOCH\tCUT (UTC)\tRPO LAG\tRPO TARGET\tEPOCH LEN\tGOODPUT\tDIRTY\tSENT\tPAUSE LAST/MED/MAX\tFAILURES\tLAST ERROR")
	} else {
		fmt.Fprintln(tw, "VM\tEPOCH\tCUT (UTC)\tRPO LAG\tRECEIVED\tHOT SET\tLAST DRILL\tLAST PEER\tLAST ERROR")
	}
	for _, r := range rows {
		cut, lag := "-", "-"
		if !r.Cut.IsZero() {
			cut = r.Cut.Format("2006-01-02 15:04:05")
		}
		if r.RPOLagSeconds != nil {
			lag = (time.Duration(*r.RPOLagSeconds * float64(time.Second))).Round(time.Second).String()
		}
		lastErr := orDash(truncate(r.LastError, 100))
		if role == "sender" {
			failures := "-"
			if r.ConsecutiveFailures != nil {
				failures = fmt.Sprint(*r.ConsecutiveFailures)
				// With no failure since the last committed epoch the
				// last error is history (the JSON keeps it); the table
				// shows only what is failing now.
				if *r.ConsecutiveFailures == 0 {
					lastErr = "-"
				}
			}
			pause := "-"
			if p := r.GuestPause; p != nil {
				pause = fmt.Sprintf("%.1f/%.1f/%.1f ms", p.LastMS, p.MedianMS, p.MaxMS)
				if r.RAMPath != "" {
					// Whether the pause grows with RAM or with its writes.
					pause += " (RAM " + r.RAMPath + ")"
				}
			}
			target, epoch, goodput, dirty := "-", "-", "-", "-"
			if f := r.Flow; f != nil {
				if f.EpochSeconds > 0 {
					epoch = secs(f.EpochSeconds).Round(100 * time.Millisecond).String()
					dirty = units.FormatRate(f.DirtyBytesPerSecond)
				}
				if f.GoodputBytesPerSecond > 0 {
					goodput = units.FormatRate(f.GoodputBytesPerSecond)
				}
				if f.RPOTargetSeconds > 0 {
					target = secs(f.RPOTargetSeconds).String() + " ok"
					if f.BreachPredicted {
						target = secs(f.RPOTargetSeconds).String() + " BREACH"
					}
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.Epoch, cut, lag, target, epoch, goodput, dirty,
				units.FormatBytes(deref(r.BytesSent)), pause, failures, lastErr)
		} else {
			hot := "-"
			if r.HotSetBytes != nil && *r.HotSetBytes > 0 {
				hot = units.FormatBytes(uint64(*r.HotSetBytes))
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.Epoch, cut, lag, units.FormatBytes(deref(r.BytesReceived)), hot, drillCell(r.Drill),
				orDash(truncate(r.LastPeer, 40)), lastErr)
		}
	}
	tw.Flush()
	for _, r := range rows {
		WriteGuestNotes(w, r)
	}
}

// WriteGuestNotes says loudly, under the table, that a protected guest is
// (or was left) paused.
func WriteGuestNotes(w io.Writer, r Row) {
	if d := r.Domain; d != nil && d.Held {
		fmt.Fprintf(w, "%s: %s\n", r.VM, d.Detail)
	}
	g := r.Guest
	if g == nil {
		return
	}
	if g.Paused {
		fmt.Fprintf(w, "%s: GUEST PAUSED since %s: %s\n", r.VM, g.Since.UTC().Format("2006-01-02 15:04:05"), g.Detail)
	}
	if e := g.LastGuard; e != nil && e.Resumed {
		fmt.Fprintf(w, "%s: guest left paused by a sender that died during a cut; the guard resumed it at %s after about %.0f ms (%d time(s) in all)\n",
			r.VM, e.At.UTC().Format("2006-01-02 15:04:05"), e.PausedMS, g.GuardResumes)
	}
	if p := g.LongPause; p != nil {
		fmt.Fprintf(w, "%s: the cut of epoch %d paused the guest for %.0f ms, longer than expected\n", r.VM, p.Epoch, p.PauseMS)
	}
}

// drillCell is the LAST DRILL column: when and from which epoch the last
// drill ran, and whether it passed ("FAILED" stands out).
func drillCell(d *runbook.DrillResult) string {
	if d == nil {
		return "never"
	}
	res := "ok"
	if !d.OK {
		res = "FAILED"
	}
	return fmt.Sprintf("%s epoch %d %s", res, d.Epoch, d.At.UTC().Format("2006-01-02 15:04"))
}
