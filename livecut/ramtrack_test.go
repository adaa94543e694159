package livecut

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/sender"
)

func TestDirtyExtents(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dirty []dirtylog.Range
		want  []sender.Extent
	}{
		{"none written", nil, []sender.Extent{{Off: 0, Len: 65536, Unchanged: true}}},
		{"all written", []dirtylog.Range{{Start: 0, End: 65536}}, []sender.Extent{{Off: 0, Len: 65536}}},
		{"middle", []dirtylog.Range{{Start: 4096, End: 12288}}, []sender.Extent{
			{Off: 0, Len: 4096, Unchanged: true}, {Off: 4096, Len: 8192}, {Off: 12288, Len: 53248, Unchanged: true}}},
		{"ends", []dirtylog.Range{{Start: 0, End: 4096}, {Start: 61440, End: 65536}}, []sender.Extent{
			{Off: 0, Len: 4096}, {Off: 4096, Len: 57344, Unchanged: true}, {Off: 61440, Len: 4096}}},
	} {
		if got := dirtyExtents(tc.dirty, 65536); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// memTracker is a RAMTracker over a byte slice.
type memTracker []byte

func (m memTracker) Scan() ([]dirtylog.Range, error) { return nil, nil }
func (m memTracker) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, m[off:]), nil
}
func (m memTracker) Close() error { return nil }

// countingTracker counts the bytes read of the guest.
type countingTracker struct {
	memTracker
	read int
}

func (c *countingTracker) ReadAt(p []byte, off int64) (int, error) {
	c.read += len(p)
	return c.memTracker.ReadAt(p, off)
}

