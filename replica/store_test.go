package replica_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/replicatest"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// memBackend keeps file-store replicas on an in-memory file system that
// loses what was not synced when it crashes.
type memBackend struct {
	fs      *memfs.FS
	scratch int
}

func (b *memBackend) Store(t *testing.T, keep int, inj errorfs.Injector) replica.Store {
	var fsys vfs.FS = b.fs
	if inj != nil {
		fsys = errorfs.Wrap(b.fs, inj)
	}
	return replica.FileStore{FS: fsys, Root: "/replicas", KeepPoints: keep, Now: func() time.Time { return time.Unix(1_700_000_000, 0) }}
}

func (b *memBackend) Crash(*testing.T) { b.fs = b.fs.Crash() }

func (b *memBackend) Scratch(*testing.T) string {
	b.scratch++
	return fmt.Sprintf("/scratch/%d", b.scratch)
}

func TestFileStoreConformance(t *testing.T) {
	replicatest.Run(t, func(*testing.T) replicatest.Backend { return &memBackend{fs: memfs.NewStrict()} })
}
