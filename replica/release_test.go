package replica

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// A released replica can be opened by another process meanwhile; taking it
// back succeeds exactly when that left it as it was.
func TestReleaseReacquire(t *testing.T) {
	data := bytes.Repeat([]byte("wxyz"), 2048)
	item := func(seq uint64) wire.Item {
		return &wire.DiskExtent{Seq: seq, Target: 0, Offset: seq * 8192, Data: data}
	}
	opts := func(fsys vfs.FS, holder string) Options {
		return Options{FS: fsys, Dir: "/r", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }, Holder: holder, AllowTakenOver: holder != "the receiver"}
	}
	for _, tc := range []struct {
		name  string
		other func(t *testing.T, fsys vfs.FS) (keep *Replica) // what another process does meanwhile
		want  error                                           // from Reacquire
	}{
		{"nobody came", func(*testing.T, vfs.FS) *Replica { return nil }, nil},
		{"a verify or drill read it", func(t *testing.T, fsys vfs.FS) *Replica {
			r, err := Open(opts(fsys, "a drill"))
			if err != nil {
				t.Fatal(err)
			}
			if p := r.Position(); p.StagedEpoch != 1 || p.StagedDurable != 2 {
				t.Errorf("the other opener sees %+v, want epoch 1 staged with 2 items", p)
			}
			r.Close()
			return nil
		}, nil},
		{"a failover took it over", func(t *testing.T, fsys vfs.FS) *Replica {
			r, err := Open(opts(fsys, "a failover"))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.MarkTakenOver(TakeoverMark{Reason: "test"}); err != nil {
				t.Fatal(err)
			}
			r.Close()
			return nil
		}, ErrTakenOver},
		{"someone still holds it", func(t *testing.T, fsys vfs.FS) *Replica {
			r, err := Open(opts(fsys, "a failover"))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}, ErrLocked},
		{"its journal was removed", func(t *testing.T, fsys vfs.FS) *Replica {
			if err := fsys.Remove("/r/journal"); err != nil {
				t.Fatal(err)
			}
			return nil
		}, ErrBroken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := memfs.New()
			r, err := Open(opts(fsys, "the receiver"))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(r.Begin(&wire.EpochBegin{Epoch: 1, Items: 3, Bytes: uint64(3 * len(data)), Targets: []wire.Target{
				{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 65536, BlockSize: 8192}}}))
			must(r.Append(item(0)))
			must(r.Append(item(1)))
			must(r.Release())
			if err := r.Append(item(2)); !errors.Is(err, ErrBroken) {
				t.Fatalf("append while released: %v", err)
			}
			if n, err := r.Sync(); n != 2 || err != nil {
				t.Fatalf("sync while released: %d %v, want the 2 items Release made durable", n, err)
			}
			keep := tc.other(t, fsys)
			err = r.Reacquire(context.Background(), 50*time.Millisecond)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("reacquire: %v, want %v", err, tc.want)
			}
			if errors.Is(err, ErrLocked) && !strings.Contains(err.Error(), "a failover (pid") {
				t.Errorf("refusal does not say who holds the replica: %v", err)
			}
			if keep != nil {
				keep.Close()
				err = r.Reacquire(context.Background(), time.Second)
				if err != nil {
					t.Fatalf("reacquire once the other holder let go: %v", err)
				}
			}
			if err != nil {
				if err := r.Append(item(2)); err == nil {
					t.Fatal("a replica that could not be taken back accepted an item")
				}
				return
			}
			must(r.Append(item(2)))
			if n, err := r.Sync(); n != 3 || err != nil {
				t.Fatalf("sync after taking the replica back: %d %v", n, err)
			}
			r.Close()
			r2, err := Open(opts(fsys, "the receiver"))
			must(err)
			defer r2.Close()
			if p := r2.Position(); p.StagedEpoch != 1 || p.StagedDurable != 3 {
				t.Fatalf("reopened replica at %+v, want epoch 1 staged with 3 items", p)
			}
		})
	}
}
