package livecut

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// RAMTracker follows the writes a guest makes to one RAM block between
// cuts; dirtylog.Guest is the implementation for a shared memory backend.
type RAMTracker interface {
	// Scan returns the byte ranges of the block written since the
	// previous Scan (all of it at the first) and protects them again.
	Scan() ([]dirtylog.Range, error)
	// ReadAt reads the block as the guest sees it now.
	ReadAt(p []byte, off int64) (int, error)
	Close() error
}

// ramTrack is the tracked path's state across cuts: the RAM block's image
// as it was at cut imageGen (the last scan), and the planner's table of
// that image once known.
type ramTrack struct {
	tr       RAMTracker
	armed    bool   // the first Scan has run: writes are being recorded
	image    []byte // the block at cut imageGen; nil until a full cut filled it
	imageGen uint64
	table    *blockhash.Table // the planner's table of the image at tableGen
	tableGen uint64
}

// RAM paths a cut took, as CutStats.RAMPath says.
const (
	RAMFull    = "full"    // every page came in the migration stream
	RAMTracked = "tracked" // device state only; the pages written since the last cut were copied
)

// trackedCut says whether this cut can take the tracked path: the
// tracker is armed and the image holds the last scan's cut. It starts the
// tracker (before the guest stops: registering costs a ptrace stop of
// QEMU's main thread) when configured and not yet running.
func (s *Source) trackedCut() bool {
	if s.o.TrackRAM == nil || s.trackOff {
		return false
	}
	if s.ram == nil {
		tr, err := s.o.TrackRAM()
		if err != nil {
			if errors.Is(err, dirtylog.ErrUnsupported) || errors.Is(err, dirtylog.ErrNoSharedRAM) {
				s.trackOff = true // asking again cannot help
			}
			s.log.Warn("cannot track the guest's RAM writes; cuts migrate all of RAM", "err", err)
			return false
		}
		s.ram = &ramTrack{tr: tr}
	}
	return s.ram.armed && s.ram.image != nil
}

// dropTracking ends the tracked path after a failure: the next cut is a
// full migration, which starts it again.
func (s *Source) dropTracking(why error) {
	if s.ram == nil {
		return
	}
	s.log.Warn("guest RAM tracking lost; the next cut migrates all of RAM", "err", why)
	s.ram.tr.Close()
	s.ram = nil
}

// setIgnoreShared sets QEMU's x-ignore-shared capability: on, a
// migration leaves out RAM in shared backends. It is set for every cut of
// a source that tracks RAM, and never touched by one that does not.
func (s *Source) setIgnoreShared(ctx context.Context, sess Monitor, on bool) error {
	if s.o.TrackRAM == nil {
		return nil
	}
	return sess.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}, nil)
}

// scanStopped runs while the guest is stopped after the migration: the
// first scan arms the tracking (a full cut); on a tracked cut the pages
// written since the last cut are copied into the image. It returns the
// written ranges of a tracked cut.
func (s *Source) scanStopped(tracked bool, gen uint64) ([]dirtylog.Range, time.Duration, error) {
	if s.ram == nil {
		return nil, 0, nil
	}
	start := time.Now()
	dirty, err := s.ram.tr.Scan()
	if err != nil {
		return nil, 0, fmt.Errorf("scan guest RAM: %w", err)
	}
	if !tracked {
		s.ram.armed = true
		return nil, time.Since(start), nil
	}
	img := s.ram.image
	// From here the image is this cut's, or broken: a failed copy ends
	// the tracking.
	s.ram.imageGen = gen
	for _, r := range dirty {
		if r.End > uint64(len(img)) {
			return nil, 0, fmt.Errorf("scan guest RAM: range %#x-%#x beyond the block's %d bytes", r.Start, r.End, len(img))
		}
		if _, err := s.ram.tr.ReadAt(img[r.Start:r.End], int64(r.Start)); err != nil {
			return nil, 0, fmt.Errorf("copy written guest RAM: %w", err)
		}
	}
	return dirty, time.Since(start), nil
}

// ramTarget is the tracked block's target for cut gen: the image, with the
// written ranges to read and, when the planner's table of the previous
// image is known, every other page unchanged.
func (s *Source) ramTarget(id string, gen uint64, dirty []dirtylog.Range, prevGen uint64) sender.Target {
	r := s.ram
	t := sender.Target{Kind: vmspec.KindRAM, Name: id, Size: int64(len(r.image)), BlockSize: vmspec.PageSize,
		Reader: bytes.NewReader(r.image)}
	if r.table != nil && r.tableGen == prevGen && r.table.Size == t.Size && r.table.BlockSize == t.BlockSize {
		t.Prev = r.table
		ext := dirtyExtents(dirty, t.Size)
		t.Extents = func(context.Context, int64, int64) ([]sender.Extent, error) { return ext, nil }
	}
	return t
}

// dirtyExtents covers [0, size): the written ranges changed, the rest
// unchanged.
func dirtyExtents(dirty []dirtylog.Range, size int64) []sender.Extent {
	var out []sender.Extent
	pos := int64(0)
	for _, r := range dirty {
		if s := int64(r.Start); s > pos {
			out = append(out, sender.Extent{Off: pos, Len: s - pos, Unchanged: true})
		}
		out = append(out, sender.Extent{Off: int64(r.Start), Len: int64(r.End - r.Start)})
		pos = int64(r.End)
	}
	if pos < size {
		out = append(out, sender.Extent{Off: pos, Len: size - pos, Unchanged: true})
	}
	return out
}

// ramGen is the cut the tracked image holds, 0 for none.
func (s *Source) ramGen() uint64 {
	if s.ram == nil || s.ram.image == nil {
		return 0
	}
	return s.ram.imageGen
}

// fillImage starts the tracked image from a full cut whose stopped window
// armed (or re-armed) the tracking: the block as the stream carried it.
func (c *cut) fillImage() {
	s := c.s
	if s.ram == nil || !s.ram.armed {
		return
	}
	for i, b := range c.flat.BlockList() {
		if b.ID != s.o.SharedRAM {
			continue
		}
		if int64(len(s.ram.image)) != b.Length {
			s.ram.image = make([]byte, b.Length)
		}
		copy(s.ram.image, c.flat.Block(i))
		s.ram.imageGen, s.ram.table = c.gen, nil
		return
	}
	s.dropTracking(fmt.Errorf("the migration stream has no RAM block %q (the memory backend's id)", s.o.SharedRAM))
}
