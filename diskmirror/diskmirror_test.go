package diskmirror_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"

	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/diskmirror/diskmirrortest"
	"github.com/drsync/drsync/nbd"
)

// TestConformance runs the Image contract against every implementation.
// For qcow2 the expected content is qemu-img convert's raw output.
func TestConformance(t *testing.T) {
	dir := t.TempDir()
	t.Run("raw", func(t *testing.T) {
		path := filepath.Join(dir, "c.raw")
		want := writeLayout(t, path, baseSize, baseLayout...)
		img, err := diskmirror.OpenRaw(path)
		if err != nil {
			t.Fatal(err)
		}
		diskmirrortest.Run(t, img, want)
	})
	t.Run("raw empty", func(t *testing.T) {
		path := filepath.Join(dir, "empty.raw")
		want := writeLayout(t, path, 0)
		img, err := diskmirror.OpenRaw(path)
		if err != nil {
			t.Fatal(err)
		}
		diskmirrortest.Run(t, img, want)
	})
	t.Run("raw unaligned size", func(t *testing.T) {
		path := filepath.Join(dir, "odd.raw")
		want := writeLayout(t, path, 100001, span{4096, 5000, 'd'}, span{99000, 1001, 'd'})
		img, err := diskmirror.OpenRaw(path)
		if err != nil {
			t.Fatal(err)
		}
		diskmirrortest.Run(t, img, want)
	})

	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	set := makeQcowSet(t)
	t.Run("qcow2", func(t *testing.T) {
		img, err := diskmirror.OpenQcow2(t.Context(), set.qcow2, diskmirror.Qcow2Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		diskmirrortest.Run(t, img, set.rawWant)
	})
	t.Run("qcow2 with backing file", func(t *testing.T) {
		img, err := diskmirror.OpenQcow2(t.Context(), set.top, diskmirror.Qcow2Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		diskmirrortest.Run(t, img, set.topWant)
	})
	t.Run("nbd export", func(t *testing.T) {
		sock := hosttools.ServeQemuNBD(t, set.top, "--read-only", "--format=qcow2", "--export-name=disk0")
		img, err := diskmirror.OpenNBD(t.Context(), sock, "disk0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		diskmirrortest.Run(t, img, set.topWant)
	})
}

func TestRawExtents(t *testing.T) {
	dir := t.TempDir()
	if !holesSupported(t, dir) {
		t.Skip("file system does not report holes through SEEK_DATA")
	}
	const K = 1 << 10
	tests := []struct {
		name  string
		size  int64
		spans []span
		off   int64
		n     int64 // -1: to the end
		want  []diskmirror.Extent
	}{
		{"all hole", 1 << 20, nil, 0, -1, []diskmirror.Extent{{0, 1 << 20, true}}},
		{"all data", 256 * K, []span{{0, 256 * K, 'd'}}, 0, -1, []diskmirror.Extent{{0, 256 * K, false}}},
		{"data hole data hole", 1 << 20, []span{{0, 64 * K, 'd'}, {512 * K, 64 * K, 'd'}}, 0, -1,
			[]diskmirror.Extent{{0, 64 * K, false}, {64 * K, 448 * K, true}, {512 * K, 64 * K, false}, {576 * K, 448 * K, true}}},
		{"sub-range", 1 << 20, []span{{0, 64 * K, 'd'}, {512 * K, 64 * K, 'd'}}, 32 * K, 512 * K,
			[]diskmirror.Extent{{32 * K, 32 * K, false}, {64 * K, 448 * K, true}, {512 * K, 32 * K, false}}},
		{"inside a hole", 1 << 20, []span{{0, 64 * K, 'd'}}, 100 * K, 10, []diskmirror.Extent{{100 * K, 10, true}}},
		{"written zeros are data", 256 * K, []span{{64 * K, 64 * K, 'z'}}, 0, -1,
			[]diskmirror.Extent{{0, 64 * K, true}, {64 * K, 64 * K, false}, {128 * K, 128 * K, true}}},
		{"unaligned tail", 100000, []span{{0, 4 * K, 'd'}}, 0, -1, []diskmirror.Extent{{0, 4 * K, false}, {4 * K, 100000 - 4*K, true}}},
		{"empty range", 64 * K, []span{{0, 4 * K, 'd'}}, 10, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			writeLayout(t, path, tt.size, tt.spans...)
			img, err := diskmirror.OpenRaw(path)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			n := tt.n
			if n < 0 {
				n = tt.size - tt.off
			}
			got, err := img.Extents(context.Background(), tt.off, n)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Extents(%d, %d) = %v, want %v", tt.off, n, got, tt.want)
			}
		})
	}
}

func TestQcow2Extents(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	set := makeQcowSet(t)
	img, err := diskmirror.OpenQcow2(t.Context(), set.qcow2, diskmirror.Qcow2Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got, err := img.Extents(t.Context(), 0, baseSize)
	if err != nil {
		t.Fatal(err)
	}
	// qemu-img convert drops the written zeros, and qcow2 allocates whole
	// 64 KiB clusters.
	const K = 1 << 10
	want := []diskmirror.Extent{
		{0, 64 * K, false}, {64 * K, 960 * K, true},
		{1 << 20, 128 * K, false}, {1<<20 + 128*K, 2<<20 - 128*K, true},
		{3 << 20, 64 * K, false}, {3<<20 + 64*K, 1<<20 - 64*K, true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Extents = %v\nwant      %v", got, want)
	}
}

func TestOpenErrors(t *testing.T) {
	needQemu := func(t *testing.T) { hosttools.Need(t, "qemu-nbd", "qemu-img") }
	dir := t.TempDir()
	notQcow := filepath.Join(dir, "plain.img")
	writeLayout(t, notQcow, 1<<20, span{0, 4096, 'd'})
	tests := []struct {
		name     string
		setup    func(t *testing.T) string // returns the path to open
		open     func(ctx context.Context, path string) (diskmirror.Image, error)
		is       error
		contains []string // besides the path
	}{
		{
			name:  "raw missing",
			setup: func(t *testing.T) string { return filepath.Join(dir, "missing.raw") },
			open:  openRaw,
			is:    fs.ErrNotExist,
		},
		{
			name:     "raw directory",
			setup:    func(t *testing.T) string { return dir },
			open:     openRaw,
			contains: []string{"not a regular file"},
		},
		{
			name:  "qcow2 missing",
			setup: func(t *testing.T) string { return filepath.Join(dir, "missing.qcow2") },
			open:  openQcow2(diskmirror.Qcow2Options{}),
			is:    fs.ErrNotExist,
		},
		{
			name:     "not qcow2",
			setup:    func(t *testing.T) string { return notQcow },
			open:     openQcow2(diskmirror.Qcow2Options{}),
			is:       diskmirror.ErrFormat,
			contains: []string{"raw"},
		},
		{
			name: "truncated qcow2",
			setup: func(t *testing.T) string {
				needQemu(t)
				p := filepath.Join(t.TempDir(), "trunc.qcow2")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
				if err := os.Truncate(p, 50); err != nil {
					t.Fatal(err)
				}
				return p
			},
			open:     openQcow2(diskmirror.Qcow2Options{}),
			is:       diskmirror.ErrQemuNBD,
			contains: []string{"qemu-nbd:", "exited before serving"},
		},
		{
			name: "corrupt qcow2 header",
			setup: func(t *testing.T) string {
				needQemu(t)
				p := filepath.Join(t.TempDir(), "bad.qcow2")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteAt([]byte{0, 0, 0, 99}, 4); err != nil { // version 99
					t.Fatal(err)
				}
				return p
			},
			open:     openQcow2(diskmirror.Qcow2Options{}),
			is:       diskmirror.ErrQemuNBD,
			contains: []string{"qemu-nbd:", "version"},
		},
		{
			name: "missing backing file",
			setup: func(t *testing.T) string {
				needQemu(t)
				d := t.TempDir()
				base, top := filepath.Join(d, "gone.qcow2"), filepath.Join(d, "top.qcow2")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
				os.Remove(base)
				return top
			},
			open:     openQcow2(diskmirror.Qcow2Options{}),
			is:       diskmirror.ErrQemuNBD,
			contains: []string{"gone.qcow2"},
		},
		{
			name: "missing bitmap",
			setup: func(t *testing.T) string {
				needQemu(t)
				p := filepath.Join(t.TempDir(), "nobitmap.qcow2")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
				return p
			},
			open:     openQcow2(diskmirror.Qcow2Options{Bitmaps: []string{"nope"}}),
			is:       diskmirror.ErrQemuNBD,
			contains: []string{"nope"},
		},
		{
			name: "qemu-nbd binary missing",
			setup: func(t *testing.T) string {
				needQemu(t)
				p := filepath.Join(t.TempDir(), "ok.qcow2")
				hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
				return p
			},
			open:     openQcow2(diskmirror.Qcow2Options{QemuNBD: "/nonexistent/qemu-nbd"}),
			is:       fs.ErrNotExist,
			contains: []string{"/nonexistent/qemu-nbd"},
		},
		{
			name:     "bad cache mode",
			setup:    func(t *testing.T) string { return notQcow },
			open:     openQcow2(diskmirror.Qcow2Options{Cache: "bogus"}),
			contains: []string{"bogus"},
		},
		{
			name: "auto detects unsupported format",
			setup: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "x.vmdk")
				os.WriteFile(p, []byte("KDMV\x01\x00\x00\x00"), 0o600)
				return p
			},
			open: func(ctx context.Context, path string) (diskmirror.Image, error) {
				return diskmirror.Open(ctx, path, diskmirror.FormatAuto, diskmirror.Qcow2Options{})
			},
			is:       diskmirror.ErrFormat,
			contains: []string{"vmdk"},
		},
		{
			name:  "unknown format name",
			setup: func(t *testing.T) string { return notQcow },
			open: func(ctx context.Context, path string) (diskmirror.Image, error) {
				return diskmirror.Open(ctx, path, "vhdx", diskmirror.Qcow2Options{})
			},
			is: diskmirror.ErrFormat,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := privateTmp(t)
			path := tt.setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			img, err := tt.open(ctx, path)
			if err == nil {
				img.Close()
				t.Fatal("open succeeded")
			}
			if img != nil {
				t.Errorf("failed open returned a non-nil Image %#v", img)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("err = %q does not name %s", err, path)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %q does not mention %q", err, s)
				}
			}
			checkNoLeftovers(t, tmp)
		})
	}
}

