package sender

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// Every failed step of saving the state is reported (a sender that
// believes a state durable that is not would trust a stale index), and
// after power loss the state reads as the old or the new index, whole.
func TestSavePendingFailures(t *testing.T) {
	index := func(epoch uint64) *Index {
		x := &Index{Epoch: epoch, Tables: map[string]*blockhash.Table{"disk/vda": blockhash.NewZero(1<<20, 65536)}}
		x.StateID = x.ComputeStateID()
		return x
	}
	setup := func() *memfs.FS {
		m := memfs.NewStrict()
		if err := (Store{FS: m, Dir: "/s"}).SavePending(index(1), nil); err != nil {
			t.Fatal(err)
		}
		return m
	}
	var c errorfs.Counter
	if err := (Store{FS: errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), Dir: "/s"}).SavePending(index(2), nil); err != nil {
		t.Fatal(err)
	}
	for i := range c.Count() {
		m := setup()
		idx := errorfs.OnIndex(i, nil)
		err := Store{FS: errorfs.Wrap(m, errorfs.When(errorfs.Mutations(), idx)), Dir: "/s"}.SavePending(index(2), nil)
		if idx.Fired() && err == nil {
			t.Errorf("failing mutation %d: SavePending returned nil", i)
		}
		_, pending, lerr := Store{FS: m.Crash(), Dir: "/s"}.Load()
		switch {
		case lerr != nil || pending == nil:
			t.Errorf("failing mutation %d: after power loss: %v %v", i, pending, lerr)
		case err == nil && pending.Epoch != 2:
			t.Errorf("failing mutation %d: saved, but epoch %d after power loss", i, pending.Epoch)
		}
	}
}

// Promoting the pending index renames it: every failed step is reported,
// and after power loss the committed index is the old or the new one,
// whole, with the new one never also left pending.
func TestPromotePendingFailures(t *testing.T) {
	index := func(epoch uint64) *Index {
		x := &Index{Epoch: epoch, Tables: map[string]*blockhash.Table{"ram/pc.ram": blockhash.NewZero(1<<20, 4096)}}
		x.StateID = x.ComputeStateID()
		return x
	}
	setup := func() *memfs.FS {
		m := memfs.NewStrict()
		st := Store{FS: m, Dir: "/s"}
		if err := st.Promote(index(1)); err != nil {
			t.Fatal(err)
		}
		if err := st.SavePending(index(2), nil); err != nil {
			t.Fatal(err)
		}
		return m
	}
	var c errorfs.Counter
	if err := (Store{FS: errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), Dir: "/s"}).PromotePending(index(2)); err != nil {
		t.Fatal(err)
	}
	if c.Count() == 0 {
		t.Fatal("promoting did not change the store")
	}
	for i := range c.Count() {
		m := setup()
		idx := errorfs.OnIndex(i, nil)
		err := Store{FS: errorfs.Wrap(m, errorfs.When(errorfs.Mutations(), idx)), Dir: "/s"}.PromotePending(index(2))
		if idx.Fired() && err == nil {
			t.Errorf("failing mutation %d: PromotePending returned nil", i)
		}
		committed, pending, lerr := Store{FS: m.Crash(), Dir: "/s"}.Load()
		switch {
		case lerr != nil || committed == nil:
			t.Errorf("failing mutation %d: after power loss: %v %v", i, committed, lerr)
		case err == nil && (committed.Epoch != 2 || pending != nil):
			t.Errorf("failing mutation %d: promoted, but committed %d and pending %v after power loss", i, committed.Epoch, pending)
		case committed.Epoch == 1 && (pending == nil || pending.Epoch != 2):
			t.Errorf("failing mutation %d: committed epoch 1 without pending epoch 2 after power loss", i)
		case committed.Epoch == 2 && pending != nil:
			t.Errorf("failing mutation %d: epoch 2 both committed and pending", i)
		}
	}
	// Without power loss, the promoted index reads back.
	m := setup()
	if err := (Store{FS: m, Dir: "/s"}).PromotePending(index(2)); err != nil {
		t.Fatal(err)
	}
	committed, pending, err := Store{FS: m, Dir: "/s"}.Load()
	if err != nil || committed == nil || committed.Epoch != 2 || pending != nil || committed.StateID != index(2).StateID {
		t.Fatalf("after PromotePending: committed %+v pending %v err %v", committed, pending, err)
	}
}

