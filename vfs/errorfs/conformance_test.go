package errorfs_test

import (
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vfs/vfstest"
)

func TestConformance(t *testing.T) {
	vfstest.Run(t, func(t *testing.T) (vfs.FS, string) {
		return errorfs.Wrap(memfs.NewStrict(), &errorfs.Counter{}), "/"
	})
}
