package vfs_test

import (
	"path/filepath"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// On the real file system the request reaches the kernel (a closed file
// is refused); where there is no writeback to start it is a no-op.
func TestStartWriteback(t *testing.T) {
	f, err := vfs.Default.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := vfs.StartWriteback(f); err != nil {
		t.Errorf("open file: %v", err)
	}
	f.Close()
	if err := vfs.StartWriteback(f); err == nil {
		t.Error("closed file: no error, so the kernel was never asked")
	}
	m, err := memfs.New().Create("/img")
	if err != nil {
		t.Fatal(err)
	}
	if err := vfs.StartWriteback(m); err != nil {
		t.Errorf("memfs file: %v", err)
	}
}
