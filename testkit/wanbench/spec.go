package wanbench

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/drsync/drsync/testkit/guest"
)

// Fill says what a new disk image holds.
type Fill int

const (
	// FillZero is an empty (sparse) image.
	FillZero Fill = iota
	// FillRandom is pseudo-random, incompressible data from DiskSpec.Seed.
	FillRandom
)

// DiskSpec describes one disk image of the guest and how to create it.
// Disks attach in order as /dev/vda, /dev/vdb, ...; the first one holds
// the workload's record ring.
type DiskSpec struct {
	Name    string // file name, e.g. "vda.raw"
	Format  string // "raw" or "qcow2"
	SizeMiB int
	Fill    Fill
	Seed    uint64 // for FillRandom: the same seed gives the same bytes
}

// Bytes is the disk's virtual size.
func (d DiskSpec) Bytes() int64 { return int64(d.SizeMiB) << 20 }

// GuestSpec describes the guest every tool of the benchmark protects: the
// same RAM, disks and workload for each row of the table.
type GuestSpec struct {
	MemMiB int
	Disks  []DiskSpec
	// Args are the workload parameters (guest.Options.Args): rate,
	// dirty_mib, dirty_rate_kib, cache, ...
	Args map[string]string
}

// NewGuest is the benchmark's guest with the given sizes: memMiB of RAM, a
// raw record disk of recordMiB (vda, 20 records/s) and, if cacheMiB > 0, a
// raw disk of cacheMiB of random data (vdb, seed 1) that the workload keeps
// in its page cache; 32 MiB of memory get 1 MiB of fresh random pages per
// second (dirty_mib is capped at half the RAM).
func NewGuest(memMiB, recordMiB, cacheMiB int) GuestSpec {
	g := GuestSpec{
		MemMiB: memMiB,
		Disks:  []DiskSpec{{Name: "vda.raw", Format: "raw", SizeMiB: recordMiB, Fill: FillZero}},
		Args: map[string]string{
			"rate":           "20",
			"dirty_mib":      strconv.Itoa(min(32, memMiB/2)),
			"dirty_rate_kib": "1024",
		},
	}
	if cacheMiB > 0 {
		g.Disks = append(g.Disks, DiskSpec{Name: "vdb.raw", Format: "raw", SizeMiB: cacheMiB, Fill: FillRandom, Seed: 1})
		g.Args["cache"] = "/dev/vdb"
	}
	return g
}

// DefaultGuest is the guest of the published benchmark: 512 MiB of RAM, a
// 64 MiB record disk and a 192 MiB disk of random data held in the guest's
// page cache.
func DefaultGuest() GuestSpec { return NewGuest(512, 64, 192) }

// DiskBytes is the sum of the disks' virtual sizes.
func (g GuestSpec) DiskBytes() int64 {
	var n int64
	for _, d := range g.Disks {
		n += d.Bytes()
	}
	return n
}

// mem is the guest RAM in MiB, 256 if unset (as guest.Launch).
func (g GuestSpec) mem() int {
	if g.MemMiB <= 0 {
		return 256
	}
	return g.MemMiB
}

// Prepare creates the disk images in dir and returns them in attachment
// order. It fails the test if an image cannot be made.
func (g GuestSpec) Prepare(t testing.TB, dir string) []guest.Disk {
	t.Helper()
	disks, err := g.prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	return disks
}

func (g GuestSpec) prepare(dir string) ([]guest.Disk, error) {
	if len(g.Disks) == 0 {
		return nil, fmt.Errorf("wanbench: guest spec has no disks")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []guest.Disk
	for i, d := range g.Disks {
		if d.Name == "" || d.SizeMiB <= 0 {
			return nil, fmt.Errorf("wanbench: disk %d: needs a name and a size (got %q, %d MiB)", i, d.Name, d.SizeMiB)
		}
		path := filepath.Join(dir, d.Name)
		if err := makeImage(path, d.Format, d.Bytes(), d.Fill, d.Seed); err != nil {
			return nil, fmt.Errorf("wanbench: disk %s: %w", d.Name, err)
		}
		out = append(out, guest.Disk{Path: path, Format: d.format()})
	}
	return out, nil
}

func (d DiskSpec) format() string {
	if d.Format == "" {
		return "raw"
	}
	return d.Format
}

// makeImage creates an image of size bytes in format, empty or filled.
func makeImage(path, format string, size int64, fill Fill, seed uint64) error {
	if format == "" {
		format = "raw"
	}
	if format != "raw" && format != "qcow2" {
		return fmt.Errorf("format %q (want raw or qcow2)", format)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	raw := path
	if format == "qcow2" {
		if fill == FillZero {
			return qemuImg("create", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10))
		}
		raw = path + ".tmp"
		defer os.Remove(raw)
	}
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	if fill == FillRandom {
		err = writeRandom(f, size, seed)
	} else {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || format == "raw" {
		return err
	}
	return qemuImg("convert", "-q", "-f", "raw", "-O", "qcow2", raw, path)
}

// writeRandom writes size bytes of a ChaCha8 stream seeded by seed.
func writeRandom(f *os.File, size int64, seed uint64) error {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	copy(key[8:], "wanbench cache disk")
	src := rand.NewChaCha8(key)
	w := bufio.NewWriterSize(f, 1<<20)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		src.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	return w.Flush()
}

func qemuImg(args ...string) error {
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %v: %v: %s", args, err, out)
	}
	return nil
}
