package replica

import (
	"fmt"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ManifestFormat is the manifest format every store writes.
const ManifestFormat = manifestFormat

// tablesAfter computes every target's block table as of the end of st,
// from the committed tables old (by kind/name) and view, which reads the
// targets as they are at the end of st's data and zero items. A target
// the epoch neither writes nor resizes keeps its committed table, shared
// rather than copied: an epoch costs the tables it changes, not every
// target's (callers never change a table in place, and a store may tell
// an unchanged target by that identity).
func (st *stage) tablesAfter(old map[string]*blockhash.Table, view viewFunc) (map[string]*blockhash.Table, error) {
	written := map[uint16]bool{}
	for _, it := range st.items {
		switch it.Type {
		case wire.TypeDiskExtent, wire.TypeMemRun, wire.TypeZeroRun, wire.TypePageRef:
			written[it.Target] = true
		}
	}
	out := map[string]*blockhash.Table{}
	byID := map[uint16]*blockhash.Table{}
	for id, t := range st.targets {
		k := key(t.Kind, t.Name)
		var tab *blockhash.Table
		if o := old[k]; o != nil && !written[id] && o.Size == int64(t.Size) {
			tab = o
		} else if o != nil {
			tab = o.Clone()
			tab.Resize(int64(t.Size))
		} else {
			tab = blockhash.NewZero(int64(t.Size), int(t.BlockSize))
		}
		out[k], byID[id] = tab, tab
	}
	for _, it := range st.items {
		tab := byID[it.Target]
		switch it.Type {
		case wire.TypeDiskExtent, wire.TypeMemRun:
			first := itemOffset(it) / int64(tab.BlockSize)
			copy(tab.Hashes[first:], it.hashes)
		case wire.TypeZeroRun:
			first := int64(it.Offset) / int64(tab.BlockSize)
			for i := first; i < blockhash.Blocks(int64(it.Offset+it.Length), tab.BlockSize); i++ {
				tab.Hashes[i] = blockhash.ZeroHash(tab.BlockLen(i))
			}
		}
	}
	if err := st.forRefs(nil, func(it stagedItem, src []byte) error {
		tab := byID[it.Target]
		for i := uint64(0); i < it.Length; i++ {
			tab.Hashes[it.Offset+i] = blockhash.Hash(src[i*vmspec.PageSize : (i+1)*vmspec.PageSize])
		}
		return nil
	}, view); err != nil {
		return nil, err
	}
	return out, nil
}

// digestOf is target id's content digest with table tab, which
// tablesAfter computed from the committed tables old: a table it shared
// has the committed entry's digest and is not hashed again.
func (st *stage) digestOf(id uint16, tab *blockhash.Table, old map[string]*blockhash.Table) uint64 {
	if t := st.targets[id]; t != nil && t.base != nil && tab == old[key(t.Kind, t.Name)] {
		return t.base.Digest
	}
	return tab.Digest()
}

// checkStates compares each state c expects with the target's digest.
func (st *stage) checkStates(c *wire.EpochCommit, digest func(id uint16) uint64) error {
	for _, sd := range c.States {
		t := st.targets[sd.Target]
		if got := digest(sd.Target); got != sd.Digest {
			return fmt.Errorf("epoch %d: %s %q would have digest %016x, sender expects %016x: %w", c.Epoch, kindName(t.Kind), t.Name, got, sd.Digest, ErrDigest)
		}
	}
	return nil
}

// forRefs calls fn for each PageRef in order with its source bytes, but
// for those skip (if not nil) says to leave out.
func (st *stage) forRefs(skip func(stagedItem) bool, fn func(it stagedItem, src []byte) error, view viewFunc) error {
	for _, it := range st.items {
		if it.Type != wire.TypePageRef || skip != nil && skip(it) {
			continue
		}
		off := int64(it.SrcOffset)
		if it.Source == wire.RefPage {
			off *= vmspec.PageSize
		}
		src, err := view(it.SrcTarget, off, int(it.Length)*vmspec.PageSize)
		if err != nil {
			return fmt.Errorf("epoch %d: PageRef %d source: %w", st.begin.Epoch, it.Seq, err)
		}
		if err := fn(it, src); err != nil {
			return err
		}
	}
	return nil
}

// Stage is an epoch being staged, for stores outside this package: it
// checks frames by the same rules as the file store (stage.go) and keeps
// what the commit needs. Each item carries a location, an opaque number
// the store uses to find the item's bytes again in its journal.
type Stage struct{ s *stage }

// StagedTarget is a target of a staged epoch and its committed entry (nil
// for a target new in this epoch).
type StagedTarget struct {
	wire.Target
	Base *TargetEntry
}

// NewStage validates b as the next epoch after base.
func NewStage(base *Manifest, b *wire.EpochBegin, maxSize uint64) (*Stage, error) {
	if maxSize == 0 {
		maxSize = DefaultMaxTargetSize
	}
	s, err := newStage(base, b, maxSize)
	if err != nil {
		return nil, err
	}
	return &Stage{s: s}, nil
}

// Resume checks that b continues this staged epoch where it stands.
func (s *Stage) Resume(b *wire.EpochBegin) error { return s.s.resume(b) }

// Item stages the next item, found at loc in the store's journal.
func (s *Stage) Item(it wire.Item, loc int64) error { return s.s.item(it, loc) }

// CheckCommit validates c against everything staged, and the states it
// expects against digests (by target ID, as Digests returns them); nil
// digests checks c alone.
func (s *Stage) CheckCommit(c *wire.EpochCommit, digests map[uint16]uint64) error {
	if err := s.s.checkCommit(c); err != nil {
		return err
	}
	if digests == nil {
		return nil
	}
	return s.s.checkStates(c, func(id uint16) uint64 { return digests[id] })
}

// Digests is the content digest of each table Tables returned (by target
// ID), given the committed tables old that Tables was given. A table
// Tables shared with old (a target the epoch left as it was) takes its
// committed entry's digest, so old must match the manifest the stage
// began on, as every store checks when it opens a replica. Only the
// others are hashed: an epoch costs the tables it changed.
func (s *Stage) Digests(tables map[uint16]*blockhash.Table, old map[string]*blockhash.Table) map[uint16]uint64 {
	out := make(map[uint16]uint64, len(tables))
	for id, tab := range tables {
		out[id] = s.s.digestOf(id, tab, old)
	}
	return out
}

// SetCommit records c, checked by CheckCommit, as the epoch's commit.
func (s *Stage) SetCommit(c *wire.EpochCommit) { s.s.commit = c }

// Commit is the epoch's commit record, nil while it is staged.
func (s *Stage) Commit() *wire.EpochCommit { return s.s.commit }

// Begin is the epoch's EpochBegin (do not modify it).
func (s *Stage) Begin() *wire.EpochBegin { return &s.s.begin }

// StagedPlan is the plan identity to report with durable items staged
// (wire.Position.StagedPlan).
func (s *Stage) StagedPlan(durable int) uint64 { return s.s.stagedPlan(durable) }

// Len is the number of items staged.
func (s *Stage) Len() int { return len(s.s.items) }

// Bytes is the payload staged.
func (s *Stage) Bytes() uint64 { return s.s.bytes }

// DeviceState says whether the epoch carries device state, its size and
// its xxhash64.
func (s *Stage) DeviceState() (seen bool, total, hash uint64) {
	return s.s.devSeen, s.s.devTotal, s.s.deviceStateHash()
}

// Targets lists the epoch's targets by ID.
func (s *Stage) Targets() map[uint16]StagedTarget {
	out := map[uint16]StagedTarget{}
	for id, t := range s.s.targets {
		out[id] = StagedTarget{Target: t.Target, Base: t.base}
	}
	return out
}

// Key names a target in the maps of block tables: kind/name.
func Key(kind vmspec.TargetKind, name string) string { return key(kind, name) }

// Tables computes every target's block table (by target ID) as of the end
// of the epoch, from the committed tables (by Key) and view, which reads a
// target as it is at the end of the epoch's data and zero items (see
// Overlay).
func (s *Stage) Tables(old map[string]*blockhash.Table, view func(target uint16, off int64, n int) ([]byte, error)) (map[uint16]*blockhash.Table, error) {
	byKey, err := s.s.tablesAfter(old, view)
	if err != nil {
		return nil, err
	}
	out := map[uint16]*blockhash.Table{}
	for id, t := range s.s.targets {
		out[id] = byKey[key(t.Kind, t.Name)]
	}
	return out, nil
}

// Overlay lays the epoch's staged data and zero items of target over out,
// which holds the committed bytes at off; read returns the item staged at
// a location.
func (s *Stage) Overlay(target uint16, off int64, out []byte, read func(loc int64) (wire.Item, error)) error {
	n := int64(len(out))
	for _, it := range s.s.items {
		if it.Target != target || it.Type == wire.TypePageRef || it.Type == wire.TypeDeviceState {
			continue
		}
		io0, ilen := itemOffset(it), int64(it.Length)
		lo, hi := max(io0, off), min(io0+ilen, off+n)
		if lo >= hi {
			continue
		}
		if it.Type == wire.TypeZeroRun {
			clear(out[lo-off : hi-off])
			continue
		}
		fr, err := read(it.off)
		if err != nil {
			return err
		}
		copy(out[lo-off:hi-off], wire.DataOf(fr)[lo-io0:hi-io0])
	}
	return nil
}

// Refs calls fn for each PageRef of the epoch in order, with where it
// writes (target and byte offset) and its source bytes read through view.
func (s *Stage) Refs(fn func(target uint16, off int64, src []byte) error, view func(target uint16, off int64, n int) ([]byte, error)) error {
	return s.s.forRefs(nil, func(it stagedItem, src []byte) error {
		return fn(it.Target, itemOffset(it), src)
	}, view)
}

// DeviceStateItems lists the locations of the device-state items in order.
func (s *Stage) DeviceStateItems() []int64 {
	var out []int64
	for _, it := range s.s.items {
		if it.Type == wire.TypeDeviceState {
			out = append(out, it.off)
		}
	}
	return out
}
