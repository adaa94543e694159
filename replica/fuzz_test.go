package replica

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

func sampleManifest() *Manifest {
	m := &Manifest{Format: manifestFormat, VM: "web-1", Epoch: 3, Cut: time.Unix(1700000000, 0).UTC(),
		Targets:     []TargetEntry{{Kind: "disk", Name: "vda", Size: 1 << 20, BlockSize: 65536, File: "disk-0.img", Table: "disk-0.bht", Digest: 1}},
		DeviceState: &DeviceStateInfo{File: "devstate-3.bin", Size: 10, Hash: 2}}
	m.StateID = m.ComputeStateID()
	return m
}

func TestManifestRejects(t *testing.T) {
	good, err := sampleManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseManifest(good); err != nil {
		t.Fatal(err)
	}
	edit := func(fn func(m *Manifest)) []byte {
		m := sampleManifest()
		fn(m)
		b, _ := m.Marshal()
		return b
	}
	cases := map[string][]byte{
		"flipped byte":    func() []byte { b := bytes.Clone(good); b[20] ^= 1; return b }(),
		"no trailer":      good[:bytes.LastIndex(good, []byte("xxh64"))],
		"truncated":       good[:len(good)/2],
		"path escape":     edit(func(m *Manifest) { m.Targets[0].File = "../../etc/passwd"; m.StateID = m.ComputeStateID() }),
		"absolute path":   edit(func(m *Manifest) { m.Targets[0].Table = "/etc/x" }),
		"bad vm":          edit(func(m *Manifest) { m.VM = "../x" }),
		"state id":        edit(func(m *Manifest) { m.StateID++ }),
		"dup target":      edit(func(m *Manifest) { m.Targets = append(m.Targets, m.Targets[0]) }),
		"bad block size":  edit(func(m *Manifest) { m.Targets[0].BlockSize = 1000; m.StateID = m.ComputeStateID() }),
		"devstate escape": edit(func(m *Manifest) { m.DeviceState.File = "../devstate" }),
		"format":          edit(func(m *Manifest) { m.Format = 9 }),
	}
	for name, b := range cases {
		if _, err := ParseManifest(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	good, _ := sampleManifest().Marshal()
	f.Add(good)
	f.Add([]byte("{}\nxxh64 0000000000000000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		again, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseManifest(again); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// FuzzRecover puts arbitrary bytes where a replica's journal lives and opens
// the replica: recovery may refuse, but it must not panic, and it must never
// move a replica that had nothing committed past epoch 0 unless the journal
// really held a whole, valid epoch 1.
func FuzzRecover(f *testing.F) {
	f.Add([]byte("DRJRNL01"))
	f.Add(seedJournal(f, false))
	f.Add(seedJournal(f, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		fsys := memfs.New()
		if err := fsys.MkdirAll("/r", 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, fsys, "/r/journal", b)
		r, err := Open(Options{FS: fsys, Dir: "/r", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }, MaxTargetSize: 1 << 24})
		if err != nil {
			return
		}
		defer r.Close()
		if e := r.Manifest().Epoch; e > 1 {
			t.Fatalf("recovered to epoch %d from an arbitrary journal", e)
		}
		if r.Manifest().Epoch == 1 {
			rep, err := Verify(fsys, "/r", "web-1")
			if err == nil && !rep.OK() {
				t.Fatalf("recovered epoch fails verify: %v", rep.Problems)
			}
		}
		_ = wire.Version
	})
}

func writeFile(t *testing.T, fsys vfs.FS, name string, b []byte) {
	f, err := fsys.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// seedJournal stages epoch 1 of web-1 in a scratch replica and returns its
// journal, with or without the commit record.
func seedJournal(t testing.TB, commit bool) []byte {
	fsys := memfs.New()
	r, err := Open(Options{FS: fsys, Dir: "/s", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte("abcd"), 2048)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Begin(&wire.EpochBegin{Epoch: 1, Items: 4, Bytes: uint64(2*len(data) + 5), Targets: []wire.Target{
		{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 65536, BlockSize: 8192},
		{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: 32768, BlockSize: 4096}}}))
	must(r.Append(&wire.DiskExtent{Seq: 0, Target: 0, Offset: 8192, Data: data}))
	must(r.Append(&wire.MemRun{Seq: 1, Target: 1, Page: 2, Data: data}))
	must(r.Append(&wire.PageRef{Seq: 2, Target: 1, Page: 5, Count: 1, Source: wire.RefDisk, SrcTarget: 0, SrcOffset: 8192}))
	must(r.Append(&wire.DeviceState{Seq: 3, Total: 5, Data: []byte("state")}))
	if _, err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if commit {
		c := &wire.EpochCommit{Epoch: 1, Items: 4, Digest: r.st.digest.Sum()}
		tabs, err := r.newTables(r.st)
		must(err)
		for id, tg := range r.st.targets {
			c.States = append(c.States, wire.TargetDigest{Target: id, Digest: tabs[key(tg.Kind, tg.Name)].Digest()})
		}
		// Append the commit without applying, as a crash right after the
		// commit record became durable would leave it.
		must(r.jw.Append(c))
		must(r.jw.Sync())
	}
	b, err := readFile(fsys, "/s/journal")
	must(err)
	return b
}

func TestRecoverSeeds(t *testing.T) {
	for _, commit := range []bool{false, true} {
		fsys := memfs.New()
		fsys.MkdirAll("/r", 0o755)
		writeFile(t, fsys, "/r/journal", seedJournal(t, commit))
		r, err := Open(Options{FS: fsys, Dir: "/r", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }})
		if err != nil {
			t.Fatal(err)
		}
		pos := r.Position()
		r.Close()
		if commit && pos.Committed != 1 {
			t.Fatalf("committed journal not replayed: %+v", pos)
		}
		if !commit && (pos.Committed != 0 || pos.StagedEpoch != 1 || pos.StagedDurable != 4) {
			t.Fatalf("staged journal not kept for resume: %+v", pos)
		}
		if commit {
			rep, err := Verify(fsys, "/r", "web-1")
			if err != nil || !rep.OK() {
				t.Fatalf("verify: %v %v", err, rep.Problems)
			}
		}
	}
}
