package livecut

import (
	"reflect"
	"testing"

	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/sender"
)

func TestBitmapNames(t *testing.T) {
	for _, g := range []uint64{0, 1, 1763800000123456789} {
		if got, ok := bitmapGen(bitmapName(g)); !ok || got != g {
			t.Errorf("gen %d round-trips to %d %v", g, got, ok)
		}
	}
	for _, n := range []string{"", "b1", "drsync-x1-0", "drsync-b", "drsync-b1x", "backup-b1"} {
		if _, ok := bitmapGen(n); ok {
			t.Errorf("%q parsed as a livecut bitmap", n)
		}
	}
}

func TestPlanCleanup(t *testing.T) {
	disks := []string{"disk0", "disk1"}
	recording := func(node, name string) observedBitmap { return observedBitmap{Node: node, Name: name, Recording: true} }
	tests := []struct {
		name   string
		o      observed
		keep   string
		want   []string // Cmd or file of each step, in order
		keepOK bool
	}{
		{name: "clean VM", o: observed{Status: "running", Nodes: []string{"disk0", "file0", "disk1", "file1"}}, want: nil},
		{
			name: "killed mid-epoch: everything of ours goes, the operator's stays",
			o: observed{
				Status: "running", Migration: "completed",
				Exports: []string{"drsync-x7-0", "ops-export"}, Jobs: []string{"drsync-j7-0", "drsync-j7-1", "nightly-backup"},
				Nodes:   []string{"disk0", "drsync-f7-0", "drsync-f7-1", "ops-node"},
				Bitmaps: []observedBitmap{{Node: "disk0", Name: "drsync-b6"}, recording("disk0", "drsync-b7"), recording("disk1", "drsync-b7"), recording("disk0", "ops-cbt")},
				Files:   []string{"fleece-7-0.qcow2", "fleece-7-1.qcow2", "livecut-state", "livecut.state", "mig.sock"},
			},
			keep: "drsync-b7", keepOK: true,
			want: []string{"block-export-del", "block-job-cancel", "block-job-cancel", "blockdev-del", "blockdev-del", "block-dirty-bitmap-remove", "fleece-7-0.qcow2", "fleece-7-1.qcow2"},
		},
		{
			name: "guest left paused after the migration: resumed first",
			o: observed{Status: "postmigrate", Migration: "completed", Bitmaps: []observedBitmap{recording("disk0", "drsync-b3"), recording("disk1", "drsync-b3")},
				Files: []string{cutMarkerFile}, CutInFlight: true},
			keep: "drsync-b2",
			want: []string{"cont", "block-dirty-bitmap-remove", "block-dirty-bitmap-remove", cutMarkerFile},
		},
		{
			name: "source of the operator's own completed migration (no cut in flight) stays stopped",
			o:    observed{Status: "postmigrate", Migration: "completed"},
			want: nil,
		},
		{
			name: "a cut's migration still running is cancelled",
			o:    observed{Status: "running", Migration: "active", CutInFlight: true},
			want: []string{"migrate_cancel"},
		},
		{
			name: "someone else's migration (no cut in flight) runs on",
			o:    observed{Status: "running", Migration: "active"},
			want: nil,
		},
		{
			name: "kept bitmap no longer recording (disabled by a cut never recorded): chain broken",
			o:    observed{Status: "running", Bitmaps: []observedBitmap{{Node: "disk0", Name: "drsync-b4"}, recording("disk1", "drsync-b4")}},
			keep: "drsync-b4",
			want: []string{"block-dirty-bitmap-remove", "block-dirty-bitmap-remove"},
		},
		{
			name: "kept bitmap missing on one disk (QEMU restarted, disk hot-added): chain broken",
			o:    observed{Status: "running", Bitmaps: []observedBitmap{recording("disk0", "drsync-b4")}},
			keep: "drsync-b4",
			want: []string{"block-dirty-bitmap-remove"},
		},
		{
			name: "operator-paused guest is left paused",
			o:    observed{Status: "paused"},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps, keepOK := planCleanup(tt.o, disks, tt.keep)
			var got []string
			for _, s := range steps {
				if s.Cmd == "" {
					got = append(got, s.File)
				} else {
					got = append(got, s.Cmd)
				}
				for _, v := range s.Args {
					if str, ok := v.(string); ok && (str == "ops-export" || str == "nightly-backup" || str == "ops-node" || str == "ops-cbt") {
						t.Errorf("step %v touches the operator's %s", s, str)
					}
				}
			}
			if !reflect.DeepEqual(got, tt.want) || keepOK != tt.keepOK {
				t.Errorf("steps %v keep %v, want %v keep %v", got, keepOK, tt.want, tt.keepOK)
			}
		})
	}
}

func TestMergeExtents(t *testing.T) {
	const K = 1024
	alloc := []diskmirror.Extent{{Off: 0, Len: 64 * K}, {Off: 64 * K, Len: 192 * K, Zero: true}, {Off: 256 * K, Len: 256 * K}}
	dirty := []diskmirror.DirtyExtent{{Off: 0, Len: 128 * K}, {Off: 128 * K, Len: 256 * K, Dirty: true}, {Off: 384 * K, Len: 128 * K}}
	got := mergeExtents(alloc, dirty)
	want := []sender.Extent{
		{Off: 0, Len: 64 * K, Unchanged: true},
		{Off: 64 * K, Len: 64 * K, Zero: true, Unchanged: true},
		{Off: 128 * K, Len: 128 * K, Zero: true},
		{Off: 256 * K, Len: 128 * K},
		{Off: 384 * K, Len: 128 * K, Unchanged: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merged\n got %+v\nwant %+v", got, want)
	}
	// Without a bitmap nothing is unchanged.
	for _, e := range mergeExtents(alloc, nil) {
		if e.Unchanged {
			t.Errorf("no bitmap, yet %+v is unchanged", e)
		}
	}
	if len(mergeExtents(nil, dirty)) != 0 {
		t.Error("no allocation map, yet extents")
	}
}
