package replica_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// firstEpoch is a first epoch of one 64 KiB disk: a block of data at 0
// and a zero run at 4096, and what the disk then holds.
func firstEpoch() (*wire.EpochBegin, []wire.Item, *wire.EpochCommit, []byte) {
	const size, bs = 64 << 10, 4096
	disk := make([]byte, size)
	data := bytes.Repeat([]byte{7}, bs)
	copy(disk, data)
	items := []wire.Item{
		&wire.DiskExtent{Seq: 0, Target: 0, Offset: 0, Data: data},
		&wire.ZeroRun{Seq: 1, Target: 0, Offset: bs, Length: bs},
	}
	b := &wire.EpochBegin{Epoch: 1, Cut: time.Unix(1_700_000_000, 0).UTC(), Plan: 1, Items: 2, Bytes: bs,
		Targets: []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: size, BlockSize: bs}}}
	dig := wire.NewEpochDigest(1)
	for _, it := range items {
		var dh uint64
		if d := wire.DataOf(it); d != nil {
			dh = xxhash.Sum64(d)
		}
		dig.Add(wire.Summarize(it, dh))
	}
	c := &wire.EpochCommit{Epoch: 1, Items: 2, Digest: dig.Sum(),
		States: []wire.TargetDigest{{Target: 0, Digest: blockhash.Of(disk, bs).Digest()}}}
	return b, items, c, disk
}

const eagerImage = "/replicas/web-1/disk-0.img" // the first new disk's image

func readImage(t *testing.T, m *memfs.FS) []byte {
	t.Helper()
	f, err := m.Open(eagerImage)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 64<<10)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func fileStore(m *memfs.FS) replica.FileStore {
	return replica.FileStore{FS: m, Root: "/replicas", Now: func() time.Time { return time.Unix(1_700_000_000, 0) }}
}

