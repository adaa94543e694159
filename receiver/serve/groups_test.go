package serve

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
)

// The metrics read each group's newest complete group point from the
// replicas: a cut one member has not committed yet does not count.
func TestGroupPointsMetric(t *testing.T) {
	dir := t.TempDir()
	rcv, err := receiver.New(receiver.Options{Root: dir, FS: vfs.Default, KeepPoints: 2, AckBytes: 1 << 20, Now: time.Now,
		Authorize: func(receiver.Peer, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	members := []string{"a", "b"}
	run := func(vm string, cut uint64) {
		t.Helper()
		src := &testkit.MemSource{Targets: []*testkit.MemTarget{{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 4096, Data: make([]byte, 1<<16)}},
			Group: func(int) *vmspec.GroupCut { return &vmspec.GroupCut{Group: "g", Cut: cut, Members: members} }}
		s, err := sender.New(sender.Options{VM: vm, Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{}),
			Store: sender.Store{FS: memfs.New(), Dir: filepath.Join("/s", vm)}, Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatalf("%s cut %d: %v", vm, cut, err)
		}
	}
	run("a", 1)
	run("b", 1)
	run("a", 2)
	got := groupPoints(replica.FileStore{FS: vfs.Default, Root: dir}, []string{"a", "b"})()
	if len(got) != 1 || got["g"].Cut != 1 || got["g"].Time.IsZero() {
		t.Fatalf("group points %+v, want g at cut 1", got)
	}
}
