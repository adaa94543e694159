package rbd_test

import (
	"testing"

	"github.com/drsync/drsync/rbd"
)

func TestQEMUFile(t *testing.T) {
	for _, tc := range []struct {
		c                 rbd.Config
		pool, image, snap string
		want              string
	}{
		{rbd.Config{}, "rbd", "web-1.disk-0", "", "rbd:rbd/web-1.disk-0"},
		{rbd.Config{Client: "drsync", ConfFile: "/etc/ceph/dr.conf"}, "dr", "web-1.disk-0", "e7",
			`rbd:dr/web-1.disk-0@e7:id=drsync:conf=/etc/ceph/dr.conf`},
		{rbd.Config{Client: "a:b", Keyring: `/k@x`}, "p", "i:1", "s@2", `rbd:p/i\:1@s\@2:id=a\:b:keyring=/k\@x`},
	} {
		if got := rbd.QEMUFile(tc.c, tc.pool, tc.image, tc.snap); got != tc.want {
			t.Errorf("%+v %s/%s@%s: %s, want %s", tc.c, tc.pool, tc.image, tc.snap, got, tc.want)
		}
	}
}
