package replica

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
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

// TestStageHashesOnlyChangedTables: Stage.Digests gives a target the
// epoch left alone (its table shared with the committed ones) the
// committed entry's digest without hashing it, and hashes the rest; a
// committed table that is merely equal, not the one given, is hashed.
// CheckCommit compares the sender's states with those digests.
func TestStageHashesOnlyChangedTables(t *testing.T) {
	data := bytes.Repeat([]byte("abcd"), 2048)
	targets := []wire.Target{
		{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 65536, BlockSize: 8192},
		{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: 32768, BlockSize: 4096},
	}
	disk, ram := blockhash.NewZero(65536, 8192), blockhash.NewZero(32768, 4096)
	// Not the RAM table's digest: only a table that is not hashed gets it.
	const committedRAM = 0xfeed
	man := &Manifest{Format: manifestFormat, VM: "web-1", Epoch: 1, Targets: []TargetEntry{
		{Kind: "disk", Name: "vda", Size: 65536, BlockSize: 8192, File: "disk-0.img", Table: "disk-0.bht", Digest: disk.Digest()},
		{Kind: "ram", Name: "pc.ram", Size: 32768, BlockSize: 4096, File: "ram-0.img", Table: "ram-0.bht", Digest: committedRAM},
	}}
	st, err := NewStage(man, &wire.EpochBegin{Epoch: 2, Items: 1, Bytes: uint64(len(data)), Targets: targets}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Item(&wire.DiskExtent{Seq: 0, Target: 0, Offset: 8192, Data: data}, 0); err != nil {
		t.Fatal(err)
	}
	view := func(uint16, int64, int) ([]byte, error) { t.Fatal("no page references to read"); return nil, nil }
	old := map[string]*blockhash.Table{Key(vmspec.KindDisk, "vda"): disk, Key(vmspec.KindRAM, "pc.ram"): ram}
	tables, err := st.Tables(old, view)
	if err != nil {
		t.Fatal(err)
	}
	got := st.Digests(tables, old)
	if got[1] != committedRAM {
		t.Errorf("unwritten RAM block: digest %x, want the committed entry's %x", got[1], committedRAM)
	}
	if got[0] != tables[0].Digest() || got[0] == disk.Digest() {
		t.Errorf("written disk: digest %x, want its new table's %x", got[0], tables[0].Digest())
	}
	equal := map[string]*blockhash.Table{Key(vmspec.KindDisk, "vda"): disk, Key(vmspec.KindRAM, "pc.ram"): ram.Clone()}
	if d := st.Digests(tables, equal)[1]; d != ram.Digest() {
		t.Errorf("RAM table not the one given: digest %x, want it hashed (%x)", d, ram.Digest())
	}

	c := &wire.EpochCommit{Epoch: 2, Items: 1, Digest: st.s.digest.Sum(), States: []wire.TargetDigest{{Target: 0, Digest: got[0]}, {Target: 1, Digest: committedRAM}}}
	if err := st.CheckCommit(c, got); err != nil {
		t.Fatalf("commit with the stage's states: %v", err)
	}
	c.States[0].Digest++
	if err := st.CheckCommit(c, got); !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), `disk "vda"`) {
		t.Fatalf("commit expecting another disk state: %v, want ErrDigest naming the disk", err)
	}
}
