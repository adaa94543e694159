package memfs_test

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
)

func TestSparseFileCostsNothing(t *testing.T) {
	fsys := memfs.New()
	f, err := fsys.Create("/image")
	must(t, err)
	must(t, f.Truncate(1<<30))
	if u := fsys.Used(); u != 0 {
		t.Errorf("Used = %d after growing an empty file", u)
	}
	_, err = f.WriteAt(make([]byte, 3<<20), 512<<20)
	must(t, err)
	if u := fsys.Used(); u != 3<<20 {
		t.Errorf("Used = %d after writing 3 MiB aligned, want %d", u, 3<<20)
	}
	// A huge hole is handled without walking every chunk in it.
	must(t, f.PunchHole(0, 1<<50))
	if u := fsys.Used(); u != 0 {
		t.Errorf("Used = %d after punching everything", u)
	}
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != 1<<30 {
		t.Errorf("size %d after punch", fi.Size())
	}
}

func TestCapacity(t *testing.T) {
	const cs = memfs.ChunkSize
	fsys := memfs.NewStrict()
	fsys.SetCapacity(2 * cs)
	f, err := fsys.Create("/f")
	must(t, err)

	_, err = f.WriteAt([]byte("a"), 0)
	must(t, err)
	// Needs two more chunks, one is left: nothing may be written.
	_, err = f.WriteAt(bytes.Repeat([]byte("b"), cs+2), 2*cs-1)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past capacity: %v, want ENOSPC", err)
	}
	if fi, _ := f.Stat(); fi.Size() != 1 {
		t.Errorf("failed write changed size to %d", fi.Size())
	}
	// Rewriting allocated chunks needs no space.
	_, err = f.WriteAt(bytes.Repeat([]byte("c"), cs), 0)
	must(t, err)
	if u := fsys.Used(); u != cs {
		t.Errorf("Used = %d, want %d", u, cs)
	}

	// Allocate takes the last chunk; writing there then succeeds while
	// any other new chunk fails.
	must(t, f.Allocate(5*cs, 10))
	if err := f.Allocate(7*cs, 1); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Allocate past capacity: %v, want ENOSPC", err)
	}
	_, err = f.WriteAt([]byte("d"), 5*cs+3)
	must(t, err)
	if _, err := f.WriteAt([]byte("e"), 3*cs); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at capacity: %v, want ENOSPC", err)
	}

	// Freeing space, by hole or truncation or removal, makes room again.
	must(t, f.PunchHole(5*cs, cs))
	_, err = f.WriteAt([]byte("e"), 3*cs)
	must(t, err)
	must(t, f.Truncate(1))
	if u := fsys.Used(); u != cs {
		t.Errorf("Used = %d after truncate, want %d", u, cs)
	}
	must(t, f.Close())
	must(t, fsys.Remove("/f"))
	if u := fsys.Used(); u != 0 {
		t.Errorf("Used = %d after remove", u)
	}

	// The limit and accounting carry over a crash (here nothing was durable).
	after := fsys.Crash()
	g, err := after.Create("/g")
	must(t, err)
	if _, err := g.WriteAt(make([]byte, 3*cs), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("capacity lost in crash: %v", err)
	}
}

func TestPartialChunkTruncateZeroes(t *testing.T) {
	for _, strict := range []bool{false, true} {
		fsys := memfs.New()
		if strict {
			fsys = memfs.NewStrict()
		}
		f, err := fsys.Create("/f")
		must(t, err)
		_, err = f.Write(bytes.Repeat([]byte{0xff}, 3*memfs.ChunkSize/2))
		must(t, err)
		must(t, f.Sync())
		must(t, fsys.SyncDir("/"))
		must(t, f.Truncate(100))
		must(t, f.Truncate(2*memfs.ChunkSize))
		got := make([]byte, 2*memfs.ChunkSize)
		_, err = f.ReadAt(got, 0)
		must(t, err)
		if !bytes.Equal(got[:100], bytes.Repeat([]byte{0xff}, 100)) {
			t.Errorf("strict=%v: prefix lost", strict)
		}
		if !bytes.Equal(got[100:], make([]byte, len(got)-100)) {
			t.Errorf("strict=%v: truncated bytes came back", strict)
		}
		// The synced image is untouched by the truncation.
		if strict {
			if got := contents(t, fsys.Crash(), "/f"); len(got) != 3*memfs.ChunkSize/2 || got[100] != 0xff {
				t.Errorf("durable image changed: len %d", len(got))
			}
		}
	}
}

func TestRenameErrors(t *testing.T) {
	fsys := memfs.New()
	must(t, fsys.MkdirAll("/a/b", 0o755))
	must(t, fsys.MkdirAll("/full/x", 0o755))
	h{t, fsys}.create("/f", "x", false)
	for _, c := range []struct {
		old, new string
		want     error
	}{
		{"/a", "/a/b/c", syscall.EINVAL},
		{"/f", "/a", syscall.EISDIR},
		{"/a", "/f", syscall.ENOTDIR},
		{"/a/b", "/full", syscall.ENOTEMPTY},
		{"/f", "/missing/f", syscall.ENOENT},
	} {
		if err := fsys.Rename(c.old, c.new); !errors.Is(err, c.want) {
			t.Errorf("Rename(%s, %s) = %v, want %v", c.old, c.new, err, c.want)
		}
	}
	must(t, fsys.Rename("/f", "/f"))
	must(t, fsys.Rename("/a/b", "/full/x"))
	if _, err := fsys.Stat("/full/x"); err != nil {
		t.Error(err)
	}
}

// Locks are process state: power loss drops them, and the crashed FS's
// holder cannot take the lock back from the new one.
func TestLockDoesNotSurviveCrash(t *testing.T) {
	m := memfs.NewStrict()
	l, err := m.Lock("/LOCK", "before the crash")
	if err != nil {
		t.Fatal(err)
	}
	after := m.Crash()
	l2, err := after.Lock("/LOCK", "after the crash")
	if err != nil {
		t.Fatalf("Lock after Crash: %v", err)
	}
	l.Unlock() // the dead process's handle must not release the new holder
	if _, err := after.Lock("/LOCK", "third"); !errors.Is(err, vfs.ErrLocked) {
		t.Errorf("Lock while held after the crash: %v, want vfs.ErrLocked", err)
	}
	if _, err := m.Lock("/LOCK", "x"); !errors.Is(err, memfs.ErrCrashed) {
		t.Errorf("Lock on the crashed FS: %v, want ErrCrashed", err)
	}
	l2.Unlock()
}
