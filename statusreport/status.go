package statusreport

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/vfs"
)

// Row is one VM of the status report; its JSON form is what
// "drsync status --json" prints.
type Row struct {
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
	// RAMPath is how the last committed epoch's cut took a live guest's
	// RAM: "full" or "tracked" (the pages written since the cut before).
	RAMPath string `json:"ram_path,omitempty"`
	// HotSetBytes is the RAM a receiver keeps pinned for a fast failover.
	HotSetBytes *int64 `json:"hot_set_bytes,omitempty"`
	// Flow is a sender's epoch length, goodput, dirty rate and plan.
	Flow *agent.FlowStatus `json:"flow,omitempty"`
	// Guest is what is known of a live guest's pauses outside cuts.
	Guest *agent.Guest `json:"guest,omitempty"`
	// Domain is a libvirt domain's lifecycle as its sender saw it last.
	Domain *agent.DomainStatus `json:"domain,omitempty"`
	// Drill is a replica's last failover drill (drsync failover --drill).
	Drill *runbook.DrillResult `json:"drill,omitempty"`
	// Group is the VM's consistency group, if it is in one.
	Group *Group `json:"group,omitempty"`
}

func (v *Row) setCut(cut, now time.Time) {
	if cut.IsZero() {
		return
	}
	v.Cut = cut.UTC()
	lag := now.Sub(cut).Seconds()
	v.RPOLagSeconds = &lag
}

// SenderVM is one VM a sender replicates, as its status needs it.
type SenderVM struct {
	Name string
	// StateDir holds the VM's status file (agent.ReadStatus).
	StateDir string
	// WorkDir is a live guest's work directory (its guard's record); ""
	// for a VM replicated from image files.
	WorkDir string
	// RPOTarget is the configured target (0: none), for the status page.
	RPOTarget time.Duration
	// Group is the consistency group the VM is in, if any.
	Group *groupcut.Options
}

// Sender builds the rows of a sender's VMs at now. A row says what could
// not be read; the problems are returned too.
func Sender(vms []SenderVM, now time.Time) ([]Row, []error) {
	var rows []Row
	var problems []error
	for _, vm := range vms {
		row := Row{VM: vm.Name, Role: "sender"}
		st, err := agent.ReadStatus(vm.StateDir)
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
			if st.LastResult != nil {
				row.RAMPath = st.LastResult.RAMPath
			}
			row.Flow = st.Flow
			row.Domain = st.Domain
		}
		if vm.WorkDir != "" {
			g, err := agent.GuestReport(vm.StateDir, vm.WorkDir, &st, now)
			if err != nil {
				problems = append(problems, fmt.Errorf("vm %s: %w", vm.Name, err))
			}
			row.Guest = g
		}
		row.BytesSent = &st.BytesSent
		rows = append(rows, row)
	}
	addSenderGroups(rows, vms, now)
	return rows, problems
}

// Receiver is a receiver's replicas as its status reads them.
type Receiver struct {
	// Store holds the replicas: the manifest is the truth about what a
	// replica holds.
	Store replica.Store
	// Dir is the storage directory, where each VM's STATUS.json
	// (receiver/serve) and drill result (runbook) are.
	Dir string
	// VMs are the VMs some sender may write, sorted.
	VMs []string
}

func (r Receiver) side(vm, name string) string { return filepath.Join(r.Dir, vm, name) }

// Rows builds the rows of the receiver's VMs at now. A row says what could
// not be read; the problems are returned too.
func (r Receiver) Rows(now time.Time) ([]Row, []error) {
	var rows []Row
	var problems []error
	for _, vm := range r.VMs {
		row := Row{VM: vm, Role: "receiver"}
		switch m, err := r.Store.Manifest(vm); {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			row.LastError = fmt.Sprintf("manifest: %v", err)
			problems = append(problems, fmt.Errorf("vm %s: manifest of %s: %w", vm, r.Store.Where(vm), err))
		default:
			row.Epoch = m.Epoch
			row.setCut(m.Cut, now)
			row.Updated = m.Applied.UTC()
		}
		// The status file only adds the counters.
		var st serve.Status
		switch err := jsonfile.Read(r.side(vm, serve.StatusFile), &st); {
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
		switch d, err := runbook.ReadDrillResult(vfs.Default, r.side(vm, runbook.DrillResultFile)); {
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
