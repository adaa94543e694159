package sender

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/sender/protocol"
	"github.com/drsync/drsync/vmspec"
)

// ErrSnapshotLost marks a snapshot that can no longer be read (the VM
// behind it exited, its export went away). The sender drops the epoch in
// flight and cuts a new one at its next attempt.
var ErrSnapshotLost = protocol.ErrSnapshotLost

// ErrUnusableSource marks a source that cannot be replicated as it is
// configured (a RAM file that is not whole pages, an empty image): trying
// again cannot help, the configuration or the image must change.
var ErrUnusableSource = errors.New("source unusable as configured")

// Extent is a range of a target and what is known of it without reading:
// that it reads as zeros, or that it is unchanged since the source's
// previous cut (a dirty bitmap says so), whose table is Target.Prev.
type Extent struct {
	Off, Len  int64
	Zero      bool
	Unchanged bool
}

// Target is one disk or RAM block of a snapshot, as the planner reads it.
type Target struct {
	Kind      vmspec.TargetKind
	Name      string
	Size      int64
	BlockSize int
	Reader    io.ReaderAt
	// Extents, if set, reports which ranges read as zeros, so they are not
	// read at all. The result must cover [off, off+n) in order.
	Extents func(ctx context.Context, off, n int64) ([]Extent, error)
	// Prev is the table of this target at the source's previous cut. Blocks
	// wholly inside Unchanged extents take their hashes from it instead of
	// being read. It must have the target's size and block size.
	Prev *blockhash.Table
}

// Snapshot is a VM's disks, RAM and device state at one instant. It must
// not change while it is open: the sender reads it twice (to plan and to
// send) and refuses to send data that changed in between.
type Snapshot struct {
	Cut         time.Time
	Targets     []Target
	DeviceState []byte // opaque, may be nil
	// Pause is how long the guest was stopped to cut this snapshot, and
	// HypervisorDowntime the part of it the hypervisor itself reports;
	// zero for sources that never stop a guest.
	Pause, HypervisorDowntime time.Duration
	// Group, if set, says this snapshot was cut by a consistency group's
	// coordinated cut: every member was paused at one instant.
	Group *vmspec.GroupCut
	// Planned, if set, is called once the snapshot's block tables are
	// known (keyed by TableKey), so a source that tracks changes between
	// cuts learns what this cut held.
	Planned func(tables map[string]*blockhash.Table)
	// Close releases the snapshot (closes images, tears down exports).
	Close func() error
}

// Source cuts snapshots of one VM. Implementations: image files (this
// package), a live QEMU guest.
type Source interface {
	Snapshot(ctx context.Context) (*Snapshot, error)
}
