package memfs_test

import (
	"errors"
	"io"
	"io/fs"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// h wraps an FS with fatal-on-error helpers so that scenarios read as a
// list of steps.
type h struct {
	t  *testing.T
	fs *memfs.FS
}

func (h h) write(name, data string, sync bool) {
	h.t.Helper()
	f, err := h.fs.OpenReadWrite(name)
	must(h.t, err)
	_, err = f.WriteAt([]byte(data), 0)
	must(h.t, err)
	if sync {
		must(h.t, f.Sync())
	}
	must(h.t, f.Close())
}

func (h h) create(name, data string, sync bool) {
	h.t.Helper()
	f, err := h.fs.Create(name)
	must(h.t, err)
	_, err = f.Write([]byte(data))
	must(h.t, err)
	if sync {
		must(h.t, f.Sync())
	}
	must(h.t, f.Close())
}

func (h h) file(name string, fn func(f vfs.File)) {
	h.t.Helper()
	f, err := h.fs.OpenReadWrite(name)
	must(h.t, err)
	fn(f)
	must(h.t, f.Close())
}

// contents returns the contents of name, or "<missing>".
func contents(t *testing.T, fsys *memfs.FS, name string) string {
	t.Helper()
	f, err := fsys.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "<missing>"
	}
	must(t, err)
	defer f.Close()
	b, err := io.ReadAll(f)
	must(t, err)
	return string(b)
}

func TestCrash(t *testing.T) {
	tests := []struct {
		name string
		// setup runs and is made fully durable before the scenario.
		setup    func(h)
		scenario func(h)
		// want maps paths to their contents after a crash of a strict FS;
		// a lax FS must show the contents before the crash instead.
		want map[string]string
	}{
		{
			name:     "write without sync is lost",
			setup:    func(h h) { h.create("/f", "old", true) },
			scenario: func(h h) { h.write("/f", "new", false) },
			want:     map[string]string{"/f": "old"},
		},
		{
			name:     "write with sync survives",
			setup:    func(h h) { h.create("/f", "old", true) },
			scenario: func(h h) { h.write("/f", "new", true) },
			want:     map[string]string{"/f": "new"},
		},
		{
			name: "only the synced version survives",
			setup: func(h h) {
				h.create("/f", "v1-v1-v1", true)
			},
			scenario: func(h h) {
				h.write("/f", "v2", true)
				h.write("/f", "v3-v3", false)
			},
			want: map[string]string{"/f": "v2-v1-v1"},
		},
		{
			name:     "new file synced but dir not synced is gone",
			scenario: func(h h) { h.create("/f", "data", true) },
			want:     map[string]string{"/f": "<missing>"},
		},
		{
			name: "new file with dir synced but file not synced is empty",
			scenario: func(h h) {
				h.create("/f", "data", false)
				must(h.t, h.fs.SyncDir("/"))
			},
			want: map[string]string{"/f": ""},
		},
		{
			name: "new file with file and dir synced survives",
			scenario: func(h h) {
				h.create("/f", "data", true)
				must(h.t, h.fs.SyncDir("/"))
			},
			want: map[string]string{"/f": "data"},
		},
		{
			name: "dir synced through an open handle",
			scenario: func(h h) {
				h.create("/f", "data", true)
				d, err := h.fs.Open("/")
				must(h.t, err)
				must(h.t, d.Sync())
				must(h.t, d.Close())
			},
			want: map[string]string{"/f": "data"},
		},
		{
			name:     "rename without SyncDir is lost",
			setup:    func(h h) { h.create("/tmp", "new", true); h.create("/cur", "old", true) },
			scenario: func(h h) { must(h.t, h.fs.Rename("/tmp", "/cur")) },
			want:     map[string]string{"/tmp": "new", "/cur": "old"},
		},
		{
			name:  "rename with SyncDir is durable",
			setup: func(h h) { h.create("/tmp", "new", true); h.create("/cur", "old", true) },
			scenario: func(h h) {
				must(h.t, h.fs.Rename("/tmp", "/cur"))
				must(h.t, h.fs.SyncDir("/"))
			},
			want: map[string]string{"/tmp": "<missing>", "/cur": "new"},
		},
		{
			name: "rename across dirs with only the target dir synced",
			setup: func(h h) {
				must(h.t, h.fs.MkdirAll("/a", 0o755))
				must(h.t, h.fs.MkdirAll("/b", 0o755))
				h.create("/a/f", "data", true)
			},
			scenario: func(h h) {
				must(h.t, h.fs.Rename("/a/f", "/b/f"))
				must(h.t, h.fs.SyncDir("/b"))
			},
			want: map[string]string{"/a/f": "data", "/b/f": "data"},
		},
		{
			name:     "remove without SyncDir is undone",
			setup:    func(h h) { h.create("/f", "data", true) },
			scenario: func(h h) { must(h.t, h.fs.Remove("/f")) },
			want:     map[string]string{"/f": "data"},
		},
		{
			name:  "remove with SyncDir is durable",
			setup: func(h h) { h.create("/f", "data", true) },
			scenario: func(h h) {
				must(h.t, h.fs.Remove("/f"))
				must(h.t, h.fs.SyncDir("/"))
			},
			want: map[string]string{"/f": "<missing>"},
		},
		{
			name:  "RemoveAll without SyncDir is undone",
			setup: func(h h) { must(h.t, h.fs.MkdirAll("/d", 0o755)); h.create("/d/f", "data", true) },
			scenario: func(h h) {
				must(h.t, h.fs.RemoveAll("/d"))
			},
			want: map[string]string{"/d/f": "data"},
		},
		{
			name:     "create over a synced file without sync keeps the old contents",
			setup:    func(h h) { h.create("/f", "old", true) },
			scenario: func(h h) { h.create("/f", "x", false) },
			want:     map[string]string{"/f": "old"},
		},
		{
			name:  "truncate without sync is lost",
			setup: func(h h) { h.create("/f", "0123456789", true) },
			scenario: func(h h) {
				h.file("/f", func(f vfs.File) {
					must(h.t, f.Truncate(3))
				})
			},
			want: map[string]string{"/f": "0123456789"},
		},
		{
			name:  "truncate with sync is durable",
			setup: func(h h) { h.create("/f", "0123456789", true) },
			scenario: func(h h) {
				h.file("/f", func(f vfs.File) {
					must(h.t, f.Truncate(3))
					must(h.t, f.Sync())
				})
			},
			want: map[string]string{"/f": "012"},
		},
		{
			name:  "punch hole without sync is lost",
			setup: func(h h) { h.create("/f", "0123456789", true) },
			scenario: func(h h) {
				h.file("/f", func(f vfs.File) {
					must(h.t, f.PunchHole(2, 3))
				})
			},
			want: map[string]string{"/f": "0123456789"},
		},
		{
			name: "new directory without parent sync is gone",
			scenario: func(h h) {
				must(h.t, h.fs.MkdirAll("/d", 0o755))
				h.create("/d/f", "x", true)
				must(h.t, h.fs.SyncDir("/d"))
			},
			want: map[string]string{"/d/f": "<missing>"},
		},
		{
			name: "new directory synced but not its entries is empty",
			scenario: func(h h) {
				must(h.t, h.fs.MkdirAll("/d", 0o755))
				h.create("/d/f", "x", true)
				must(h.t, h.fs.SyncDir("/"))
			},
			want: map[string]string{"/d/f": "<missing>"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, strict := range []bool{true, false} {
				fsys := memfs.New()
				if strict {
					fsys = memfs.NewStrict()
				}
				if tc.setup != nil {
					tc.setup(h{t, fsys})
					syncAll(t, fsys, "/")
				}
				tc.scenario(h{t, fsys})
				before := map[string]string{}
				for name := range tc.want {
					before[name] = contents(t, fsys, name)
				}
				after := fsys.Crash()
				for name, want := range tc.want {
					if !strict {
						want = before[name]
					}
					if got := contents(t, after, name); got != want {
						t.Errorf("strict=%v: after crash %s = %q, want %q", strict, name, got, want)
					}
				}
			}
		})
	}
}

