package livecut

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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

// ramTrack is the tracked path's state across cuts. It never holds the
// block's image: what the sender must know of the pages the guest did not
// write is their hashes, the planner's table of the block at the last
// cut (tableGen); only the pages written since are copied, at each cut.
// Memory is the table, 8 bytes per 4 KiB page (2 MiB per GiB of guest
// RAM), and the written pages of the cut being planned.
type ramTrack struct {
	tr       RAMTracker
	armed    bool   // the first Scan has run: writes are being recorded
	size     int64  // the block's length, from the full cut that armed it
	imageGen uint64 // the cut of the last scan; 0 until a full cut armed it
	// written are the pages copied at cut imageGen (a tracked cut).
	written  *writtenPages
	table    *blockhash.Table // the planner's table of the block at tableGen
	tableGen uint64
	// carried are ranges a scan found written for a cut that never
	// reached the sender (it failed, or its group cut was aborted): the
	// scan protected them again, so the next tracked cut copies them
	// along with its own.
	carried []dirtylog.Range
}

// RAM paths a cut took, as CutStats.RAMPath says.
const (
	RAMFull    = "full"    // every page came in the migration stream
	RAMTracked = "tracked" // device state only; the pages written since the last cut were copied
)

// trackedCut says whether this cut can take the tracked path: the
// tracker is armed and the planner's table of the block at the last
// scan's cut is known (a cut that was never planned leaves the pages it
// scanned unknown: the next cut is full). It starts the
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
	r := s.ram
	return r.armed && r.imageGen != 0 && r.table != nil && r.tableGen == r.imageGen &&
		r.table.Size == r.size && r.table.BlockSize == vmspec.PageSize
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

// precopy runs before a tracked cut stops its guest: it scans for the
// pages written since the last cut (which protects them again) and
// copies them while the guest runs, so that the stopped window copies
// only the pages written after this scan, however many the guest wrote
// in the whole epoch. The scanned ranges join the carried ones at once:
// a cut that fails from here on leaves them for the next tracked cut, as
// an aborted one does. A failed scan fails the cut and ends the
// tracking; a failed copy only leaves the stopped window all to copy.
func (c *cut) precopy() error {
	s := c.s
	if !c.tracked || s.ram == nil {
		return nil
	}
	start := time.Now()
	dirty, err := s.ram.tr.Scan()
	if err != nil {
		err = fmt.Errorf("scan guest RAM while it runs: %w", err)
		s.dropTracking(err)
		return fmt.Errorf("livecut: %w: %w", err, ErrCutFailed)
	}
	s.ram.carried = mergeRanges(s.ram.carried, dirty)
	w, err := copyWritten(s.ram.tr, s.ram.carried, s.ram.size, nil, nil)
	if err != nil {
		s.log.Warn("could not copy the written guest RAM before the cut; the cut copies it with the guest stopped", "err", err)
		return nil
	}
	c.pre, c.precopyTime, c.precopyPages = w, time.Since(start), dirtylog.Pages(s.ram.carried)
	return nil
}

// scanStopped runs while the guest is stopped after the migration: the
// first scan arms the tracking (a full cut); on a tracked cut the pages
// written since the last cut are copied out of the guest, or, where pre
// (precopy's copy, if any) holds them and the guest has not written them
// since, taken from pre. It returns the written ranges of a tracked cut.
func (s *Source) scanStopped(tracked bool, gen uint64, pre *writtenPages) ([]dirtylog.Range, time.Duration, error) {
	if s.ram == nil {
		return nil, 0, nil
	}
	start := time.Now()
	dirty, err := s.ram.tr.Scan()
	if err != nil {
		return nil, 0, fmt.Errorf("scan guest RAM: %w", err)
	}
	if !tracked {
		// The writes before this scan are this full cut's: the chain
		// starts again from it (fillImage), or, if it fails, from the
		// next full cut.
		s.ram.armed, s.ram.imageGen, s.ram.written, s.ram.carried = true, 0, nil, nil
		return nil, time.Since(start), nil
	}
	since := dirty
	dirty = mergeRanges(s.ram.carried, dirty)
	// From here the scan is this cut's, or the tracking broken: a failed
	// copy ends it.
	s.ram.imageGen, s.ram.written, s.ram.carried = gen, nil, nil
	w, err := copyWritten(s.ram.tr, dirty, s.ram.size, since, pre)
	if err != nil {
		return nil, 0, err
	}
	s.ram.written = w
	return dirty, time.Since(start), nil
}

// unscan undoes the scan of a tracked cut that never reaches the sender
// (it failed, or its group cut was aborted): the chain goes on from the
// cut before it, whose table is still the planner's, and the pages the
// scan found written are carried to the next tracked cut, which copies
// them again, as they are then. Nothing written is lost, and the next
// cut need not be full.
func (c *cut) unscan() {
	r := c.s.ram
	if r == nil || !c.tracked || r.imageGen != c.gen {
		return
	}
	r.imageGen, r.written, r.carried = c.ramPrev, nil, c.dirty
	c.dirty = nil
}

