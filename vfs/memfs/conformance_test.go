package memfs_test

import (
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vfs/vfstest"
)

func TestConformance(t *testing.T) {
	for _, mode := range []struct {
		name string
		new  func() *memfs.FS
	}{
		{"Lax", memfs.New},
		{"Strict", memfs.NewStrict},
	} {
		t.Run(mode.name, func(t *testing.T) {
			vfstest.Run(t, func(t *testing.T) (vfs.FS, string) {
				fs := mode.new()
				if err := fs.MkdirAll("/data", 0o755); err != nil {
					t.Fatal(err)
				}
				return fs, "/data"
			})
		})
	}
}

func TestConformanceAtRoot(t *testing.T) {
	vfstest.Run(t, func(t *testing.T) (vfs.FS, string) {
		return memfs.NewStrict(), "/"
	})
}
