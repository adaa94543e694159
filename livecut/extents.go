package livecut

import (
	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/sender"
)

// mergeExtents combines a disk's allocation map (what reads as zeros) with
// the dirty bitmap of the previous cut (what may have changed) into the
// planner's extents; both must cover the same range in order. A nil dirty
// map means no usable bitmap: nothing is known unchanged.
func mergeExtents(alloc []diskmirror.Extent, dirty []diskmirror.DirtyExtent) []sender.Extent {
	if len(alloc) == 0 {
		return nil
	}
	var out []sender.Extent
	add := func(e sender.Extent) {
		if k := len(out); k > 0 && out[k-1].Zero == e.Zero && out[k-1].Unchanged == e.Unchanged && out[k-1].Off+out[k-1].Len == e.Off {
			out[k-1].Len += e.Len
			return
		}
		out = append(out, e)
	}
	if dirty == nil {
		for _, a := range alloc {
			add(sender.Extent{Off: a.Off, Len: a.Len, Zero: a.Zero})
		}
		return out
	}
	i, j := 0, 0
	pos := alloc[0].Off
	for i < len(alloc) && j < len(dirty) {
		a, d := alloc[i], dirty[j]
		end := min(a.Off+a.Len, d.Off+d.Len)
		if pos < max(a.Off, d.Off) {
			pos = max(a.Off, d.Off) // a gap in either map: leave it unknown
		}
		if end > pos {
			add(sender.Extent{Off: pos, Len: end - pos, Zero: a.Zero, Unchanged: !d.Dirty})
			pos = end
		}
		if a.Off+a.Len <= pos {
			i++
		}
		if d.Off+d.Len <= pos {
			j++
		}
	}
	return out
}

// ramExtents turns a RAM block's non-zero page map into extents.
func ramExtents(nz *migstream.Bitmap) []sender.Extent {
	var out []sender.Extent
	for _, r := range nz.Runs() {
		off, n := r.Bytes()
		out = append(out, sender.Extent{Off: off, Len: n, Zero: !r.NonZero})
	}
	return out
}