// mergeRanges is the union of a and b, each ascending and disjoint, as
// ascending disjoint ranges (touching ones joined).
func mergeRanges(a, b []dirtylog.Range) []dirtylog.Range {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	all := slices.Concat(a, b)
	slices.SortFunc(all, func(x, y dirtylog.Range) int { return cmp.Compare(x.Start, y.Start) })
	out := all[:1]
	for _, r := range all[1:] {
		last := &out[len(out)-1]
		if r.Start <= last.End {
			last.End = max(last.End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// writtenPages are the ranges of a RAM block a tracked cut copied, read
// as the block (io.ReaderAt) where they cover it. Anything else is not
// known here: the planner takes those pages' hashes from the previous
// table and never reads them.
type writtenPages struct {
	ranges []dirtylog.Range // ascending, disjoint
	at     []int            // where each range starts in data
	data   []byte
}

// largeCopy is the size of a tracked cut's copy past which its close
// hands the freed heap back to the kernel at once.
const largeCopy = 8 << 20

// errNotCopied is a read of a page a tracked cut did not copy.
var errNotCopied = errors.New("livecut: a page the guest did not write since the last cut is not held by the sender")

// copyWritten copies the ranges dirty of the block (size bytes): from
// tr, but where pre is given, only the parts within fresh (ascending,
// disjoint: written since pre was copied) come from tr and the rest from
// pre, which must hold them.
func copyWritten(tr RAMTracker, dirty []dirtylog.Range, size int64, fresh []dirtylog.Range, pre *writtenPages) (*writtenPages, error) {
	w := &writtenPages{ranges: dirty, at: make([]int, len(dirty))}
	n := 0
	for i, r := range dirty {
		if r.End > uint64(size) || r.Start >= r.End || (i > 0 && r.Start < dirty[i-1].End) {
			return nil, fmt.Errorf("scan guest RAM: range %#x-%#x out of order or beyond the block's %d bytes", r.Start, r.End, size)
		}
		w.at[i] = n
		n += int(r.End - r.Start)
	}
	w.data = make([]byte, n)
	f := 0 // the first fresh range that may reach the current position
	for i, r := range dirty {
		for pos := r.Start; pos < r.End; {
			for f < len(fresh) && fresh[f].End <= pos {
				f++
			}
			// [pos, end) comes all from tr or all from pre.
			end, src := r.End, io.ReaderAt(pre)
			switch {
			case pre == nil:
				src = tr
			case f < len(fresh) && fresh[f].Start <= pos:
				end, src = min(r.End, fresh[f].End), tr
			case f < len(fresh):
				end = min(r.End, fresh[f].Start)
			}
			at := w.at[i] + int(pos-r.Start)
			if _, err := src.ReadAt(w.data[at:at+int(end-pos)], int64(pos)); err != nil {
				return nil, fmt.Errorf("copy written guest RAM: %w", err)
			}
			pos = end
		}
	}
	return w, nil
}

// release drops the copied pages; reads after it fail with errNotCopied.
func (w *writtenPages) release() {
	if w != nil {
		w.ranges, w.at, w.data = nil, nil, nil
	}
}

// ReadAt reads p from the copied ranges; a read reaching a page that was
// not copied fails with errNotCopied.
func (w *writtenPages) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		pos := uint64(off) + uint64(done)
		i, found := slices.BinarySearchFunc(w.ranges, pos, func(r dirtylog.Range, x uint64) int {
			switch {
			case r.End <= x:
				return -1
			case r.Start > x:
				return 1
			}
			return 0
		})
		if !found {
			return done, fmt.Errorf("%w (offset %#x)", errNotCopied, pos)
		}
		r := w.ranges[i]
		src := w.data[w.at[i]+int(pos-r.Start) : w.at[i]+int(r.End-r.Start)]
		done += copy(p[done:], src)
	}
	return done, nil
}

// ramTarget is the tracked block's target for cut gen: the written
// ranges to read, every other page unchanged from the planner's table of
// the previous cut (prevGen), which trackedCut made sure is known.
func (s *Source) ramTarget(id string, gen uint64, dirty []dirtylog.Range, prevGen uint64) (sender.Target, error) {
	r := s.ram
	if r == nil || r.written == nil || r.imageGen != gen || r.table == nil || r.tableGen != prevGen {
		return sender.Target{}, fmt.Errorf("livecut: tracked RAM block %q: the previous cut's table or this cut's pages are missing: %w", id, ErrCutFailed)
	}
	ext := dirtyExtents(dirty, r.size)
	return sender.Target{Kind: vmspec.KindRAM, Name: id, Size: r.size, BlockSize: vmspec.PageSize, Reader: r.written, Prev: r.table,
		Extents: func(context.Context, int64, int64) ([]sender.Extent, error) { return ext, nil }}, nil
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

// ramGen is the cut of the tracker's last scan, 0 for none.
func (s *Source) ramGen() uint64 {
	if s.ram == nil {
		return 0
	}
	return s.ram.imageGen
}

// fillImage starts the tracked chain from a full cut whose stopped window
// armed (or re-armed) the tracking: the next cut is tracked once this
// one's table is known (recordPlanned).
func (c *cut) fillImage() {
	s := c.s
	if s.ram == nil || !s.ram.armed {
		return
	}
	for _, b := range c.cap.img.BlockList() {
		if b.ID != s.o.SharedRAM {
			continue
		}
		s.ram.size, s.ram.imageGen, s.ram.written, s.ram.table = b.Length, c.gen, nil, nil
		return
	}
	s.dropTracking(fmt.Errorf("the migration stream has no RAM block %q (the memory backend's id)", s.o.SharedRAM))
}
