package warmset

import (
	"os"
	"reflect"
	"testing"
)

func TestTrackerHeat(t *testing.T) {
	tr, err := New(64*PageSize, Options{MaxBytes: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	// Pages 0-3 written every epoch, page 10 once in the first epoch.
	for e := 1; e <= 6; e++ {
		tr.Written(0, 4)
		if e == 1 {
			tr.Written(10, 1)
		}
		tr.EndEpoch()
		hot := tr.Hot()
		want := []Run{{0, 4}}
		if e <= 5 {
			// 64, then 32, 16, 8, 4: hot for four epochs after the one it was written in.
			want = append(want, Run{10, 1})
		}
		if !reflect.DeepEqual(hot, want) {
			t.Fatalf("epoch %d: hot %v, want %v", e, hot, want)
		}
	}
	if HotBytes(tr.Hot()) != 4*PageSize {
		t.Fatalf("hot bytes %d", HotBytes(tr.Hot()))
	}
}

func TestTrackerCapKeepsHottest(t *testing.T) {
	tr, _ := New(100*PageSize, Options{MaxBytes: 5 * PageSize})
	tr.Written(0, 100) // everything once
	tr.EndEpoch()
	tr.Written(50, 3) // these twice
	tr.Written(90, 1)
	tr.EndEpoch()
	got := tr.Hot()
	want := []Run{{0, 1}, {50, 3}, {90, 1}} // the 4 hottest, then the lowest address of the rest
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("capped hot set %v, want %v", got, want)
	}
	if HotBytes(got) > 5*PageSize {
		t.Fatal("cap exceeded")
	}
}

func TestWrittenClipsAndIgnoresBadRanges(t *testing.T) {
	tr, _ := New(8*PageSize, Options{})
	tr.Written(6, 100)
	tr.Written(-5, 3)
	tr.Written(100, 1)
	tr.EndEpoch()
	if got := tr.Hot(); !reflect.DeepEqual(got, []Run{{6, 2}}) {
		t.Fatalf("hot %v", got)
	}
	if _, err := New(4097, Options{}); err == nil {
		t.Fatal("a size that is not whole pages was accepted")
	}
}

func TestDiff(t *testing.T) {
	a := []Run{{0, 10}, {20, 5}}
	b := []Run{{3, 2}, {20, 1}, {24, 10}}
	if got, want := Diff(a, b), []Run{{0, 3}, {5, 5}, {21, 3}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
}

func TestPin(t *testing.T) {
	path := t.TempDir() + "/ram.img"
	if err := os.WriteFile(path, make([]byte, 64*PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := OpenPin(path, 64*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Set([]Run{{0, 4}, {10, 2}}); err != nil {
		t.Fatal(err)
	}
	if p.Locked() != 6*PageSize {
		t.Fatalf("locked %d", p.Locked())
	}
	if err := p.Set([]Run{{2, 4}}); err != nil {
		t.Fatal(err)
	}
	if p.Locked() != 4*PageSize {
		t.Fatalf("locked %d", p.Locked())
	}
	if got := merge([]Run{{0, 2}, {5, 1}}, []Run{{1, 3}}); !reflect.DeepEqual(got, []Run{{0, 4}, {5, 1}}) {
		t.Fatalf("merge = %v", got)
	}
}

func TestKeeper(t *testing.T) {
	path := t.TempDir() + "/ram.img"
	if err := os.WriteFile(path, make([]byte, 256*PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	k := NewKeeper(Options{}, nil)
	defer k.Close()
	var hot int64
	for range 3 {
		hot = k.Commit("web-1", []BlockEpoch{{Name: "pc.ram", File: path, Size: 256 * PageSize, Written: []Run{{0, 8}, {100, 2}}}})
	}
	k.Flush()
	if hot != 10*PageSize || k.Pinned("web-1") != 10*PageSize || k.Pinned("web-10") != 0 {
		t.Fatalf("hot %d, pinned %d", hot, k.Pinned("web-1"))
	}
	// Pages no longer written cool off and are unpinned.
	for range 8 {
		hot = k.Commit("web-1", []BlockEpoch{{Name: "pc.ram", File: path, Size: 256 * PageSize, Written: []Run{{0, 1}}}})
	}
	k.Flush()
	if hot != PageSize || k.Pinned("web-1") != PageSize {
		t.Fatalf("after cooling: hot %d, pinned %d", hot, k.Pinned("web-1"))
	}
}
