package sender

import (
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
		if err := (Store{FS: m, Dir: "/s"}).SavePending(index(1)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	var c errorfs.Counter
	if err := (Store{FS: errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), Dir: "/s"}).SavePending(index(2)); err != nil {
		t.Fatal(err)
	}
	for i := range c.Count() {
		m := setup()
		idx := errorfs.OnIndex(i, nil)
		err := Store{FS: errorfs.Wrap(m, errorfs.When(errorfs.Mutations(), idx)), Dir: "/s"}.SavePending(index(2))
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
		if err := st.SavePending(index(2)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	var c errorfs.Counter
	if err := (Store{FS: errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), Dir: "/s"}).PromotePending(); err != nil {
		t.Fatal(err)
	}
	if c.Count() == 0 {
		t.Fatal("promoting did not change the store")
	}
	for i := range c.Count() {
		m := setup()
		idx := errorfs.OnIndex(i, nil)
		err := Store{FS: errorfs.Wrap(m, errorfs.When(errorfs.Mutations(), idx)), Dir: "/s"}.PromotePending()
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
	if err := (Store{FS: m, Dir: "/s"}).PromotePending(); err != nil {
		t.Fatal(err)
	}
	committed, pending, err := Store{FS: m, Dir: "/s"}.Load()
	if err != nil || committed == nil || committed.Epoch != 2 || pending != nil || committed.StateID != index(2).StateID {
		t.Fatalf("after PromotePending: committed %+v pending %v err %v", committed, pending, err)
	}
}
