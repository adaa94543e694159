package rbdstore

import (
	"slices"
	"testing"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
)

func TestNextTable(t *testing.T) {
	old := blockhash.NewZero(64*4096, 4096) // 64 entries: a patch holds at most 8
	with := func(idx ...int64) *blockhash.Table {
		tab := old.Clone()
		for _, i := range idx {
			tab.Hashes[i] = uint64(i + 1)
		}
		return tab
	}
	ref := &tableRef{Base: 3, Patch: 5}
	for _, c := range []struct {
		name    string
		prev    *tableRef
		old     *blockhash.Table
		patched []int64
		tab     *blockhash.Table
		want    tableWrite
	}{
		{"new target", nil, nil, nil, old, tableWrite{ref: tableRef{Base: 7}, whole: true}},
		{"unwritten: its objects stay", ref, old, []int64{4}, old, tableWrite{ref: *ref, patched: []int64{4}}},
		{"written, no entry changed", ref, old, []int64{4}, old.Clone(), tableWrite{ref: *ref, patched: []int64{4}}},
		{"a few entries changed", ref, old, []int64{4, 9}, with(1, 9, 60), tableWrite{ref: tableRef{Base: 3, Patch: 7}, patched: []int64{1, 2, 3, 4, 9, 60}, write: true}}, // 1 and 4 are joined with the two between
		{"the first patch", &tableRef{Base: 6}, old, nil, with(2), tableWrite{ref: tableRef{Base: 6, Patch: 7}, patched: []int64{2}, write: true}},
		{"patch would pass an eighth", ref, old, []int64{10, 11, 12, 13, 14, 15}, with(1, 2, 3), tableWrite{ref: tableRef{Base: 7}, whole: true}},
		{"patch at an eighth", ref, old, []int64{10, 11, 12, 13, 14, 15}, with(1, 2), tableWrite{ref: tableRef{Base: 3, Patch: 7}, patched: []int64{1, 2, 10, 11, 12, 13, 14, 15}, write: true}},
		{"grown", ref, old, nil, blockhash.NewZero(65*4096, 4096), tableWrite{ref: tableRef{Base: 7}, whole: true}},
	} {
		got := nextTable(c.prev, c.old, c.patched, c.tab, 7)
		if got.ref != c.want.ref || got.whole != c.want.whole || got.write != c.want.write || !slices.Equal(got.patched, c.want.patched) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestReadTableOfPatch(t *testing.T) {
	base := blockhash.NewZero(16*4096, 4096)
	tab := base.Clone()
	tab.Hashes[3], tab.Hashes[4] = 1, 2
	objs := map[string][]byte{
		"ram-0.bht.2":   base.Marshal(),
		"ram-0.bht.p.5": blockhash.PatchOf(tab, []int64{3, 4}).Marshal(),
	}
	read := func(name string) ([]byte, error) {
		b, ok := objs[name]
		if !ok {
			t.Fatalf("read of %s, which was not written", name)
		}
		return b, nil
	}
	e := replica.TargetEntry{Kind: "ram", Name: "pc.ram", Size: tab.Size, BlockSize: tab.BlockSize, File: "ram-0", Table: "ram-0.bht", Digest: tab.Digest()}
	e.TableBase, e.TablePatch = 2, 5
	got, patched, err := readTable(read, e, 6)
	if err != nil || !got.Equal(tab) || !slices.Equal(patched, []int64{3, 4}) {
		t.Fatalf("read %v, patched %v, err %v", got, patched, err)
	}
	e.Digest++
	if _, _, err := readTable(read, e, 6); err == nil {
		t.Fatal("a table that does not match its manifest digest was read")
	}
}
