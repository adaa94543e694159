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
	"text/tabwriter"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/vfs"
)

// manifestFile is the replica's committed-epoch description (package
// replica writes it atomically, so reading it while an epoch is applied is
// safe).
const manifestFile = "MANIFEST"

func statusCommand() *command {
	var configPath string
	var asJSON bool
	c := &command{
		name:  "status",
		short: "show per VM the committed epoch, RPO lag, bytes and last error",
		args:  "--config FILE [--json]",
		summary: `Show, per VM, the last committed epoch, its cut time, the RPO lag (now
minus that cut), bytes sent or received and the last error. FILE is either
a sender or a receiver configuration. A live guest that is paused when it
should run, or that a sender's death left paused, gets a line of its own
under the table. Safe while send and receive run: it only reads their
status files and the replicas' manifests.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "sender or receiver configuration file (required)")
			set.BoolVar(&asJSON, "json", false, "print a JSON array instead of a table")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" {
			return usagef("--config is required")
		}
		kind, err := configKind(configPath)
		if err != nil {
			return err
		}
		var rows []vmStatusView
		var problems []error
		var groups []grouppoint.GroupPoint // a receiver's consistency groups
		now := e.now()
		switch kind {
		case "sender":
			cfg, err := loadSenderConfig(configPath)
			if err != nil {
				return err
			}
			rows, problems = senderStatuses(cfg, now)
		default:
			cfg, err := loadReceiverConfig(configPath)
			if err != nil {
				return err
			}
			rows, problems = receiverStatuses(cfg, now)
			groups, err = replica.NewestGroupPoints(vfs.Default, cfg.Storage.Dir, cfg.vmNames())
			problems = append(problems, err)
		}
		if asJSON {
			if rows == nil {
				rows = []vmStatusView{}
			}
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rows); err != nil {
				return err
			}
		} else {
			printStatusTable(e.stdout, kind, rows)
			grouppoint.WriteTable(e.stdout, groups, now)
		}
		return errors.Join(problems...)
	}
	return c
}

// configKind tells a sender configuration ([[vm]]) from a receiver one
// ([[sender]], [storage]).
func configKind(path string) (string, error) {
	var m map[string]any
	if _, err := toml.DecodeFile(path, &m); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", &configError{path, "", fmt.Errorf("cannot read: %w", err)}
		}
		return "", &configError{path, "", err}
	}
	_, vm := m["vm"]
	_, snd := m["sender"]
	_, sto := m["storage"]
	switch {
	case vm && !snd && !sto:
		return "sender", nil
	case !vm && (snd || sto):
		return "receiver", nil
	case vm:
		return "", &configError{path, "", errors.New("has both [[vm]] (sender) and [[sender]]/[storage] (receiver) sections; use one file per role")}
	}
	return "", &configError{path, "", errors.New("neither a sender configuration (no [[vm]]) nor a receiver configuration (no [[sender]] or [storage])")}
}

// vmStatusView is one row of the status report.
type vmStatusView struct {
	VM                  string    `json:"vm"`
	Role                string    `json:"role"`
	Epoch               uint64    `json:"epoch"`
	Cut                 time.Time `json:"cut,omitzero"`
	RPOLagSeconds       *float64  `json:"rpo_lag_seconds,omitempty"`
	BytesSent           *uint64   `json:"bytes_sent,omitempty"`
	BytesReceived       *uint64   `json:"bytes_received,omitempty"`
	ConsecutiveFailures *int      `json:"consecutive_failures,omitempty"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	LastPeer            string    `json:"last_peer,omitempty"`
	Updated             time.Time `json:"updated,omitzero"`
	// GuestPause summarises the guest pauses of a live VM's recent epochs.
	GuestPause *agent.PauseSummary `json:"guest_pause,omitempty"`
	// HotSetBytes is the RAM a receiver keeps pinned for a fast failover.
	HotSetBytes *int64 `json:"hot_set_bytes,omitempty"`
	// Flow is a sender's epoch length, goodput, dirty rate and plan.
	Flow *agent.FlowStatus `json:"flow,omitempty"`
	// Guest is what is known of a live guest's pauses outside cuts.
	Guest *agent.Guest `json:"guest,omitempty"`
	// Drill is a replica's last failover drill (drsync failover --drill).
	Drill *runbook.DrillResult `json:"drill,omitempty"`
}

func (v *vmStatusView) setCut(cut, now time.Time) {
	if cut.IsZero() {
		return
	}
	v.Cut = cut.UTC()
	lag := now.Sub(cut).Seconds()
	v.RPOLagSeconds = &lag
}

func senderStatuses(cfg *SenderConfig, now time.Time) ([]vmStatusView, []error) {
	var rows []vmStatusView
	var problems []error
	for _, vm := range cfg.VMs {
		row := vmStatusView{VM: vm.Name, Role: "sender"}
		st, err := agent.ReadStatus(cfg.stateDir(vm.Name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Nothing sent yet.
			row.ConsecutiveFailures = new(int)
		case err != nil:
			row.LastError = fmt.Sprintf("status unreadable: %v", err)
			problems = append(problems, fmt.Errorf("vm %s: %w", vm.Name, err))
		default:
			row.Epoch = st.Epoch
			row.setCut(st.Cut, now)
			row.ConsecutiveFailures = &st.ConsecutiveFailures
			row.LastError = st.LastError
			row.LastErrorAt = st.LastErrorAt.UTC()
			row.Updated = st.Updated
			row.GuestPause = agent.SummarizePauses(st.RecentPausesMS)
			row.Flow = st.Flow
		}
		if vm.live() {
			dir := cfg.stateDir(vm.Name)
			g, err := agent.GuestReport(dir, vm.liveOptions(dir, time.Now).WorkDir, &st, now)
			if err != nil {
				problems = append(problems, fmt.Errorf("vm %s: %w", vm.Name, err))
			}
			row.Guest = g
		}
		row.BytesSent = &st.BytesSent
		rows = append(rows, row)
	}
	return rows, problems
}

func receiverStatuses(cfg *ReceiverConfig, now time.Time) ([]vmStatusView, []error) {
	var rows []vmStatusView
	var problems []error
	for _, vm := range cfg.vmNames() {
		row := vmStatusView{VM: vm, Role: "receiver"}
		dir := cfg.replicaDir(vm)
		// The manifest is the truth about what the replica holds; the
		// status file only adds the counters.
		b, err := os.ReadFile(filepath.Join(dir, manifestFile))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			row.LastError = fmt.Sprintf("manifest unreadable: %v", err)
			problems = append(problems, fmt.Errorf("vm %s: %w", vm, err))
		default:
			m, err := replica.ParseManifest(b)
			if err != nil {
				row.LastError = fmt.Sprintf("manifest: %v", err)
				problems = append(problems, fmt.Errorf("vm %s: %s: %w", vm, filepath.Join(dir, manifestFile), err))
				break
			}
			row.Epoch = m.Epoch
			row.setCut(m.Cut, now)
			row.Updated = m.Applied.UTC()
		}
		var st serve.Status
		switch err := jsonfile.Read(filepath.Join(dir, serve.StatusFile), &st); {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			if row.LastError == "" {
				row.LastError = fmt.Sprintf("status unreadable: %v", err)
			}
			problems = append(problems, fmt.Errorf("vm %s: %w", vm, err))
		default:
			if st.LastError != "" && row.LastError == "" {
				row.LastError = st.LastError
				row.LastErrorAt = st.LastErrorAt.UTC()
			}
			if st.LastPeer != nil {
				row.LastPeer = st.LastPeer.Fingerprint
				if st.LastPeer.Name != "" {
					row.LastPeer = st.LastPeer.Name + " " + st.LastPeer.Fingerprint
				}
			}
		}
		row.BytesReceived = &st.BytesReceived
		row.HotSetBytes = &st.HotSetBytes
		switch d, err := runbook.ReadDrillResult(vfs.Default, filepath.Join(dir, runbook.DrillResultFile)); {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			problems = append(problems, fmt.Errorf("vm %s: drill result: %w", vm, err))
		default:
			row.Drill = &d
		}
		rows = append(rows, row)
	}
	return rows, problems
}

func printStatusTable(w io.Writer, kind string, rows []vmStatusView) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if kind == "sender" {
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
		if kind == "sender" {
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
			}
			target, epoch, goodput, dirty := "-", "-", "-", "-"
			if f := r.Flow; f != nil {
				if f.EpochSeconds > 0 {
					epoch = secs(f.EpochSeconds).Round(100 * time.Millisecond).String()
					dirty = formatRate(f.DirtyBytesPerSecond)
				}
				if f.GoodputBytesPerSecond > 0 {
					goodput = formatRate(f.GoodputBytesPerSecond)
				}
				if f.RPOTargetSeconds > 0 {
					target = secs(f.RPOTargetSeconds).String() + " ok"
					if f.BreachPredicted {
						target = secs(f.RPOTargetSeconds).String() + " BREACH"
					}
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.Epoch, cut, lag, target, epoch, goodput, dirty,
				formatBytes(deref(r.BytesSent)), pause, failures, lastErr)
		} else {
			hot := "-"
			if r.HotSetBytes != nil && *r.HotSetBytes > 0 {
				hot = formatBytes(uint64(*r.HotSetBytes))
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.Epoch, cut, lag, formatBytes(deref(r.BytesReceived)), hot, drillCell(r.Drill),
				orDash(truncate(r.LastPeer, 40)), lastErr)
		}
	}
	tw.Flush()
	for _, r := range rows {
		printGuestNotes(w, r)
	}
}

// printGuestNotes says loudly, under the table, that a protected guest is
// (or was left) paused.
func printGuestNotes(w io.Writer, r vmStatusView) {
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

func deref(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// secs converts seconds to a duration rounded for people.
func secs(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
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