// chainIndexes is a deterministic history of indexes: each epoch writes a
// few RAM pages; some grow the disk, add or drop a second disk, or
// rewrite most of RAM (recorded whole, not as a delta).
func chainIndexes(n int) []*Index {
	rng := rand.New(rand.NewPCG(7, 7))
	x := &Index{Epoch: 1, Tables: map[string]*blockhash.Table{
		"ram/pc.ram": blockhash.NewZero(4<<20, 4096),
		"disk/vda":   blockhash.NewZero(1<<20, 65536),
	}}
	x.StateID = x.ComputeStateID()
	out := []*Index{x}
	for e := uint64(2); len(out) < n; e++ {
		prev := out[len(out)-1]
		x := &Index{Epoch: e, Tables: map[string]*blockhash.Table{}}
		for k, t := range prev.Tables {
			x.Tables[k] = t.Clone()
		}
		ram := x.Tables["ram/pc.ram"]
		writes := 1 + rng.IntN(6)
		if e%17 == 0 {
			writes = len(ram.Hashes) * 3 / 4
		}
		for range writes {
			ram.Hashes[rng.IntN(len(ram.Hashes))] = rng.Uint64()
		}
		switch e % 11 {
		case 3:
			x.Tables["disk/vda"].Resize(x.Tables["disk/vda"].Size + 65536 + 4096)
		case 5:
			x.Tables["disk/vdb"] = blockhash.NewZero(1<<20, 65536)
		case 8:
			delete(x.Tables, "disk/vdb")
		}
		x.StateID = x.ComputeStateID()
		out = append(out, x)
	}
	return out
}

func sameIndex(a, b *Index) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Epoch != b.Epoch || a.StateID != b.StateID || len(a.Tables) != len(b.Tables) {
		return false
	}
	for k, t := range a.Tables {
		if o := b.Tables[k]; o == nil || !t.Equal(o) {
			return false
		}
	}
	return true
}

// recordChain records xs as a sender does: each epoch pending, then
// promoted.
func recordChain(t *testing.T, st Store, xs []*Index) {
	t.Helper()
	var committed *Index
	for _, x := range xs {
		if err := st.SavePending(x, committed); err != nil {
			t.Fatalf("epoch %d: %v", x.Epoch, err)
		}
		if err := st.PromotePending(x); err != nil {
			t.Fatalf("epoch %d: %v", x.Epoch, err)
		}
		committed = x
	}
}

// The committed index is recorded as deltas and compacted; every epoch
// reads back exactly, and a steady epoch writes a small file.
func TestIndexDeltas(t *testing.T) {
	xs := chainIndexes(80)
	m := memfs.NewStrict()
	st := Store{FS: m, Dir: "/s"}
	var committed *Index
	sawDelta, sawCompaction := false, false
	for _, x := range xs {
		if err := st.SavePending(x, committed); err != nil {
			t.Fatal(err)
		}
		fi, err := m.Stat("/s/pending")
		if err != nil {
			t.Fatal(err)
		}
		if committed != nil && x.Epoch%17 != 0 && fi.Size() > 1024 {
			t.Errorf("epoch %d: pending is %d bytes for a few changed entries", x.Epoch, fi.Size())
		}
		if err := st.PromotePending(x); err != nil {
			t.Fatal(err)
		}
		eps, err := st.deltas()
		if err != nil {
			t.Fatal(err)
		}
		sawDelta = sawDelta || len(eps) > 0
		sawCompaction = sawCompaction || (sawDelta && len(eps) == 0)
		c, p, err := st.Load()
		if err != nil || p != nil || !sameIndex(c, x) {
			t.Fatalf("epoch %d: read back committed %v pending %v: %v", x.Epoch, c != nil, p != nil, err)
		}
		committed = x
	}
	if c, _, err := (Store{FS: m.Crash(), Dir: "/s"}).Load(); err != nil || !sameIndex(c, committed) {
		t.Fatalf("after power loss: %v", err)
	}
	if !sawDelta || !sawCompaction {
		t.Fatalf("deltas recorded %v, compacted %v", sawDelta, sawCompaction)
	}
}

