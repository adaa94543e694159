package sender

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// FileDisk is a disk image file.
type FileDisk struct {
	Name      string
	Path      string
	Format    string // raw, qcow2 or auto
	BlockSize int    // change-tracking granularity; DefaultDiskBlock if 0
}

// FileRAM is a flat guest-RAM file, as QEMU's memory-backend-file keeps it.
type FileRAM struct {
	Name string
	Path string
}

// DefaultDiskBlock is the disk change-tracking granularity.
const DefaultDiskBlock = 64 << 10

// FileSourceOptions describe a VM whose disks and RAM are image files: a
// powered-off VM, or images a snapshot produced. The files must not change
// while an epoch is sent.
type FileSourceOptions struct {
	Disks       []FileDisk
	RAM         []FileRAM
	DeviceState string // optional file holding the device-state blob
	Now         func() time.Time
	Qcow2       diskmirror.Qcow2Options
}

// Validate reports what is wrong with o.
func (o *FileSourceOptions) Validate() error {
	if len(o.Disks)+len(o.RAM) == 0 {
		return errors.New("file source: no disks and no RAM")
	}
	if o.Now == nil {
		return errors.New("file source: no clock")
	}
	seen := map[string]bool{}
	for i := range o.Disks {
		d := &o.Disks[i]
		if err := vmspec.ValidTargetName(d.Name); err != nil {
			return fmt.Errorf("file source: disk %d: %w", i, err)
		}
		if seen["disk/"+d.Name] {
			return fmt.Errorf("file source: disk %q listed twice", d.Name)
		}
		seen["disk/"+d.Name] = true
		if d.Path == "" {
			return fmt.Errorf("file source: disk %q has no path", d.Name)
		}
		switch d.Format {
		case "", diskmirror.FormatAuto, diskmirror.FormatRaw, diskmirror.FormatQcow2:
		default:
			return fmt.Errorf("file source: disk %q: format %q (want raw, qcow2 or auto)", d.Name, d.Format)
		}
		if d.BlockSize == 0 {
			d.BlockSize = DefaultDiskBlock
		}
		if d.BlockSize < 4096 || d.BlockSize > wire.MaxData || d.BlockSize&(d.BlockSize-1) != 0 {
			return fmt.Errorf("file source: disk %q: block size %d (want a power of two from 4 KiB to 4 MiB)", d.Name, d.BlockSize)
		}
	}
	for i, r := range o.RAM {
		if err := vmspec.ValidTargetName(r.Name); err != nil {
			return fmt.Errorf("file source: RAM %d: %w", i, err)
		}
		if seen["ram/"+r.Name] {
			return fmt.Errorf("file source: RAM %q listed twice", r.Name)
		}
		seen["ram/"+r.Name] = true
		if r.Path == "" {
			return fmt.Errorf("file source: RAM %q has no path", r.Name)
		}
	}
	return nil
}

// FileSource cuts snapshots from image files.
type FileSource struct{ o FileSourceOptions }

// NewFileSource returns a FileSource.
func NewFileSource(o FileSourceOptions) (*FileSource, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &FileSource{o: o}, nil
}

// Snapshot opens every image. Nothing is copied: the images are the
// snapshot, which is why they must stay unchanged until it is closed.
func (s *FileSource) Snapshot(ctx context.Context) (*Snapshot, error) {
	snap := &Snapshot{Cut: s.o.Now()}
	var images []diskmirror.Image
	// qemu-nbd lives as long as the snapshot, which outlives the attempt
	// that opened it when a broken link is resumed.
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	closeAll := func() error {
		var errs []error
		for _, im := range images {
			errs = append(errs, im.Close())
		}
		cancel()
		return errors.Join(errs...)
	}
	snap.Close = closeAll
	add := func(kind vmspec.TargetKind, name, path, format string, bs int) error {
		im, err := diskmirror.Open(life, path, format, s.o.Qcow2)
		if err != nil {
			return fmt.Errorf("%s %s: %w", kindWord(kind), name, err)
		}
		images = append(images, im)
		if kind == vmspec.KindRAM && im.Size()%vmspec.PageSize != 0 {
			return fmt.Errorf("RAM %s: %s is %d bytes, not whole %d-byte pages: %w", name, path, im.Size(), vmspec.PageSize, ErrUnusableSource)
		}
		if im.Size() == 0 {
			return fmt.Errorf("%s %s: %s is empty: %w", kindWord(kind), name, path, ErrUnusableSource)
		}
		snap.Targets = append(snap.Targets, Target{
			Kind: kind, Name: name, Size: im.Size(), BlockSize: bs, Reader: im,
			Extents: func(ctx context.Context, off, n int64) ([]Extent, error) {
				es, err := im.Extents(ctx, off, n)
				if err != nil {
					return nil, err
				}
				out := make([]Extent, len(es))
				for i, e := range es {
					out[i] = Extent{Off: e.Off, Len: e.Len, Zero: e.Zero}
				}
				return out, nil
			},
		})
		return nil
	}
	for _, d := range s.o.Disks {
		if err := add(vmspec.KindDisk, d.Name, d.Path, d.Format, d.BlockSize); err != nil {
			closeAll()
			return nil, err
		}
	}
	for _, r := range s.o.RAM {
		if err := add(vmspec.KindRAM, r.Name, r.Path, diskmirror.FormatRaw, vmspec.PageSize); err != nil {
			closeAll()
			return nil, err
		}
	}
	if s.o.DeviceState != "" {
		b, err := os.ReadFile(s.o.DeviceState)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("device state: %w", err)
		}
		snap.DeviceState = b
	}
	return snap, nil
}
