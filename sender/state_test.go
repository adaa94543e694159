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