func openRaw(_ context.Context, path string) (diskmirror.Image, error) {
	return diskmirror.OpenRaw(path)
}

func openQcow2(opts diskmirror.Qcow2Options) func(context.Context, string) (diskmirror.Image, error) {
	return func(ctx context.Context, path string) (diskmirror.Image, error) {
		return diskmirror.OpenQcow2(ctx, path, opts)
	}
}

// gone reports whether pid no longer exists (it has exited and been reaped).
func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

func TestQcow2Lifecycle(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img")
	tmp := privateTmp(t)
	img0 := filepath.Join(t.TempDir(), "l.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img0, "1M")

	t.Run("close", func(t *testing.T) {
		img, err := diskmirror.OpenQcow2(t.Context(), img0, diskmirror.Qcow2Options{})
		if err != nil {
			t.Fatal(err)
		}
		pid, exited, dir := diskmirror.QemuNBDOf(img)
		if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("private dir %s: %v, mode %v", dir, err, st.Mode())
		}
		start := time.Now()
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 1500*time.Millisecond { // the kill comes after 2s
			t.Errorf("Close took %v; qemu-nbd should exit when its client leaves", d)
		}
		select {
		case <-exited:
		default:
			t.Fatal("qemu-nbd not reaped by Close")
		}
		if !gone(pid) {
			t.Errorf("qemu-nbd pid %d still exists", pid)
		}
		checkNoLeftovers(t, tmp)
	})

	t.Run("context canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		img, err := diskmirror.OpenQcow2(ctx, img0, diskmirror.Qcow2Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, exited, _ := diskmirror.QemuNBDOf(img)
		cancel()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Fatal("qemu-nbd still running after cancel")
		}
		if _, err := img.ReadAt(make([]byte, 10), 0); err == nil {
			t.Error("ReadAt works after qemu-nbd was killed")
		}
		if err := img.Close(); err != nil {
			t.Errorf("Close after cancel: %v", err)
		}
		checkNoLeftovers(t, tmp)
	})

	t.Run("force share", func(t *testing.T) {
		hosttools.Need(t, "qemu-io")
		// A comma in the name exercises the escaping of --image-opts.
		locked := filepath.Join(t.TempDir(), "in,use.qcow2")
		hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", locked, "1M")
		holdWriteLock(t, locked)
		if _, err := diskmirror.OpenQcow2(t.Context(), locked, diskmirror.Qcow2Options{}); !errors.Is(err, diskmirror.ErrQemuNBD) || !strings.Contains(err.Error(), "lock") {
			t.Fatalf("open of a locked image: %v, want a lock error from qemu-nbd", err)
		}
		img, err := diskmirror.OpenQcow2(t.Context(), locked, diskmirror.Qcow2Options{ForceShare: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := img.ReadAt(make([]byte, 4096), 0); err != nil {
			t.Error(err)
		}
		img.Close()
		checkNoLeftovers(t, tmp)
	})

	t.Run("cache none", func(t *testing.T) {
		// O_DIRECT is not available everywhere; only check it is passed
		// through and either works or fails cleanly.
		img, err := diskmirror.OpenQcow2(t.Context(), img0, diskmirror.Qcow2Options{Cache: "none", AIO: "native"})
		if err != nil {
			if !errors.Is(err, diskmirror.ErrQemuNBD) {
				t.Fatalf("err = %v, want ErrQemuNBD", err)
			}
			return
		}
		p := make([]byte, 4096)
		if _, err := img.ReadAt(p, 0); err != nil {
			t.Error(err)
		}
		img.Close()
		checkNoLeftovers(t, tmp)
	})
}

func TestDirtyExtents(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "d.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "4M")
	hosttools.Run(t, "qemu-img", "bitmap", "--add", "--enable", path, "b0")
	hosttools.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xab 3M 1k", path)
	want := []diskmirror.DirtyExtent{
		{0, 1 << 20, false}, {1 << 20, 64 << 10, true}, {1<<20 + 64<<10, 2<<20 - 64<<10, false},
		{3 << 20, 64 << 10, true}, {3<<20 + 64<<10, 1<<20 - 64<<10, false},
	}

	check := func(t *testing.T, img *diskmirror.NBDImage) {
		got, err := img.DirtyExtents(t.Context(), "b0", 0, 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("DirtyExtents = %v\nwant           %v", got, want)
		}
		sub, err := img.DirtyExtents(t.Context(), "b0", 1<<20+4096, 8192)
		if err != nil || !slices.Equal(sub, []diskmirror.DirtyExtent{{1<<20 + 4096, 8192, true}}) {
			t.Errorf("DirtyExtents(sub-range) = %v, %v", sub, err)
		}
		if _, err := img.DirtyExtents(t.Context(), "other", 0, 4096); !errors.Is(err, nbd.ErrMetaContextUnavailable) {
			t.Errorf("unselected bitmap: %v", err)
		}
		if _, err := img.DirtyExtents(t.Context(), "b0", 4<<20, 1); !errors.Is(err, diskmirror.ErrOutOfRange) {
			t.Errorf("range past the end: %v", err)
		}
	}
	t.Run("OpenQcow2", func(t *testing.T) {
		img, err := diskmirror.OpenQcow2(t.Context(), path, diskmirror.Qcow2Options{Bitmaps: []string{"b0"}})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		check(t, img.(*diskmirror.NBDImage))
	})
	t.Run("OpenNBD", func(t *testing.T) {
		sock := hosttools.ServeQemuNBD(t, path, "--read-only", "--format=qcow2", "--bitmap=b0")
		img, err := diskmirror.OpenNBD(t.Context(), sock, "", nbd.DirtyBitmapContext("b0"))
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		check(t, img)
		if _, err := diskmirror.OpenNBD(t.Context(), sock, "", nbd.DirtyBitmapContext("missing")); !errors.Is(err, nbd.ErrMetaContextUnavailable) {
			t.Errorf("missing bitmap: %v", err)
		}
		if _, err := diskmirror.OpenNBD(t.Context(), sock, "nope"); !errors.Is(err, nbd.ErrUnknownExport) {
			t.Errorf("unknown export: %v", err)
		}
	})
}

func TestDetectFormat(t *testing.T) {
	qcow2v3 := []byte("QFI\xfb\x00\x00\x00\x03")
	vdi := make([]byte, 0x50)
	copy(vdi[0x40:], []byte{0x7f, 0x10, 0xda, 0xbe})
	tests := []struct {
		name    string
		content []byte
		want    string
	}{
		{"empty", nil, diskmirror.FormatRaw},
		{"short", []byte("QF"), diskmirror.FormatRaw},
		{"zeros", make([]byte, 4096), diskmirror.FormatRaw},
		{"qcow2 v3", qcow2v3, diskmirror.FormatQcow2},
		{"qcow2 magic only", []byte("QFI\xfb"), diskmirror.FormatQcow2},
		{"qcow v1", []byte("QFI\xfb\x00\x00\x00\x01"), "qcow"},
		{"qed", []byte("QED\x00...."), "qed"},
		{"vmdk sparse", []byte("KDMV...."), "vmdk"},
		{"vmdk descriptor", []byte("# Disk DescriptorFile\nversion=1\n"), "vmdk"},
		{"vhdx", []byte("vhdxfile"), "vhdx"},
		{"vpc", []byte("conectix"), "vpc"},
		{"luks", []byte("LUKS\xba\xbe\x00\x01"), "luks"},
		{"vdi", vdi, "vdi"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(p, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := diskmirror.DetectFormat(p)
			if err != nil || got != tt.want {
				t.Errorf("DetectFormat = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := diskmirror.DetectFormat(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestOpenAuto(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	set := makeQcowSet(t)
	for _, tc := range []struct {
		path  string
		isNBD bool
	}{{set.raw, false}, {set.qcow2, true}} {
		img, err := diskmirror.Open(t.Context(), tc.path, diskmirror.FormatAuto, diskmirror.Qcow2Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := img.(*diskmirror.NBDImage); ok != tc.isNBD {
			t.Errorf("Open(%s) gave %T", tc.path, img)
		}
		p := make([]byte, 64<<10)
		if _, err := img.ReadAt(p, 0); err != nil || !slices.Equal(p, set.rawWant[:64<<10]) {
			t.Errorf("Open(%s): read %v or content differs", tc.path, err)
		}
		img.Close()
	}
}
