package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/vfs"
)

// Status file names. "drsync status" reads them while send and receive run,
// so they are always replaced atomically.
const (
	senderStatusFile   = "status.json" // in <state dir>/<vm>/
	receiverStatusFile = "STATUS.json" // in <storage dir>/<vm>/
)

// senderStatus is a sender's record of one VM.
type senderStatus struct {
	VM string `json:"vm"`
	// Epoch and Cut describe the last epoch the receiver committed.
	Epoch       uint64    `json:"epoch"`
	Cut         time.Time `json:"cut,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// LastResult is the last committed epoch's details.
	LastResult          *epochResult `json:"last_result,omitempty"`
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
	Flow *flowStatus `json:"flow,omitempty"`
	// GuestPaused is set while the sender finds the live guest paused by
	// someone else (drsync neither cuts nor resumes it); a committed epoch
	// clears it.
	GuestPaused *guestPaused `json:"guest_paused,omitempty"`
	// LongPause is the last cut that paused the guest for longer than
	// expected (livecut.PauseAlarm).
	LongPause *longPause `json:"long_pause,omitempty"`
}

type guestPaused struct {
	Since  time.Time `json:"since"` // first noticed
	Detail string    `json:"detail"`
}

type longPause struct {
	At      time.Time `json:"at"`
	PauseMS float64   `json:"pause_ms"`
	Epoch   uint64    `json:"epoch"`
}

// maxRecentPauses bounds the pause history kept for status.
const maxRecentPauses = 100

// epochResult is sender.Result for people and scripts.
type epochResult struct {
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

// receiverStatus is a receiver's record of one VM.
type receiverStatus struct {
	VM          string    `json:"vm"`
	Epoch       uint64    `json:"epoch"`
	Cut         time.Time `json:"cut,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// BytesReceived counts bytes read from the network for committed
	// epochs; RawBytes the same after decompression.
	BytesReceived uint64    `json:"bytes_received"`
	RawBytes      uint64    `json:"raw_bytes"`
	Epochs        uint64    `json:"epochs"`
	LastPeer      *peerInfo `json:"last_peer,omitempty"`
	// LastError is why the last connection writing this VM failed; a
	// committed epoch clears it.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Updated     time.Time `json:"updated"`
	// HotSetBytes is the RAM kept pinned for a fast failover: the pages
	// written in recent epochs.
	HotSetBytes int64 `json:"hot_set_bytes"`
}

type peerInfo struct {
	Fingerprint string `json:"fingerprint"`
	Name        string `json:"name,omitempty"`
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeJSONAtomic replaces path with v's JSON encoding: readers see the old
// file or the new one, never a mix, and the new one survives a crash. The
// file is readable by the owner's group, for monitoring.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := vfs.Default.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	if err := vfs.WriteFileDurable(vfs.Default, path, b, 0o640); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
