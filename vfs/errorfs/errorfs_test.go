package errorfs_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// scenario performs a fixed sequence of operations and stops at the first
// error, as production code would.
func scenario(fsys vfs.FS) error {
	if err := fsys.MkdirAll("/d", 0o755); err != nil {
		return err
	}
	f, err := fsys.Create("/d/f")
	if err != nil {
		return err
	}
	// No deferred Close: its error would be dropped, and every op must be
	// observable.
	for _, step := range []func() error{
		func() error { _, err := f.Write([]byte("hello")); return err },
		func() error { _, err := f.WriteAt([]byte("H"), 0); return err },
		func() error { _, err := f.ReadAt(make([]byte, 5), 0); return err },
		func() error { return f.Truncate(4) },
		func() error { return f.Allocate(0, 100) },
		func() error { return f.PunchHole(1, 1) },
		f.Sync,
		func() error { _, err := f.Stat(); return err },
		f.Close,
		func() error { return fsys.Rename("/d/f", "/d/g") },
		func() error { return fsys.SyncDir("/d") },
		func() error { _, err := fsys.List("/d"); return err },
		func() error { _, err := fsys.Stat("/d/g"); return err },
		func() error { return fsys.Remove("/d/g") },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func TestOnIndexFailsExactlyThatOp(t *testing.T) {
	var c errorfs.Counter
	if err := scenario(errorfs.Wrap(memfs.New(), &c)); err != nil {
		t.Fatalf("scenario without injection: %v", err)
	}
	n := c.Count()
	if n < 15 {
		t.Fatalf("counted only %d ops", n)
	}
	for i := range n {
		var ops []errorfs.Op
		var failed []int
		idx := errorfs.OnIndex(i, nil)
		rec := errorfs.InjectorFunc(func(op errorfs.Op) error {
			ops = append(ops, op)
			if err := idx.MaybeError(op); err != nil {
				failed = append(failed, len(ops)-1)
				return err
			}
			return nil
		})
		err := scenario(errorfs.Wrap(memfs.New(), rec))
		if !errors.Is(err, errorfs.ErrInjected) {
			t.Fatalf("op %d (%v): scenario returned %v, want the injected error", i, ops[i], err)
		}
		if len(failed) != 1 || failed[0] != i {
			t.Errorf("op %d: failed ops %v", i, failed)
		}
		if !idx.Fired() {
			t.Errorf("op %d: Fired() = false", i)
		}
		var pe *os.PathError
		var le *os.LinkError
		if !errors.As(err, &pe) && !errors.As(err, &le) {
			t.Errorf("op %d: %T is neither *os.PathError nor *os.LinkError", i, err)
		}
	}
	// One past the end never fires.
	idx := errorfs.OnIndex(n, nil)
	if err := scenario(errorfs.Wrap(memfs.New(), idx)); err != nil || idx.Fired() {
		t.Errorf("OnIndex(n): %v, fired %v", err, idx.Fired())
	}
}

func TestOnIndexCustomError(t *testing.T) {
	fsys := errorfs.Wrap(memfs.New(), errorfs.OnIndex(0, syscall.EIO))
	_, err := fsys.Create("/f")
	if !errors.Is(err, syscall.EIO) || !errors.Is(err, errorfs.ErrInjected) {
		t.Errorf("got %v, want EIO marked as injected", err)
	}
	if _, err := fsys.Stat("/f"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed Create still created the file: %v", err)
	}
}

func TestFromIndex(t *testing.T) {
	fsys := errorfs.Wrap(memfs.New(), errorfs.FromIndex(1, nil))
	must(t, fsys.MkdirAll("/d", 0o755))
	for range 3 {
		if err := fsys.SyncDir("/d"); !errors.Is(err, errorfs.ErrInjected) {
			t.Errorf("op after failure point: %v", err)
		}
	}
}

func TestWhenOps(t *testing.T) {
	inner := memfs.New()
	// The second Sync fails, whatever else happens around it.
	idx := errorfs.OnIndex(1, nil)
	fsys := errorfs.Wrap(inner, errorfs.When(errorfs.Ops(errorfs.OpSync, errorfs.OpSyncDir), idx))
	f, err := fsys.Create("/f")
	must(t, err)
	defer f.Close()
	_, err = f.Write([]byte("x"))
	must(t, err)
	must(t, f.Sync())
	_, err = f.Write([]byte("y"))
	must(t, err)
	if err := f.Sync(); !errors.Is(err, errorfs.ErrInjected) {
		t.Errorf("second sync: %v, want injected", err)
	}
	must(t, fsys.SyncDir("/"))
	if idx.Count() != 3 {
		t.Errorf("filtered injector saw %d ops, want 3", idx.Count())
	}
}

func TestPathMatch(t *testing.T) {
	fsys := errorfs.Wrap(memfs.New(), errorfs.When(
		errorfs.PathMatch("journal").And(errorfs.Mutations()),
		errorfs.FromIndex(0, nil)))
	f, err := fsys.Create("/image")
	must(t, err)
	must(t, f.Close())
	if _, err := fsys.Create("/journal-1"); !errors.Is(err, errorfs.ErrInjected) {
		t.Errorf("create journal: %v", err)
	}
	// Renames match on either name.
	if err := fsys.Rename("/image", "/journal-2"); !errors.Is(err, errorfs.ErrInjected) {
		t.Errorf("rename onto journal: %v", err)
	}
	// Reads are not mutations.
	if _, err := fsys.Stat("/journal-1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat journal: %v, want the inner ErrNotExist", err)
	}
}

func TestENOSPCAfter(t *testing.T) {
	inner := memfs.New()
	fsys := errorfs.Wrap(inner, errorfs.ENOSPCAfter(10))
	f, err := fsys.Create("/f")
	must(t, err)
	defer f.Close()
	write := func(n int) error {
		_, err := f.Write(make([]byte, n))
		return err
	}
	must(t, write(6))
	err = write(5)
	if !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("write over the limit: %v, want ENOSPC", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != "/f" || pe.Op != "write" {
		t.Errorf("error %#v lacks op and path", err)
	}
	must(t, write(4))
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteAt when full: %v", err)
	}
	// Non-writes still work.
	must(t, f.Sync())
	fi, err := inner.Stat("/f")
	must(t, err)
	if fi.Size() != 10 {
		t.Errorf("inner size %d, want 10 (failed writes must not reach it)", fi.Size())
	}
}

func TestFailedCloseStillCloses(t *testing.T) {
	fsys := errorfs.Wrap(memfs.New(), errorfs.When(errorfs.Ops(errorfs.OpClose), errorfs.OnIndex(0, nil)))
	f, err := fsys.Create("/f")
	must(t, err)
	if err := f.Close(); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("close: %v", err)
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("write after failed close: %v, want ErrClosed", err)
	}
}