// Failing every mutation of an epoch's recording, then losing power,
// leaves the committed index the old or the new one, whole, and pending
// absent or the new one: never another index.
func TestIndexDeltaFailures(t *testing.T) {
	xs := chainIndexes(70)
	// Which epochs compact: the deltas are gone after them.
	st := Store{FS: memfs.New(), Dir: "/s"}
	var compacts []int
	had := 0
	for k, x := range xs {
		var committed *Index
		if k > 0 {
			committed = xs[k-1]
		}
		if err := st.SavePending(x, committed); err != nil {
			t.Fatal(err)
		}
		if err := st.PromotePending(x); err != nil {
			t.Fatal(err)
		}
		eps, _ := st.deltas()
		if len(eps) == 0 && had > 0 && x.Epoch%17 != 0 {
			compacts = append(compacts, k)
		}
		had = len(eps)
	}
	if len(compacts) < 2 {
		t.Fatalf("the history compacts at %v only", compacts)
	}
	t.Logf("compactions after the recordings of indexes %v", compacts)
	// plain, table added, whole RAM, table dropped, two compactions, late
	for _, k := range []int{4, 15, 16, 18, compacts[0], compacts[len(compacts)-1], 69} {
		prev, x := xs[k-1], xs[k]
		setup := func() *memfs.FS {
			m := memfs.NewStrict()
			recordChain(t, Store{FS: m, Dir: "/s"}, xs[:k])
			return m
		}
		step := func(st Store) error {
			if err := st.SavePending(x, prev); err != nil {
				return err
			}
			return st.PromotePending(x)
		}
		var c errorfs.Counter
		if err := step(Store{FS: errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), Dir: "/s"}); err != nil {
			t.Fatal(err)
		}
		for i := range c.Count() {
			m := setup()
			idx := errorfs.OnIndex(i, nil)
			err := step(Store{FS: errorfs.Wrap(m, errorfs.When(errorfs.Mutations(), idx)), Dir: "/s"})
			if idx.Fired() && err == nil {
				t.Errorf("epoch %d, failing mutation %d: no error", x.Epoch, i)
			}
			cm, p, lerr := Store{FS: m.Crash(), Dir: "/s"}.Load()
			switch {
			case lerr != nil:
				t.Errorf("epoch %d, failing mutation %d, then power loss: %v", x.Epoch, i, lerr)
			case !sameIndex(cm, prev) && !sameIndex(cm, x):
				t.Errorf("epoch %d, failing mutation %d, then power loss: committed is neither epoch %d nor %d", x.Epoch, i, prev.Epoch, x.Epoch)
			case p != nil && !sameIndex(p, x):
				t.Errorf("epoch %d, failing mutation %d, then power loss: pending is not epoch %d", x.Epoch, i, x.Epoch)
			case err == nil && !sameIndex(cm, x):
				t.Errorf("epoch %d, failing mutation %d: recorded, but committed is epoch %d after power loss", x.Epoch, i, cm.Epoch)
			}
		}
	}
}

// A delta applied to an index other than its base is refused.
func TestIndexDeltaWrongBase(t *testing.T) {
	xs := chainIndexes(4)
	d, err := unmarshalDelta(diffIndex(xs[1], xs[2]).marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := d.apply(xs[1]); err != nil || !sameIndex(got, xs[2]) {
		t.Fatalf("on its base: %v", err)
	}
	for _, base := range []*Index{nil, xs[0], xs[2]} {
		if _, err := d.apply(base); !errors.Is(err, ErrCorruptState) {
			t.Errorf("on another base: %v", err)
		}
	}
	// Same epoch, other content.
	other := &Index{Epoch: xs[1].Epoch, Tables: map[string]*blockhash.Table{}}
	for k, t := range xs[1].Tables {
		other.Tables[k] = t.Clone()
	}
	other.Tables["ram/pc.ram"].Hashes[0]++
	other.StateID = other.ComputeStateID()
	if _, err := d.apply(other); !errors.Is(err, ErrCorruptState) {
		t.Errorf("on a base of the same epoch and other content: %v", err)
	}
}

// A delta file that decodes re-encodes to itself, and applying it to any
// index never panics: it gives the index it records or is refused.
func FuzzIndexDelta(f *testing.F) {
	xs := chainIndexes(20)
	for k := 1; k < len(xs); k += 4 {
		f.Add(diffIndex(xs[k-1], xs[k]).marshal(), uint8(k))
	}
	f.Fuzz(func(t *testing.T, b []byte, base uint8) {
		d, err := unmarshalDelta(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("error without ErrCorruptState: %v", err)
			}
			return
		}
		if !bytes.Equal(d.marshal(), b) {
			t.Fatal("a decoded delta does not re-encode to its file")
		}
		x, err := d.apply(xs[int(base)%len(xs)])
		if err == nil && (x.Epoch != d.epoch || x.ComputeStateID() != d.id) {
			t.Fatal("applied, but not to the index the delta records")
		}
	})
}
