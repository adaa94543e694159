package vfs_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

const (
	oldData = "the old contents, longer than the new"
	newData = "the new contents"
)

// setup returns a strict memfs whose /d/f durably holds oldData.
func setup(t *testing.T) *memfs.FS {
	t.Helper()
	m := memfs.NewStrict()
	if err := vfs.MkdirAllDurable(m, "/d", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := vfs.WriteFileDurable(m, "/d/f", []byte(oldData), 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}

func contents(t *testing.T, fsys vfs.FS, name string) string {
	t.Helper()
	f, err := fsys.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "<missing>"
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ops returns the operations one WriteFileDurable of /d/f performs.
func ops(t *testing.T, write func(vfs.FS) error) []errorfs.Op {
	var seen []errorfs.Op
	err := write(errorfs.Wrap(setup(t), errorfs.InjectorFunc(func(op errorfs.Op) error {
		seen = append(seen, op)
		return nil
	})))
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

func writeDurable(fsys vfs.FS) error {
	return vfs.WriteFileDurable(fsys, "/d/f", []byte(newData), 0o600)
}

// TestWriteFileDurableCrash stops the machine before each operation of
// WriteFileDurable (every operation from there on fails, then power is
// lost), and also fails each operation alone before power is lost: the
// file comes back whole, old or new, and new once the call succeeded.
func TestWriteFileDurableCrash(t *testing.T) {
	n := len(ops(t, writeDurable))
	if n < 6 {
		t.Fatalf("WriteFileDurable performs only %d operations", n)
	}
	for i := 0; i <= n; i++ {
		for _, mode := range []struct {
			name string
			inj  func(int) *errorfs.Index
		}{{"stop", func(i int) *errorfs.Index { return errorfs.FromIndex(i, nil) }}, {"fail", func(i int) *errorfs.Index { return errorfs.OnIndex(i, nil) }}} {
			t.Run(fmt.Sprintf("%s%d", mode.name, i), func(t *testing.T) {
				m := setup(t)
				idx := mode.inj(i)
				err := writeDurable(errorfs.Wrap(m, idx))
				if idx.Fired() != (err != nil) {
					t.Fatalf("failure injected %v, but error %v", idx.Fired(), err)
				}
				got := contents(t, m.Crash(), "/d/f")
				switch {
				case got != oldData && got != newData:
					t.Errorf("after power loss /d/f holds %q", got)
				case err == nil && got != newData:
					t.Errorf("WriteFileDurable returned nil, but after power loss /d/f holds %q", got)
				}
			})
		}
	}
}

// TestWriteFileDurableErrors fails each operation in turn: the error names
// the step and wraps the cause, the old contents are still there (up to
// the rename) and no temporary file is left behind.
func TestWriteFileDurableErrors(t *testing.T) {
	steps := map[errorfs.OpKind]string{
		errorfs.OpCreate:  "create temporary file",
		errorfs.OpWrite:   "write temporary file",
		errorfs.OpChmod:   "set mode of temporary file",
		errorfs.OpSync:    "sync temporary file",
		errorfs.OpClose:   "close temporary file",
		errorfs.OpRename:  "rename temporary file",
		errorfs.OpSyncDir: "sync directory",
	}
	seen := map[errorfs.OpKind]bool{}
	for i, op := range ops(t, writeDurable) {
		t.Run(fmt.Sprint(i, " ", op.Kind), func(t *testing.T) {
			seen[op.Kind] = true
			m := setup(t)
			err := writeDurable(errorfs.Wrap(m, errorfs.OnIndex(i, nil)))
			if !errors.Is(err, errorfs.ErrInjected) {
				t.Fatalf("failing %v: error %v, want one wrapping the cause", op, err)
			}
			if step := steps[op.Kind]; step == "" || !strings.HasPrefix(err.Error(), step+": ") {
				t.Errorf("failing %v: error %q does not name the step %q", op, err, step)
			}
			want := oldData
			if op.Kind == errorfs.OpSyncDir {
				want = newData // renamed already; only durability is in doubt
			}
			if got := contents(t, m, "/d/f"); got != want {
				t.Errorf("failing %v: /d/f holds %q, want %q", op, got, want)
			}
			if names, _ := m.List("/d"); len(names) != 1 {
				t.Errorf("failing %v: /d holds %q, want the file alone", op, names)
			}
		})
	}
	for k := range steps {
		if !seen[k] {
			t.Errorf("WriteFileDurable never performed %v", k)
		}
	}
}

// TestWriteFileAtomicProcessDeath: without syncs the file is not durable,
// but a writer that stops at any point leaves the old or the new file.
func TestWriteFileAtomicProcessDeath(t *testing.T) {
	write := func(fsys vfs.FS) error {
		return vfs.WriteFileAtomic(fsys, "/d/f", []byte(newData), 0o600)
	}
	for i := range len(ops(t, write)) + 1 {
		m := setup(t)
		idx := errorfs.FromIndex(i, nil)
		err := write(errorfs.Wrap(m, idx))
		got := contents(t, m, "/d/f")
		if got != oldData && got != newData || err == nil && got != newData {
			t.Errorf("stopped at op %d (err %v): /d/f holds %q", i, err, got)
		}
		for _, op := range ops(t, write) {
			if op.Kind == errorfs.OpSync || op.Kind == errorfs.OpSyncDir {
				t.Fatalf("WriteFileAtomic syncs: %v", op)
			}
		}
	}
}

// TestMkdirAllDurableCrash: once MkdirAllDurable returns, the directories
// survive power loss, and a file durably written into them does too.
func TestMkdirAllDurableCrash(t *testing.T) {
	m := memfs.NewStrict()
	if err := vfs.MkdirAllDurable(m, "/a/b/c", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := vfs.WriteFileDurable(m, "/a/b/c/f", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := contents(t, m.Crash(), "/a/b/c/f"); got != "x" {
		t.Errorf("after power loss /a/b/c/f holds %q", got)
	}
	// Plain MkdirAll is not enough: the test can fail.
	m = memfs.NewStrict()
	if err := m.MkdirAll("/a/b/c", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := vfs.WriteFileDurable(m, "/a/b/c/f", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := contents(t, m.Crash(), "/a/b/c/f"); got != "<missing>" {
		t.Errorf("without durable directories, /a/b/c/f still holds %q after power loss", got)
	}
}

// TestCreateFileDurable: an existing file is refused and left alone; a
// new one survives power loss at any operation whole or not at all, and
// whole once the call succeeded.
func TestCreateFileDurable(t *testing.T) {
	m := setup(t)
	if err := vfs.CreateFileDurable(m, "/d/f", []byte(newData), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("creating over an existing file: %v, want fs.ErrExist", err)
	}
	if got := contents(t, m, "/d/f"); got != oldData {
		t.Fatalf("the refused create changed the file: %q", got)
	}
	create := func(fsys vfs.FS) error { return vfs.CreateFileDurable(fsys, "/d/new", []byte(newData), 0o600) }
	n := len(ops(t, create))
	for i := 0; i <= n; i++ {
		t.Run(fmt.Sprint("stop", i), func(t *testing.T) {
			m := setup(t)
			idx := errorfs.FromIndex(i, nil)
			err := create(errorfs.Wrap(m, idx))
			got := contents(t, m.Crash(), "/d/new")
			switch {
			case got != "<missing>" && got != newData:
				t.Errorf("after power loss /d/new holds %q", got)
			case err == nil && got != newData:
				t.Errorf("CreateFileDurable returned nil, but after power loss /d/new holds %q", got)
			}
		})
	}
}