// stageFirst opens web-1 in s and stages the first n items of the first
// epoch.
func stageFirst(t *testing.T, s replica.Store, n int) replica.Handle {
	t.Helper()
	b, items, _, _ := firstEpoch()
	h, err := s.Open(t.Context(), "web-1", replica.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Begin(b); err != nil {
		t.Fatal(err)
	}
	for _, it := range items[:n] {
		if err := h.Append(it); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// commitAndCheck syncs and commits what h staged and compares the image
// with disk.
func commitAndCheck(t *testing.T, h replica.Handle, m *memfs.FS, c *wire.EpochCommit, disk []byte) {
	t.Helper()
	if _, err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := h.Commit(c); err != nil {
		t.Fatal(err)
	}
	if got := readImage(t, m); !bytes.Equal(got, disk) {
		for i := range got {
			if got[i] != disk[i] {
				t.Fatalf("the committed image differs from the epoch from byte %d: %x, want %x", i, got[i], disk[i])
			}
		}
	}
}

// A new target's image is written as its items arrive, not only at commit.
func TestNewTargetWrittenAsItemsArrive(t *testing.T) {
	m := memfs.New()
	_, items, c, disk := firstEpoch()
	h := stageFirst(t, fileStore(m), 1)
	defer h.Close()
	if got := readImage(t, m); !bytes.Equal(got[:4096], disk[:4096]) {
		t.Fatal("the staged block is not in the new image before the commit")
	}
	if err := h.Append(items[1]); err != nil {
		t.Fatal(err)
	}
	commitAndCheck(t, h, m, c, disk)
}

// After a restart the image may hold writes whose items never became
// durable (a crash kept the image's pages, not the journal's): the
// commit starts it empty and writes it from the journal.
func TestNewImageEmptiedAfterRestart(t *testing.T) {
	m := memfs.New()
	s := fileStore(m)
	b, items, c, disk := firstEpoch()
	h := stageFirst(t, s, 1)
	if _, err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	f, err := m.OpenReadWrite(eagerImage)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	h, err = s.Open(t.Context(), "web-1", replica.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	resume := *b
	resume.StartSeq = 1
	if err := h.Begin(&resume); err != nil {
		t.Fatal(err)
	}
	if err := h.Append(items[1]); err != nil {
		t.Fatal(err)
	}
	commitAndCheck(t, h, m, c, disk)
}

// An epoch discarded at its commit (the digests differ) leaves no image.
func TestDiscardedEpochLeavesNoImage(t *testing.T) {
	m := memfs.New()
	_, _, c, _ := firstEpoch()
	h := stageFirst(t, fileStore(m), 2)
	defer h.Close()
	bad := *c
	bad.States = []wire.TargetDigest{{Target: 0, Digest: c.States[0].Digest + 1}}
	if err := h.Commit(&bad); !errors.Is(err, replica.ErrDigest) {
		t.Fatalf("commit with another state: %v, want ErrDigest", err)
	}
	if _, err := m.Stat(eagerImage); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the discarded epoch's image: %v, want it removed", err)
	}
}

// writebackFS counts the writeback requests made of the files it opens
// for writing, by name.
type writebackFS struct {
	vfs.FS
	mu    sync.Mutex
	calls map[string]int
}

type writebackFile struct {
	vfs.File
	fs   *writebackFS
	name string
}

func (w *writebackFS) OpenReadWrite(name string) (vfs.File, error) {
	f, err := w.FS.OpenReadWrite(name)
	if err != nil {
		return nil, err
	}
	return &writebackFile{File: f, fs: w, name: name}, nil
}

func (f *writebackFile) StartWriteback() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.fs.calls[f.name]++
	return nil
}

// A new image's writeback starts every 8 MiB written into it while the
// epoch is staged, so the commit's sync finds the data mostly on disk.
func TestNewImageWrittenBackAsItArrives(t *testing.T) {
	const size, bs, chunk = 20 << 20, 4096, 4 << 20
	wfs := &writebackFS{FS: memfs.New(), calls: map[string]int{}}
	s := replica.FileStore{FS: wfs, Root: "/replicas", Now: func() time.Time { return time.Unix(1_700_000_000, 0) }}
	h, err := s.Open(t.Context(), "web-1", replica.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	b := &wire.EpochBegin{Epoch: 1, Cut: time.Unix(1_700_000_000, 0).UTC(), Plan: 1, Items: 5, Bytes: size,
		Targets: []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: size, BlockSize: bs}}}
	if err := h.Begin(b); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := h.Append(&wire.DiskExtent{Seq: uint64(i), Target: 0, Offset: uint64(i * chunk), Data: bytes.Repeat([]byte{byte(i + 1)}, chunk)}); err != nil {
			t.Fatal(err)
		}
	}
	wfs.mu.Lock()
	defer wfs.mu.Unlock()
	if got := wfs.calls[eagerImage]; got != 2 { // at 8 and 16 MiB
		t.Errorf("writeback of %s asked %d times for 20 MiB, want 2 (calls: %v)", eagerImage, got, wfs.calls)
	}
}

// refEpoch is a first epoch of a 64 KiB disk (target 0) and 64 KiB of RAM
// (target 1) made of items, whose end state is disk and ram.
func refEpoch(items []wire.Item, disk, ram []byte) (*wire.EpochBegin, *wire.EpochCommit) {
	const bs = 4096
	var data uint64
	dig := wire.NewEpochDigest(1)
	for _, it := range items {
		var dh uint64
		if d := wire.DataOf(it); d != nil {
			dh = xxhash.Sum64(d)
			data += uint64(len(d))
		}
		dig.Add(wire.Summarize(it, dh))
	}
	b := &wire.EpochBegin{Epoch: 1, Cut: time.Unix(1_700_000_000, 0).UTC(), Plan: 1, Items: uint64(len(items)), Bytes: data,
		Targets: []wire.Target{
			{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: uint64(len(disk)), BlockSize: bs},
			{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: uint64(len(ram)), BlockSize: vmspec.PageSize},
		}}
	c := &wire.EpochCommit{Epoch: 1, Items: uint64(len(items)), Digest: dig.Sum(),
		States: []wire.TargetDigest{
			{Target: 0, Digest: blockhash.Of(disk, bs).Digest()},
			{Target: 1, Digest: blockhash.Of(ram, vmspec.PageSize).Digest()},
		}}
	return b, c
}

