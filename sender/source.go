package sender

import (
	"context"
	"io"
	"time"

	"github.com/drsync/drsync/wire"
)

// Extent is a range of a target and whether it is known to read as zeros.
type Extent struct {
	Off, Len int64
	Zero     bool
}

// Target is one disk or RAM block of a snapshot, as the planner reads it.
type Target struct {
	Kind      wire.TargetKind
	Name      string
	Size      int64
	BlockSize int
	Reader    io.ReaderAt
	// Extents, if set, reports which ranges read as zeros, so they are not
	// read at all. The result must cover [off, off+n) in order.
	Extents func(ctx context.Context, off, n int64) ([]Extent, error)
}

// Snapshot is a VM's disks, RAM and device state at one instant. It must
// not change while it is open: the sender reads it twice (to plan and to
// send) and refuses to send data that changed in between.
type Snapshot struct {
	Cut         time.Time
	Targets     []Target
	DeviceState []byte // opaque, may be nil
	// Close releases the snapshot (closes images, tears down exports).
	Close func() error
}

// Source cuts snapshots of one VM. Implementations: image files (this
// package), a live QEMU guest.
type Source interface {
	Snapshot(ctx context.Context) (*Snapshot, error)
}
