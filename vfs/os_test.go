package vfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/vfstest"
)

func TestDefault(t *testing.T) {
	vfstest.Run(t, func(t *testing.T) (vfs.FS, string) {
		return vfs.Default, t.TempDir()
	})
}

func TestDefaultCreatePrivate(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	f, err := vfs.Default.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("created file has mode %v, want no group or other access", fi.Mode())
	}
}

func TestDefaultErrorsWrapErrno(t *testing.T) {
	dir := t.TempDir()
	_, err := vfs.Default.Open(filepath.Join(dir, "missing"))
	var pe *os.PathError
	if !errors.As(err, &pe) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Open missing: %#v, want *os.PathError wrapping ENOENT", err)
	}
	f, err := vfs.Default.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = f.Allocate(-1, 10)
	if !errors.As(err, &pe) || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Allocate(-1): %#v, want *os.PathError wrapping EINVAL", err)
	}
}
