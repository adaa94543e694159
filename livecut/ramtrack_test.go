package livecut

import (
	"reflect"
	"testing"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/sender"
)

func TestDirtyExtents(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dirty []dirtylog.Range
		want  []sender.Extent
	}{
		{"none written", nil, []sender.Extent{{Off: 0, Len: 65536, Unchanged: true}}},
		{"all written", []dirtylog.Range{{Start: 0, End: 65536}}, []sender.Extent{{Off: 0, Len: 65536}}},
		{"middle", []dirtylog.Range{{Start: 4096, End: 12288}}, []sender.Extent{
			{Off: 0, Len: 4096, Unchanged: true}, {Off: 4096, Len: 8192}, {Off: 12288, Len: 53248, Unchanged: true}}},
		{"ends", []dirtylog.Range{{Start: 0, End: 4096}, {Start: 61440, End: 65536}}, []sender.Extent{
			{Off: 0, Len: 4096}, {Off: 4096, Len: 57344, Unchanged: true}, {Off: 61440, Len: 4096}}},
	} {
		if got := dirtyExtents(tc.dirty, 65536); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