// syncAll makes the whole tree under dir durable.
func syncAll(t *testing.T, fsys *memfs.FS, dir string) {
	t.Helper()
	names, err := fsys.List(dir)
	must(t, err)
	for _, n := range names {
		p := dir + "/" + n
		if dir == "/" {
			p = "/" + n
		}
		fi, err := fsys.Stat(p)
		must(t, err)
		if fi.IsDir() {
			syncAll(t, fsys, p)
			continue
		}
		f, err := fsys.Open(p)
		must(t, err)
		must(t, f.Sync())
		must(t, f.Close())
	}
	must(t, fsys.SyncDir(dir))
}

func TestCrashedFSIsUnusable(t *testing.T) {
	old := memfs.NewStrict()
	f, err := old.Create("/f")
	must(t, err)
	_ = old.Crash()

	checks := map[string]error{
		"Create":   func() error { _, err := old.Create("/g"); return err }(),
		"Open":     func() error { _, err := old.Open("/"); return err }(),
		"Stat":     func() error { _, err := old.Stat("/"); return err }(),
		"List":     func() error { _, err := old.List("/"); return err }(),
		"MkdirAll": old.MkdirAll("/d", 0o755),
		"SyncDir":  old.SyncDir("/"),
		"Rename":   old.Rename("/f", "/g"),
		"Remove":   old.Remove("/f"),
		"Write":    func() error { _, err := f.Write([]byte("x")); return err }(),
		"Sync":     f.Sync(),
		"Close":    f.Close(),
	}
	for op, err := range checks {
		if !errors.Is(err, memfs.ErrCrashed) {
			t.Errorf("%s on crashed FS: %v, want ErrCrashed", op, err)
		}
	}
}

func TestCrashResultIsDurable(t *testing.T) {
	fsys := memfs.NewStrict()
	h{t, fsys}.create("/f", "data", true)
	must(t, fsys.SyncDir("/"))
	// Everything the first crash kept is durable in the new FS, so a second
	// crash right away keeps it again.
	second := fsys.Crash().Crash()
	if got := contents(t, second, "/f"); got != "data" {
		t.Errorf("after two crashes /f = %q", got)
	}
	// And the new FS is writable without disturbing its durable image.
	h{t, second}.write("/f", "DA", false)
	if got := contents(t, second.Crash(), "/f"); got != "data" {
		t.Errorf("unsynced write leaked into the durable image: %q", got)
	}
}

func TestCrashDuringConcurrentWrites(t *testing.T) {
	fsys := memfs.NewStrict()
	f, err := fsys.Create("/f")
	must(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			if _, err := f.WriteAt(buf, int64(i%64)*4096); err != nil {
				if !errors.Is(err, memfs.ErrCrashed) {
					t.Errorf("write: %v", err)
				}
				return
			}
			if i%8 == 0 {
				if err := f.Sync(); err != nil && !errors.Is(err, memfs.ErrCrashed) {
					t.Errorf("sync: %v", err)
				}
			}
		}
	}()
	after := fsys.Crash()
	<-done
	if _, err := after.List("/"); err != nil {
		t.Fatal(err)
	}
}
