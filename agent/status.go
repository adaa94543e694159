package agent

import (
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
)

// StatusFile, in a VM's state directory, is the sender's record of the VM.
// "drsync status" reads it while the sender runs, so it is always replaced
// atomically.
const StatusFile = "status.json"

// ReadStatus reads the status file of the VM whose state directory is dir.
func ReadStatus(dir string) (Status, error) {
	var st Status
	err := jsonfile.Read(filepath.Join(dir, StatusFile), &st)
	return st, err
}

// Status is a sender's record of one VM.
type Status struct {
	VM string `json:"vm"`
	// Epoch and Cut describe the last epoch the receiver committed.
	Epoch       uint64    `json:"epoch"`
	Cut         time.Time `json:"cut,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// LastResult is the last committed epoch's details.
	LastResult          *EpochResult `json:"last_result,omitempty"`
	ConsecutiveFailures int          `json:"consecutive_failures"`
	LastError           string       `json:"last_error,omitempty"`
	LastErrorAt         time.Time    `json:"last_error_at,omitzero"`
	// BytesSent counts bytes written to the connection by committed
	// epochs, retries included, since the state directory was created.
	BytesSent uint64    `json:"bytes_sent"`
	Epochs    uint64    `json:"epochs"` // committed by this sender
	Updated   time.Time `json:"updated"`
	// RecentPausesMS are the guest pauses of the last committed epochs of
	// a live VM, oldest first, at most maxRecentPauses.
	RecentPausesMS []float64 `json:"recent_pauses_ms,omitempty"`
	// Flow is the replication flow after the last committed epoch: epoch
	// length, goodput, dirty rate and, with adaptive epochs, the plan.
	Flow *FlowStatus `json:"flow,omitempty"`
	// GuestPaused is set while the sender finds the live guest paused by
	// someone else (drsync neither cuts nor resumes it); a committed epoch
	// clears it.
	GuestPaused *GuestPaused `json:"guest_paused,omitempty"`
	// LongPause is the last cut that paused the guest for longer than
	// expected (livecut.PauseAlarm).
	LongPause *LongPause `json:"long_pause,omitempty"`
	// Domain is a libvirt domain's lifecycle: running, or why protection
	// waits (shut off, migrating away, migrated to another host).
	Domain *DomainStatus `json:"domain,omitempty"`
}

type GuestPaused struct {
	Since  time.Time `json:"since"` // first noticed
	Detail string    `json:"detail"`
}

type LongPause struct {
	At      time.Time `json:"at"`
	PauseMS float64   `json:"pause_ms"`
	Epoch   uint64    `json:"epoch"`
}

// maxRecentPauses bounds the pause history kept for status.
const maxRecentPauses = 100

// EpochResult is sender.Result for people and scripts.
type EpochResult struct {
	Epoch           uint64  `json:"epoch"`
	Base            string  `json:"base"`
	Items           int     `json:"items"`
	StartSeq        uint64  `json:"start_seq"`
	DataBytes       uint64  `json:"data_bytes"`
	ScannedBytes    int64   `json:"scanned_bytes"`
	WireBytes       uint64  `json:"wire_bytes"`
	ResentBytes     uint64  `json:"resent_bytes"`
	Attempts        int     `json:"attempts"`
	DurationSeconds float64 `json:"duration_seconds"`
	// PauseMS is how long a live guest was stopped for the cut (QEMU's
	// STOP to the return of cont); QEMUDowntimeMS is QEMU's own figure.
	PauseMS        float64 `json:"pause_ms,omitempty"`
	QEMUDowntimeMS float64 `json:"qemu_downtime_ms,omitempty"`
	// RAMPath says how a live guest's cut took its RAM: "full" (all of it
	// in QEMU's migration stream) or "tracked" (the pages written since
	// the cut before).
	RAMPath string `json:"ram_path,omitempty"`
	// Changed RAM pages by how they travelled: as data, as references to
	// disk pages the replica holds (dedup), as zero runs.
	RAMDataPages int64 `json:"ram_pages_data"`
	RAMRefPages  int64 `json:"ram_pages_ref"`
	// RAMDupPages are the references (among RAMRefPages) to other pages
	// of memory.
	RAMDupPages  int64 `json:"ram_pages_dup"`
	RAMZeroPages int64 `json:"ram_pages_zero"`
	// SendSeconds is the time from the epoch's first frame to its commit.
	SendSeconds float64 `json:"send_seconds"`
}

// statusRecorder maintains <state dir>/<vm>/status.json. Only the VM's
// loop uses it.
type statusRecorder struct {
	mu   sync.Mutex // the loop's watcher writes plans while an epoch is sent
	path string
	st   Status
	now  func() time.Time
	log  *slog.Logger
}

func loadStatus(path, vm string, now func() time.Time, log *slog.Logger) *statusRecorder {
	r := &statusRecorder{path: path, now: now, log: log}
	if err := jsonfile.Read(path, &r.st); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("previous status unreadable; totals restart from zero", "err", err)
		}
		r.st = Status{}
	}
	r.st.VM = vm
	return r
}

// success records a committed epoch; ramPath is how its cut took the
// guest's RAM ("" for image files).
func (r *statusRecorder) success(res *sender.Result, flow FlowStatus, ramPath string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().UTC()
	r.st.Epoch = res.Epoch
	r.st.Cut = res.Cut.UTC()
	r.st.CommittedAt = now
	r.st.LastResult = &EpochResult{
		Epoch: res.Epoch, Base: res.Base, Items: res.Items, StartSeq: res.StartSeq,
		DataBytes: res.DataBytes, ScannedBytes: res.Scanned, WireBytes: res.WireBytes,
		ResentBytes: res.ResentBytes, Attempts: res.Attempts, DurationSeconds: res.Duration.Seconds(),
		PauseMS: ms(res.Pause), QEMUDowntimeMS: ms(res.HypervisorDowntime), RAMPath: ramPath,
		RAMDataPages: res.RAMDataPages, RAMRefPages: res.RAMRefPages, RAMDupPages: res.RAMDupPages, RAMZeroPages: res.RAMZeroPages,
		SendSeconds: res.SendTime.Seconds(),
	}
	r.st.Flow = &flow
	if res.Pause > 0 {
		r.st.RecentPausesMS = append(r.st.RecentPausesMS, ms(res.Pause))
		if n := len(r.st.RecentPausesMS); n > maxRecentPauses {
			r.st.RecentPausesMS = r.st.RecentPausesMS[n-maxRecentPauses:]
		}
	}
	r.st.ConsecutiveFailures = 0
	r.st.GuestPaused = nil
	if res.Pause > livecut.PauseAlarm {
		r.st.LongPause = &LongPause{At: now, PauseMS: ms(res.Pause), Epoch: res.Epoch}
	}
	r.st.BytesSent += res.WireBytes
	r.st.Epochs++
	r.save(now)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// planned takes the plan made from the epoch in flight, keeping what the
// status says of the last committed epoch.
func (r *statusRecorder) planned(flow FlowStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Flow == nil {
		r.st.Flow = &FlowStatus{}
	}
	r.st.Flow.planned(flow)
	r.save(r.now().UTC())
}

func (r *statusRecorder) failure(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().UTC()
	r.st.ConsecutiveFailures++
	r.st.LastError = err.Error()
	r.st.LastErrorAt = now
	if errors.Is(err, livecut.ErrGuestPaused) {
		if r.st.GuestPaused == nil {
			r.st.GuestPaused = &GuestPaused{Since: now}
		}
		r.st.GuestPaused.Detail = err.Error()
	}
	r.save(now)
}

// domain records a libvirt domain's lifecycle state.
func (r *statusRecorder) domain(d *DomainStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Domain = d
	r.save(r.now().UTC())
}

// save writes the status; a failure to do so is logged, never fatal.
func (r *statusRecorder) save(now time.Time) {
	r.st.Updated = now
	if err := jsonfile.WriteAtomic(r.path, &r.st); err != nil {
		r.log.Warn("cannot write sender status", "err", err)
	}
}
