package livecut

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/drsync/drsync/qmp"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Disk is one disk of the VM: the name the replica knows it by and the
// QEMU block node (the format node: qcow2 or raw) the guest writes through.
type Disk struct {
	Name string
	Node string
	// BlockSize is the change-tracking granularity, also the dirty bitmap's;
	// DefaultBlockSize if 0.
	BlockSize int
}

// DefaultBlockSize is the change-tracking granularity of a disk.
const DefaultBlockSize = 64 << 10

// Options configure a Source.
type Options struct {
	QMPSocket string
	// Dial connects to the VM's monitor at QMPSocket; DialQMP (a plain
	// QMP socket) if nil.
	Dial  DialFunc
	Disks []Disk
	// WorkDir holds the migration socket, the NBD socket, the fleecing
	// overlays, the state file and, with TrackRAM, a full cut's spooled
	// RAM (up to the guest's non-zero RAM, while its epoch is sent). The
	// overlays grow with what the guest writes while an epoch is read, so
	// prefer a file system other than the images' (the notes on cut
	// latency say why, too).
	WorkDir string
	FS      vfs.FS // for the state file, the cut marks and the RAM spool; vfs.Default if nil
	Now     func() time.Time
	Logger  *slog.Logger
	// MaxBandwidth caps QEMU's migration into the local capture. QEMU's own
	// default (128 MiB/s) would stretch a cut of 256 MiB to 0.6 s.
	MaxBandwidth int64
	// CutTimeout bounds one cut from migrate to resumed guest.
	CutTimeout time.Duration
	// QemuImg creates the fleecing overlays; "qemu-img" if empty.
	QemuImg string
	// AllowUntestedQEMU lets versions other than 7.2 be driven.
	AllowUntestedQEMU bool
	// Final cuts a last epoch for a planned switch-back (failback): the
	// guest is not resumed after the cut and stays paused for good, so
	// the VM can start at the other site without running in two places.
	Final bool
	// Pass chooses how a cut copies guest RAM: PassLive (the guest runs
	// while the migration's first passes go by, and stops only for the
	// last), PassStopped (the guest stops before the migration starts),
	// or PassAuto, the default: stopped where QEMU's live pass can miss
	// guest writes (TCG before QEMU 9.0, see NeedsStoppedPass), live
	// otherwise and for tracked cuts, whose stream carries no shared RAM.
	Pass Pass
	// SharedRAM names the guest RAM block that lives in a shared memory
	// backend (the backend's id: "ram0" for -object
	// memory-backend-memfd,id=ram0,share=on -machine memory-backend=ram0),
	// and TrackRAM starts following the guest's writes to it (see
	// dirtylog.TrackGuest). With both, the first cut migrates all of RAM
	// and arms the tracking while the guest is stopped; every later cut
	// migrates only device state (x-ignore-shared) and copies the pages
	// written since the cut before, guest stopped. Without them, or when
	// tracking fails, cuts migrate all of RAM.
	SharedRAM string
	TrackRAM  func() (RAMTracker, error)
	// AfterMigration, if set, is called when QEMU reports a cut's
	// migration complete, while the guest is stopped: a fault point for
	// tests of a sender dying at the worst moment.
	AfterMigration func()
	// BeforeStop, if set, is called just before a background cut stops
	// the guest, its early backup jobs started (early.go), with the
	// cut's monitor: a fault point for tests of a write in between.
	BeforeStop func(ctx context.Context, m Monitor)
}

// Validate reports what is wrong with o and fills in defaults.
func (o *Options) Validate() error {
	if o.QMPSocket == "" {
		return errors.New("livecut: no QMP socket")
	}
	if o.WorkDir == "" {
		return errors.New("livecut: no work directory")
	}
	if o.Now == nil {
		return errors.New("livecut: no clock")
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Dial == nil {
		o.Dial = DialQMP
	}
	if o.MaxBandwidth == 0 {
		o.MaxBandwidth = 10 << 30
	}
	if o.MaxBandwidth < 1<<20 {
		return fmt.Errorf("livecut: max bandwidth %d B/s is below 1 MiB/s", o.MaxBandwidth)
	}
	if o.CutTimeout == 0 {
		o.CutTimeout = 60 * time.Second
	}
	if o.QemuImg == "" {
		o.QemuImg = "qemu-img"
	}
	switch o.Pass {
	case PassAuto, PassLive, PassStopped:
	default:
		return fmt.Errorf("livecut: pass %q: want %q, %q or %q", o.Pass, PassAuto, PassLive, PassStopped)
	}
	if (o.TrackRAM == nil) != (o.SharedRAM == "") {
		return errors.New("livecut: tracking guest RAM needs both the shared RAM block's name and a tracker")
	}
	seenName, seenNode := map[string]bool{}, map[string]bool{}
	for i := range o.Disks {
		d := &o.Disks[i]
		if err := vmspec.ValidTargetName(d.Name); err != nil {
			return fmt.Errorf("livecut: disk %d: %w", i, err)
		}
		if d.Node == "" {
			return fmt.Errorf("livecut: disk %q has no QEMU node name", d.Name)
		}
		if ours(d.Node) {
			return fmt.Errorf("livecut: disk %q: node %q is one of drsync's own", d.Name, d.Node)
		}
		if seenName[d.Name] || seenNode[d.Node] {
			return fmt.Errorf("livecut: disk %q (node %q) listed twice", d.Name, d.Node)
		}
		seenName[d.Name], seenNode[d.Node] = true, true
		if d.BlockSize == 0 {
			d.BlockSize = DefaultBlockSize
		}
		if d.BlockSize < 64<<10 || d.BlockSize > wire.MaxData || d.BlockSize&(d.BlockSize-1) != 0 {
			// QEMU's bitmap granularity is at least 512 B, but QEMU's
			// fleecing copies in clusters of 64 KiB; finer tracking gains little.
			return fmt.Errorf("livecut: disk %q: block size %d (want a power of two from 64 KiB to 4 MiB)", d.Name, d.BlockSize)
		}
	}
	return nil
}

// Pass is how a cut copies guest RAM (Options.Pass).
type Pass string

const (
	PassAuto    Pass = ""
	PassLive    Pass = "live"
	PassStopped Pass = "stopped"
)

// NeedsStoppedPass says whether a live migration pass of QEMU version v
// can miss guest writes: under TCG (kvm false) before QEMU 9.0, clearing
// the migration's dirty bits leaves the vCPU's TLB entries marked dirty,
// so later stores through them are not logged and the pages they change
// are not sent again ("physmem: Fix migration dirty bitmap coherency
// with TCG memory access", QEMU 9.0). A resumed replica then holds a
// stale page now and then, which its kernel may trip over. KVM logs
// dirty pages in the kernel and is not affected.
func NeedsStoppedPass(v qmp.Version, kvm bool) bool {
	return !kvm && v.Major < 9
}