// The tracked path holds the written pages only: reads inside them (also
// across two adjacent ranges) return the guest's bytes, a read reaching
// any other page fails, and bad ranges are refused.
func TestWrittenPages(t *testing.T) {
	mem := make(memTracker, 16*4096)
	for i := range mem {
		mem[i] = byte(i / 4096)
	}
	w, err := copyWritten(mem, []dirtylog.Range{{Start: 4096, End: 3 * 4096}, {Start: 3 * 4096, End: 4 * 4096}, {Start: 8 * 4096, End: 9 * 4096}}, int64(len(mem)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.data) != 4*4096 {
		t.Fatalf("holds %d bytes for 4 written pages", len(w.data))
	}
	for _, tc := range []struct {
		off, n int64
		ok     bool
	}{
		{4096, 4096, true},
		{2*4096 + 100, 4096, true}, // across adjacent ranges
		{8 * 4096, 4096, true},
		{0, 4096, false},
		{3 * 4096, 2 * 4096, false}, // runs into an unwritten page
		{9 * 4096, 10, false},
	} {
		buf := make([]byte, tc.n)
		n, err := w.ReadAt(buf, tc.off)
		if tc.ok != (err == nil) {
			t.Fatalf("read %d at %#x: %v, want ok=%v", tc.n, tc.off, err, tc.ok)
		}
		if !tc.ok {
			if !errors.Is(err, errNotCopied) {
				t.Fatalf("read %d at %#x: %v, want errNotCopied", tc.n, tc.off, err)
			}
			continue
		}
		if int64(n) != tc.n || !bytes.Equal(buf, mem[tc.off:tc.off+tc.n]) {
			t.Fatalf("read %d at %#x: %d bytes, not the guest's", tc.n, tc.off, n)
		}
	}
	// Released (the cut closed while the sender still holds its plan),
	// the copy is gone and a read says so rather than return stale pages.
	w.release()
	if w.data != nil {
		t.Fatalf("a released copy still holds %d bytes", len(w.data))
	}
	if _, err := w.ReadAt(make([]byte, 4096), 4096); !errors.Is(err, errNotCopied) {
		t.Fatalf("read of a released copy: %v, want errNotCopied", err)
	}
	(*writtenPages)(nil).release() // a cut without a copy
	for _, bad := range [][]dirtylog.Range{
		{{Start: 0, End: 17 * 4096}},
		{{Start: 4096, End: 4096}},
		{{Start: 4 * 4096, End: 5 * 4096}, {Start: 0, End: 4096}},
	} {
		if _, err := copyWritten(mem, bad, int64(len(mem)), nil, nil); err == nil {
			t.Fatalf("ranges %v accepted", bad)
		}
	}
}

// A tracked cut whose pages were copied while the guest ran (precopy)
// takes from the guest, stopped, only the pages written since (fresh),
// and the rest from that copy: a page rewritten after the precopy reads
// as it is at the cut, one not rewritten as copied; a page neither holds
// fails the copy.
func TestCopyWrittenAfterPrecopy(t *testing.T) {
	r := func(s, e uint64) dirtylog.Range { return dirtylog.Range{Start: s * 4096, End: e * 4096} }
	mem := make(memTracker, 16*4096)
	for i := range mem {
		mem[i] = byte(i / 4096)
	}
	pre, err := copyWritten(mem, []dirtylog.Range{r(1, 5), r(8, 10)}, int64(len(mem)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The guest rewrites pages 2, 3 and 9 and writes 12, then stops.
	for _, p := range []int{2, 3, 9, 12} {
		for i := p * 4096; i < (p+1)*4096; i++ {
			mem[i] = 0xEE
		}
	}
	fresh := []dirtylog.Range{r(2, 4), r(9, 10), r(12, 13)}
	dirty := mergeRanges([]dirtylog.Range{r(1, 5), r(8, 10)}, fresh)
	stopped := &countingTracker{memTracker: mem}
	w, err := copyWritten(stopped, dirty, int64(len(mem)), fresh, pre)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.read != 4*4096 {
		t.Errorf("the stopped copy read %d bytes of the guest, want the 4 pages written since the precopy", stopped.read)
	}
	for _, p := range []int{1, 2, 3, 4, 8, 9, 12} {
		buf := make([]byte, 4096)
		if _, err := w.ReadAt(buf, int64(p)*4096); err != nil {
			t.Fatalf("page %d: %v", p, err)
		}
		if !bytes.Equal(buf, mem[p*4096:(p+1)*4096]) {
			t.Errorf("page %d reads %#x, the guest's at the cut is %#x", p, buf[0], mem[p*4096])
		}
	}
	// Page 6 is in no fresh range and not in the precopy.
	if _, err := copyWritten(mem, []dirtylog.Range{r(6, 7)}, int64(len(mem)), fresh, pre); !errors.Is(err, errNotCopied) {
		t.Errorf("a page neither copy holds: %v, want errNotCopied", err)
	}
}

// Pages carried from an aborted cut join the next scan's: the union,
// ascending, overlapping and touching ranges joined.
func TestMergeRanges(t *testing.T) {
	r := func(s, e uint64) dirtylog.Range { return dirtylog.Range{Start: s * 4096, End: e * 4096} }
	for _, tc := range []struct {
		name string
		a, b []dirtylog.Range
		want []dirtylog.Range
	}{
		{"none", nil, nil, nil},
		{"carried only", []dirtylog.Range{r(1, 2)}, nil, []dirtylog.Range{r(1, 2)}},
		{"scanned only", nil, []dirtylog.Range{r(1, 2)}, []dirtylog.Range{r(1, 2)}},
		{"apart", []dirtylog.Range{r(5, 6)}, []dirtylog.Range{r(1, 2), r(8, 9)}, []dirtylog.Range{r(1, 2), r(5, 6), r(8, 9)}},
		{"touching", []dirtylog.Range{r(1, 2)}, []dirtylog.Range{r(2, 3)}, []dirtylog.Range{r(1, 3)}},
		{"overlapping", []dirtylog.Range{r(1, 4), r(6, 7)}, []dirtylog.Range{r(2, 3), r(3, 6)}, []dirtylog.Range{r(1, 7)}},
		{"same", []dirtylog.Range{r(1, 2)}, []dirtylog.Range{r(1, 2)}, []dirtylog.Range{r(1, 2)}},
	} {
		a := slices.Clone(tc.a)
		if got := mergeRanges(tc.a, tc.b); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		if !reflect.DeepEqual(a, tc.a) {
			t.Errorf("%s: the carried ranges changed", tc.name)
		}
	}
}
