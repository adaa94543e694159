package rbdstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/wire"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		key  string // "" for valid
	}{
		{"valid", Config{Pool: "drsync", CephConf: "/etc/ceph/ceph.conf", Client: "drsync"}, ""},
		{"defaults", Config{Pool: "drsync"}, ""},
		{"no pool", Config{}, "pool"},
		{"pool with slash", Config{Pool: "a/b"}, "pool"},
		{"client prefix", Config{Pool: "p", Client: "client.x"}, "client"},
		{"blank in client", Config{Pool: "p", Client: "a b"}, "client"},
		{"prefix with at", Config{Pool: "p", Prefix: "x@"}, "prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			fe, ok := errors.AsType[*field.Error](err)
			if !ok || fe.Path != tc.key {
				t.Fatalf("%v; want an error naming %s", err, tc.key)
			}
		})
	}
}

// TestJournalObjects: the journal's objects read back as written, and a
// damaged one is refused rather than half read.
func TestJournalObjects(t *testing.T) {
	items := []wire.Frame{
		&wire.DiskExtent{Seq: 0, Target: 0, Offset: 4096, Data: []byte(strings.Repeat("x", 4096))},
		&wire.ZeroRun{Seq: 1, Target: 0, Offset: 0, Length: 4096},
	}
	b, err := encode(objPrefix(magicCommit, 42, 7), items...)
	if err != nil {
		t.Fatal(err)
	}
	nonce, extra, frames, err := parse(b, magicCommit, 1)
	if err != nil || nonce != 42 || len(extra) != 1 || extra[0] != 7 || len(frames) != 2 {
		t.Fatalf("parse: %d %v %d frames, %v", nonce, extra, len(frames), err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"other magic", append([]byte(magicChunk), b[8:]...)},
		{"short", b[:10]},
		{"torn frame", b[:len(b)-5]},
	} {
		if _, _, _, err := parse(tc.b, magicCommit, 1); !errors.Is(err, errJournal) {
			t.Errorf("%s: %v, want errJournal", tc.name, err)
		}
	}
	if c, i := splitLoc(loc(3, 17)); c != 3 || i != 17 {
		t.Fatalf("loc round trip: %d %d", c, i)
	}
}

type namedPool struct{ rbd.Pool }

func (namedPool) Name() string { return "drsync" }

// TestLocation: QEMU opens a replica's images by rbd: names carrying the
// cluster's user and ceph.conf.
func TestLocation(t *testing.T) {
	c := rbd.Config{ConfFile: "/etc/ceph/ceph.conf", Client: "drsync"}
	te := &replica.TargetEntry{File: "disk-0"}
	for _, tc := range []struct {
		img  *image
		want string
	}{
		{&image{pool: namedPool{}, cluster: c, base: "web-1"}, "rbd:drsync/web-1.disk-0:id=drsync:conf=/etc/ceph/ceph.conf"},
		{&image{pool: namedPool{}, base: "web-1", snap: "e7"}, "rbd:drsync/web-1.disk-0@e7"},
	} {
		if got := tc.img.Location(te); got != tc.want {
			t.Errorf("Location = %q, want %q", got, tc.want)
		}
	}
}