func TestAnyAndConcurrentCounting(t *testing.T) {
	var c errorfs.Counter
	fsys := errorfs.Wrap(memfs.New(), errorfs.Any(&c, errorfs.ENOSPCAfter(1<<30)))
	f, err := fsys.Create("/f")
	must(t, err)
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 100 {
				if _, err := f.WriteAt([]byte{byte(i)}, int64(w*100+i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	if got := c.Count(); got != 401 {
		t.Errorf("counted %d ops, want 401", got)
	}
}

func TestOpString(t *testing.T) {
	for _, c := range []struct {
		op   errorfs.Op
		want string
	}{
		{errorfs.Op{Kind: errorfs.OpWriteAt, Path: "/f", Off: 4, Len: 2}, "writeat /f off=4 len=2"},
		{errorfs.Op{Kind: errorfs.OpRename, Path: "/a", NewPath: "/b"}, "rename /a /b"},
		{errorfs.Op{Kind: errorfs.OpSyncDir, Path: "/"}, "syncdir /"},
		{errorfs.Op{Kind: errorfs.OpKind(99)}, "OpKind(99) "},
	} {
		if got := c.op.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Locks taken through wrappers are the wrapped FS's: two layers over one
// memfs exclude each other, a layer over the real FS takes a real flock,
// and OpLock can be failed like any operation.
func TestLockIsTheWrappedFS(t *testing.T) {
	mem := memfs.New()
	a := errorfs.Wrap(mem, &errorfs.Counter{})
	b := errorfs.Wrap(mem, &errorfs.Counter{})
	l, err := a.Lock("/LOCK", "held through a")
	must(t, err)
	if _, err := b.Lock("/LOCK", "b"); !errors.Is(err, vfs.ErrLocked) || !strings.Contains(err.Error(), "held through a") {
		t.Errorf("Lock through another wrapper: %v, want refused with the holder's note", err)
	}
	if _, err := mem.Lock("/LOCK", "mem"); !errors.Is(err, vfs.ErrLocked) {
		t.Errorf("Lock on the wrapped FS: %v, want refused", err)
	}
	must(t, l.Unlock())

	name := filepath.Join(t.TempDir(), "LOCK")
	l, err = errorfs.Wrap(vfs.Default, &errorfs.Counter{}).Lock(name, "held through a wrapper")
	must(t, err)
	f, err := os.Open(name)
	must(t, err)
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock while held through a wrapper: %v, want EWOULDBLOCK", err)
	}
	must(t, l.Unlock())
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Errorf("flock after Unlock: %v", err)
	}

	failing := errorfs.Wrap(mem, errorfs.When(errorfs.Ops(errorfs.OpLock), errorfs.OnIndex(0, nil)))
	if _, err := failing.Lock("/LOCK", "x"); !errors.Is(err, errorfs.ErrInjected) {
		t.Errorf("injected Lock failure: %v", err)
	}
}
