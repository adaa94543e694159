package blockplan

import (
	"testing"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

func TestDecide(t *testing.T) {
	const h, other = 0xaa, 0xbb
	for _, tc := range []struct {
		name   string
		b      Block
		lookup bool
		want   Kind
	}{
		{"replica holds it", Block{Hash: h, OldKnown: true, Old: h}, false, Unchanged},
		{"replica holds the zero page", Block{Hash: h, Zero: true, OldKnown: true, Old: h, RAMPage: true}, false, Unchanged},
		{"unchanged page, though a disk holds it", Block{Hash: h, OldKnown: true, Old: h, RAMPage: true, DiskHit: true}, false, Unchanged},
		{"changed disk block", Block{Hash: h, OldKnown: true, Old: other}, false, Data},
		{"unknown replica content", Block{Hash: h}, false, Data},
		{"unknown replica content, zero", Block{Hash: h, Zero: true}, false, Zero},
		{"zeroed", Block{Hash: h, Zero: true, OldKnown: true, Old: other}, false, Zero},
		{"zeroed page: a zero run, not a reference", Block{Hash: h, Zero: true, OldKnown: true, Old: other, RAMPage: true, DiskHit: true}, false, Zero},
		{"changed page, no source", Block{Hash: h, OldKnown: true, Old: other, RAMPage: true}, true, Data},
		{"changed page a disk holds", Block{Hash: h, OldKnown: true, Old: other, RAMPage: true, DiskHit: true}, true, DiskRef},
		{"changed page another page holds", Block{Hash: h, OldKnown: true, Old: other, RAMPage: true, RAMHit: true}, true, RAMRef},
		{"both hold it: the disk wins", Block{Hash: h, OldKnown: true, Old: other, RAMPage: true, DiskHit: true, RAMHit: true}, true, DiskRef},
		{"disk block: no references without dedup of pages", Block{Hash: h, OldKnown: true, Old: other, DiskHit: true}, false, Data},
	} {
		if got := Lookup(tc.b); got != tc.lookup {
			t.Errorf("%s: Lookup %v, want %v", tc.name, got, tc.lookup)
		}
		if got := Decide(tc.b); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestExtends(t *testing.T) {
	const page = vmspec.PageSize
	data := func(off, n int64) Run { return Run{Type: wire.TypeDiskExtent, Off: off, Len: n} }
	zero := func(off, n int64) Run { return Run{Type: wire.TypeZeroRun, Off: off, Len: n} }
	ref := func(off, n int64, src wire.RefSource, tgt uint16, srcOff int64) Run {
		return Run{Type: wire.TypePageRef, Off: off, Len: n, Source: src, SrcTarget: tgt, SrcOff: srcOff}
	}
	for _, tc := range []struct {
		name     string
		cur, blk Run
		want     bool
	}{
		{"contiguous data", data(0, 64<<10), data(64<<10, 64<<10), true},
		{"gap", data(0, 64<<10), data(128<<10, 64<<10), false},
		{"data then zero", data(0, 64<<10), zero(64<<10, 64<<10), false},
		{"zero then data", zero(0, 64<<10), data(64<<10, 64<<10), false},
		{"data up to MaxData", data(0, wire.MaxData-64<<10), data(wire.MaxData-64<<10, 64<<10), true},
		{"data past MaxData", data(0, wire.MaxData), data(wire.MaxData, 64<<10), false},
		{"zero runs have no bound", zero(0, 1<<40), zero(1<<40, 64<<10), true},
		{"memory run", Run{Type: wire.TypeMemRun, Len: page}, Run{Type: wire.TypeMemRun, Off: page, Len: page}, true},
		{"memory run then disk extent", Run{Type: wire.TypeMemRun, Len: page}, data(page, page), false},
		{"contiguous disk refs", ref(0, page, wire.RefDisk, 1, 8*page), ref(page, page, wire.RefDisk, 1, 9*page), true},
		{"refs to a gap in the source", ref(0, page, wire.RefDisk, 1, 8*page), ref(page, page, wire.RefDisk, 1, 10*page), false},
		{"refs to another disk", ref(0, page, wire.RefDisk, 1, 8*page), ref(page, page, wire.RefDisk, 2, 9*page), false},
		{"disk ref then page ref", ref(0, page, wire.RefDisk, 1, 8*page), ref(page, page, wire.RefPage, 1, 9*page), false},
		{"refs backwards in the source", ref(page, page, wire.RefPage, 0, 9*page), ref(2*page, page, wire.RefPage, 0, 8*page), false},
		{"refs up to MaxData", ref(0, wire.MaxData-page, wire.RefDisk, 1, 0), ref(wire.MaxData-page, page, wire.RefDisk, 1, wire.MaxData-page), true},
		{"refs past MaxData", ref(0, wire.MaxData, wire.RefDisk, 1, 0), ref(wire.MaxData, page, wire.RefDisk, 1, wire.MaxData), false},
	} {
		if got := Extends(tc.cur, tc.blk); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
