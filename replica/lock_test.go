package replica

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// Openers of one replica exclude each other however their file systems are
// layered: an error-injecting layer over an in-memory FS locks that FS, as
// one over the real FS takes the real flock.
func TestLockSharedThroughWrappers(t *testing.T) {
	mem := memfs.New()
	opts := func(fsys vfs.FS, holder string) Options {
		return Options{FS: fsys, Dir: "/r", VM: "web-1", Now: func() time.Time { return time.Unix(0, 0) }, Holder: holder}
	}
	for _, tc := range []struct {
		name         string
		first, other vfs.FS
	}{
		{"wrapped, then plain", errorfs.Wrap(mem, &errorfs.Counter{}), mem},
		{"plain, then wrapped", mem, errorfs.Wrap(mem, &errorfs.Counter{})},
		{"two wrappers", errorfs.Wrap(mem, &errorfs.Counter{}), errorfs.Wrap(mem, &errorfs.Counter{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Open(opts(tc.first, "the receiver"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Open(opts(tc.other, "a drill"))
			if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "the receiver (pid") {
				t.Errorf("second open: %v, want refused saying the receiver holds it", err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			r, err = Open(opts(tc.other, "a drill"))
			if err != nil {
				t.Fatalf("open once the first let go: %v", err)
			}
			r.Close()
		})
	}
}
