package replica

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// TestUnwrittenTargetKeepsItsTable: an epoch that writes only the disk
// keeps the RAM block's committed table as it is, not a copy, and leaves
// its table file alone; the RAM block the next epoch writes gets a new
// table.
func TestUnwrittenTargetKeepsItsTable(t *testing.T) {
	var ramTableOps []string
	fsys := errorfs.Wrap(memfs.New(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if strings.HasSuffix(op.Path, "ram-0.bht") {
			ramTableOps = append(ramTableOps, op.String())
		}
		return nil
	}))
	r, err := Open(Options{FS: fsys, Dir: "/r", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte("abcd"), 2048)
	targets := []wire.Target{
		{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 65536, BlockSize: 8192},
		{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: 32768, BlockSize: 4096},
	}
	epoch := func(e uint64, items ...wire.Item) {
		t.Helper()
		if err := r.Begin(&wire.EpochBegin{Epoch: e, Items: uint64(len(items)), Bytes: uint64(len(data) * len(items)), Targets: targets}); err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if err := r.Append(it); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Sync(); err != nil {
			t.Fatal(err)
		}
		c := &wire.EpochCommit{Epoch: e, Items: uint64(len(items)), Digest: r.st.digest.Sum()}
		tabs, err := r.newTables(r.st)
		if err != nil {
			t.Fatal(err)
		}
		for id, tg := range r.st.targets {
			c.States = append(c.States, wire.TargetDigest{Target: id, Digest: tabs[key(tg.Kind, tg.Name)].Digest()})
		}
		if err := r.Commit(c); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
	}
	epoch(1, &wire.DiskExtent{Seq: 0, Target: 0, Offset: 0, Data: data}, &wire.MemRun{Seq: 1, Target: 1, Page: 1, Data: data})
	ram := r.Table(vmspec.KindRAM, "pc.ram")
	ramTableOps = nil
	epoch(2, &wire.DiskExtent{Seq: 0, Target: 0, Offset: 8192, Data: data})
	if got := r.Table(vmspec.KindRAM, "pc.ram"); got != ram {
		t.Error("an epoch that did not write the RAM block replaced its table")
	}
	if len(ramTableOps) > 0 {
		t.Errorf("an epoch that did not write the RAM block touched its table file: %v", ramTableOps)
	}
	epoch(3, &wire.MemRun{Seq: 0, Target: 1, Page: 4, Data: data})
	if got := r.Table(vmspec.KindRAM, "pc.ram"); got == ram || got.Equal(ram) {
		t.Error("an epoch that wrote the RAM block kept its old table")
	}
	if ram.Hashes[4] == r.Table(vmspec.KindRAM, "pc.ram").Hashes[4] {
		t.Error("the committed table of epoch 2 was changed in place")
	}
	r.Close()
	if rep, err := Verify(fsys, "/r", "web-1"); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
}