// ramImage reads the RAM target's image file, whatever its name.
func ramImage(t *testing.T, m *memfs.FS) []byte {
	t.Helper()
	names, err := m.List("/replicas/web-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, "ram-") && strings.HasSuffix(n, ".img") {
			f, err := m.Open("/replicas/web-1/" + n)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 64<<10)
			if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no RAM image among %v", names)
	return nil
}

// A first epoch's references are written into the RAM image as they
// arrive, and the committed image is what apply's rule says (references
// last, reading every target after its data) even when an item staged
// after a reference changes its source or its page: apply then writes the
// references again.
func TestReferencesAppliedAsTheyArrive(t *testing.T) {
	const pg = vmspec.PageSize
	a, b := bytes.Repeat([]byte{0xaa}, pg), bytes.Repeat([]byte{0xbb}, pg)
	ref := &wire.PageRef{Target: 1, Page: 2, Count: 1, Source: wire.RefDisk, SrcTarget: 0, SrcOffset: 0}
	withA := func() []byte { d := make([]byte, 64<<10); copy(d, a); return d }
	ramWith := func(p []byte) []byte { r := make([]byte, 64<<10); copy(r[2*pg:], p); return r }
	for _, tc := range []struct {
		name  string
		items []wire.Item
		early bool // the reference's page holds its source before the commit
		disk  []byte
		ram   []byte
	}{
		{"source first", []wire.Item{&wire.DiskExtent{Target: 0, Offset: 0, Data: a}, ref}, true, withA(), ramWith(a)},
		{"source after the reference", []wire.Item{ref, &wire.DiskExtent{Target: 0, Offset: 0, Data: a}}, false, withA(), ramWith(a)},
		{"source in RAM", []wire.Item{&wire.MemRun{Target: 1, Page: 0, Data: b}, &wire.PageRef{Target: 1, Page: 2, Count: 1, Source: wire.RefPage, SrcTarget: 1, SrcOffset: 0}},
			true, make([]byte, 64<<10), func() []byte { r := ramWith(b); copy(r, b); return r }()},
		{"page written after the reference", []wire.Item{&wire.DiskExtent{Target: 0, Offset: 0, Data: a}, ref, &wire.MemRun{Target: 1, Page: 2, Data: b}}, false, withA(), ramWith(a)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			items := make([]wire.Item, len(tc.items))
			for i, it := range tc.items {
				switch it := it.(type) {
				case *wire.PageRef:
					c := *it
					c.Seq = uint64(i)
					items[i] = &c
				case *wire.DiskExtent:
					c := *it
					c.Seq = uint64(i)
					items[i] = &c
				case *wire.MemRun:
					c := *it
					c.Seq = uint64(i)
					items[i] = &c
				}
			}
			begin, commit := refEpoch(items, tc.disk, tc.ram)
			m := memfs.New()
			h, err := fileStore(m).Open(t.Context(), "web-1", replica.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if err := h.Begin(begin); err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				if err := h.Append(it); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := ramImage(t, m)[2*pg:3*pg], tc.ram[2*pg:3*pg]; tc.early && !bytes.Equal(got, want) {
				t.Errorf("before the commit the reference's page holds %x…, want its source %x…", got[:4], want[:4])
			}
			if _, err := h.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := h.Commit(commit); err != nil {
				t.Fatal(err)
			}
			if got := ramImage(t, m); !bytes.Equal(got, tc.ram) {
				t.Errorf("committed RAM page 2 holds %x…, want %x…", got[2*pg:2*pg+4], tc.ram[2*pg:2*pg+4])
			}
		})
	}
}
