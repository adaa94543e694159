package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// Integration tests against qemu-nbd. They skip when QEMU's tools are not
// installed (package qemu-utils).

func dialQemu(t *testing.T, sock string, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const imageSize = 4 << 20

// writeRawImage creates a sparse raw image: random data at [0, 64K) and
// [1M, 1M+100K), explicit zeros at [2M, 2M+64K), holes elsewhere.
func writeRawImage(t *testing.T, path string) []byte {
	t.Helper()
	want := make([]byte, imageSize)
	r := rand.New(rand.NewPCG(7, 7))
	for _, span := range [][2]int{{0, 64 << 10}, {1 << 20, 1<<20 + 100<<10}} {
		for i := span[0]; i < span[1]; i++ {
			want[i] = byte(r.Uint32() | 1)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(imageSize); err != nil {
		t.Fatal(err)
	}
	for _, span := range [][2]int{{0, 64 << 10}, {1 << 20, 1<<20 + 100<<10}, {2 << 20, 2<<20 + 64<<10}} {
		if _, err := f.WriteAt(want[span[0]:span[1]], int64(span[0])); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// testImages builds the raw, qcow2 and qcow2-with-backing images and
// their expected content (qemu-img convert's view for the backing chain).
func testImages(t *testing.T) []struct {
	name, path, format string
	want               []byte
} {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	want := writeRawImage(t, raw)
	q := filepath.Join(dir, "disk.qcow2")
	hosttools.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q)
	top := filepath.Join(dir, "top.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", q, "-F", "qcow2", top)
	hosttools.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1056k 8k", "-c", "write -z 0 4k", "-c", "write -P 0x11 3M 64k", top)
	flat := filepath.Join(dir, "top.raw")
	hosttools.Run(t, "qemu-img", "convert", "-O", "raw", top, flat)
	topWant, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(topWant, want) {
		t.Fatal("overlay writes did not change the content")
	}
	return []struct {
		name, path, format string
		want               []byte
	}{
		{"raw", raw, "raw", want},
		{"qcow2", q, "qcow2", want},
		{"qcow2 with backing file", top, "qcow2", topWant},
	}
}

func TestQemuNBD(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	for _, img := range testImages(t) {
		t.Run(img.name, func(t *testing.T) {
			sock := hosttools.ServeQemuNBD(t, img.path, "--read-only", "--format="+img.format)
			c := dialQemu(t, sock, Options{MetaContexts: []string{ContextBaseAllocation}})
			if c.Size() != imageSize {
				t.Fatalf("Size = %d, want %d", c.Size(), imageSize)
			}
			if c.Flags()&FlagReadOnly == 0 {
				t.Error("read-only export without FlagReadOnly")
			}
			got := make([]byte, imageSize)
			if n, err := c.ReadAt(got, 0); err != nil || n != imageSize {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, img.want) {
				t.Fatal("content differs from the image")
			}
			r := rand.New(rand.NewPCG(1, 2))
			for range 50 {
				off := r.IntN(imageSize)
				p := make([]byte, r.IntN(min(imageSize-off, 300<<10))+1)
				if _, err := c.ReadAt(p, int64(off)); err != nil || !bytes.Equal(p, img.want[off:off+len(p)]) {
					t.Fatalf("ReadAt(%d, %d): %v or content differs", off, len(p), err)
				}
			}

			ext, err := c.BlockStatus(context.Background(), ContextBaseAllocation, 0, imageSize)
			if err != nil {
				t.Fatal(err)
			}
			checkCovers(t, ext, 0, imageSize)
			for _, e := range ext {
				if e.Flags&StateZero != 0 && !isZero(img.want[e.Off:e.Off+e.Len]) {
					t.Errorf("extent %+v marked zero holds data", e)
				}
			}
			if e := findExtent(ext, 1<<20); e.Flags != 0 {
				t.Errorf("data at 1M reported with flags %d", e.Flags)
			}
			if e := findExtent(ext, 2<<20+128<<10); e.Flags&StateZero == 0 {
				t.Errorf("hole at 2M+128K reported with flags %d", e.Flags)
			}
			// A sub-range must agree with the whole.
			sub, err := c.BlockStatus(context.Background(), ContextBaseAllocation, 1<<20+12345, 2<<20)
			if err != nil {
				t.Fatal(err)
			}
			checkCovers(t, sub, 1<<20+12345, 2<<20)
			for _, e := range sub {
				if w := findExtent(ext, e.Off); w.Flags != e.Flags {
					t.Errorf("sub-range extent %+v disagrees with %+v", e, w)
				}
			}
			if _, err := exec.LookPath("nbdinfo"); err == nil {
				if ref := nbdinfoMap(t, sock, "", ContextBaseAllocation); !equalExtents(ext, ref) {
					t.Errorf("base:allocation = %v\nnbdinfo says  %v", ext, ref)
				}
			}
		})
	}
}

func findExtent(ext []Extent, off int64) Extent {
	for _, e := range ext {
		if off >= e.Off && off < e.Off+e.Len {
			return e
		}
	}
	return Extent{Flags: 1 << 31}
}

// nbdinfoMap asks libnbd's nbdinfo for the map of a context, merged like
// BlockStatus merges.
func nbdinfoMap(t *testing.T, sock, export, context string) []Extent {
	t.Helper()
	uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", export, sock)
	out := hosttools.Run(t, "nbdinfo", "--map="+context, uri)
	var ext []Extent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("nbdinfo line %q", line)
		}
		off, err1 := strconv.ParseInt(f[0], 10, 64)
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		fl, err3 := strconv.ParseUint(f[2], 10, 32)
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("nbdinfo line %q: %v", line, err)
		}
		ext = appendExtent(ext, Extent{Off: off, Len: n, Flags: uint32(fl)})
	}
	return ext
}

func TestQemuDirtyBitmap(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img", "qemu-io")
	img := filepath.Join(t.TempDir(), "d.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	hosttools.Run(t, "qemu-img", "bitmap", "--add", "--enable", img, "b0")
	hosttools.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 64k", img)
	sock := hosttools.ServeQemuNBD(t, img, "--read-only", "--format=qcow2", "--bitmap=b0")

	c := dialQemu(t, sock, Options{MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("b0")}, ListMetaContexts: true})
	avail := strings.Join(c.AvailableMetaContexts(), ",")
	if !strings.Contains(avail, ContextBaseAllocation) || !strings.Contains(avail, DirtyBitmapContext("b0")) {
		t.Errorf("AvailableMetaContexts = %s", avail)
	}
	ext, err := c.BlockStatus(context.Background(), DirtyBitmapContext("b0"), 0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 1 << 20, 0}, {1 << 20, 64 << 10, StateDirty}, {1<<20 + 64<<10, 3<<20 - 64<<10, 0}}
	if !equalExtents(ext, want) {
		t.Errorf("dirty extents = %v, want %v", ext, want)
	}
	p := make([]byte, 64<<10)
	if _, err := c.ReadAt(p, 1<<20); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0xab}, 64<<10)) {
		t.Errorf("dirty data: %v or content differs", err)
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		if ref := nbdinfoMap(t, sock, "", DirtyBitmapContext("b0")); !equalExtents(ext, ref) {
			t.Errorf("dirty extents = %v\nnbdinfo says   %v", ext, ref)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = Dial(ctx, "unix", sock, Options{MetaContexts: []string{DirtyBitmapContext("missing")}})
	if !errors.Is(err, ErrMetaContextUnavailable) || !strings.Contains(err.Error(), "qemu:dirty-bitmap:missing") {
		t.Errorf("missing bitmap: %v", err)
	}
}

func TestQemuExportNames(t *testing.T) {
	hosttools.Need(t, "qemu-nbd", "qemu-img")
	img := filepath.Join(t.TempDir(), "e.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	sock := hosttools.ServeQemuNBD(t, img, "--read-only", "--format=qcow2", "--export-name=disk0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, "unix", sock, Options{Export: "disk1"})
	if !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("unknown export: %v", err)
	}
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Message == "" {
		t.Errorf("unknown export error %v lacks the server's message", err)
	}
	if c := dialQemu(t, sock, Options{Export: "disk0"}); c.Size() != 1<<20 {
		t.Errorf("Size = %d", c.Size())
	}
}
