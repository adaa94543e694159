package blockhash

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestPatchRoundTrip(t *testing.T) {
	base := NewZero(40*4096+100, 4096) // 41 entries, the last short
	next := base.Clone()
	idx := []int64{0, 1, 2, 7, 20, 21, 40}
	for _, i := range idx {
		next.Hashes[i] = uint64(1000 + i)
	}
	p := PatchOf(next, idx)
	if len(p.Runs) != 4 || p.Entries() != len(idx) {
		t.Fatalf("runs %+v, want 4 runs of %d entries", p.Runs, len(idx))
	}
	got, err := ReadPatch(p.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if ix := got.Indices(); len(ix) != len(idx) || ix[0] != 0 || ix[6] != 40 {
		t.Fatalf("indices %v, want %v", ix, idx)
	}
	tab, err := got.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	if !tab.Equal(next) {
		t.Fatal("base with the patch laid over it differs from the table the patch was taken from")
	}
	if base.Hashes[0] != ZeroHash(4096) {
		t.Fatal("Apply changed its base")
	}
	if _, err := got.Apply(NewZero(4096, 4096)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("patch over a table of another size: %v, want ErrCorrupt", err)
	}
	empty, err := ReadPatch(PatchOf(next, nil).Marshal())
	if err != nil || empty.Entries() != 0 {
		t.Fatalf("empty patch: %v, %d entries", err, empty.Entries())
	}
}

func TestReadPatchErrors(t *testing.T) {
	tab := NewZero(8*4096, 4096)
	good := PatchOf(tab, []int64{1, 2, 5}).Marshal()
	// reseal rewrites the checksum, so a case fails on what it changed.
	reseal := func(b []byte) []byte {
		body := bytes.Clone(b[:len(b)-8])
		return binary.BigEndian.AppendUint64(body, xxhash.Sum64(body))
	}
	run := func(first uint64, count uint32, b []byte) []byte {
		b = bytes.Clone(b)
		binary.BigEndian.PutUint64(b[24:], first)
		binary.BigEndian.PutUint32(b[32:], count)
		return reseal(b)
	}
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"short", good[:20]},
		{"magic", reseal(append([]byte("DRBHT1\x00\x00"), good[8:]...))},
		{"checksum", append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^1)},
		{"block size", reseal(append(append(bytes.Clone(good[:8]), 0, 0, 3, 0), good[12:]...))},
		{"empty run", run(1, 0, good)},
		{"past the end", run(7, 2, good)},
		{"overlapping", run(6, 2, good)}, // the second run starts at 5
		{"truncated", reseal(bytes.Clone(good[:len(good)-16]))},
		{"trailing", reseal(append(bytes.Clone(good[:len(good)-8]), 0, 0, 0, 0, 0, 0, 0, 0, 0))},
		{"lying count", reseal(append(append(bytes.Clone(good[:20]), 0xff, 0xff, 0xff, 0xff), good[24:len(good)-8]...))},
	} {
		if _, err := ReadPatch(c.b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", c.name, err)
		}
	}
}

func FuzzReadPatch(f *testing.F) {
	tab := NewZero(64*4096, 4096)
	f.Add(PatchOf(tab, []int64{0, 1, 9, 63}).Marshal())
	f.Add(PatchOf(tab, nil).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ReadPatch(b)
		if err != nil {
			return
		}
		again, err := ReadPatch(p.Marshal())
		if err != nil || again.Entries() != p.Entries() {
			t.Fatalf("re-read failed: %v", err)
		}
		if Blocks(p.Size, p.BlockSize) > 1<<20 {
			return // a table that large is not the point here
		}
		base := NewZero(p.Size, p.BlockSize)
		if _, err := p.Apply(base); err != nil {
			t.Fatalf("a patch that parsed does not apply to its own geometry: %v", err)
		}
	})
}

func TestRunsJoinCloseEntries(t *testing.T) {
	tab := NewZero(64*4096, 4096)
	for _, c := range []struct {
		idx  []int64
		runs int
		n    int
	}{
		{[]int64{0, 3}, 1, 4},       // two apart: joined with the two between
		{[]int64{0, 4}, 2, 2},       // three apart: two runs
		{[]int64{5, 6, 7, 9}, 1, 5}, // one between
		{nil, 0, 0},
	} {
		runs := RunsAt(tab, c.idx)
		if len(runs) != c.runs || len(Indices(runs)) != c.n {
			t.Errorf("%v: %d runs of %d entries, want %d of %d", c.idx, len(runs), len(Indices(runs)), c.runs, c.n)
		}
	}
	next := tab.Clone()
	next.Hashes[10], next.Hashes[12], next.Hashes[30] = 1, 2, 3
	if got := Indices(DiffRuns(tab, next)); len(got) != 4 || got[0] != 10 || got[3] != 30 {
		t.Errorf("DiffRuns: entries %v, want 10 to 12 and 30", got)
	}
}
