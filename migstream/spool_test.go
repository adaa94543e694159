package migstream

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// TestSpoolMatchesFlat feeds one random sequence of records (pages in and
// out of order, pages sent again, zeros over written pages, fill pages)
// to a Flat and a Spool: both must read back alike, page bits included.
func TestSpoolMatchesFlat(t *testing.T) {
	// The large block spans several of Spool's runs.
	blocks := []Block{blkRAM, {ID: "big", Length: 3 * spoolRun}, blkVRAM}
	fsys := memfs.New()
	if err := fsys.MkdirAll("/work", 0o700); err != nil {
		t.Fatal(err)
	}
	fl, sp := NewFlat(), NewSpool(fsys, "/work", "t")
	defer fl.Close()
	defer sp.Close()
	for _, h := range []Handler{fl, sp} {
		if err := h.Blocks(blocks); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	record := func(i int, p int64) {
		off := p * PageSize
		switch rng.IntN(4) {
		case 0:
			for _, h := range []Handler{fl, sp} {
				if err := h.Zero(i, off, 0); err != nil {
					t.Fatal(err)
				}
			}
		case 1:
			fill := byte(rng.IntN(3)) // 0 too: a fill page of zeros
			for _, h := range []Handler{fl, sp} {
				if err := h.Zero(i, off, fill); err != nil {
					t.Fatal(err)
				}
			}
		default:
			pg := pageOf(byte(rng.IntN(256)))
			if rng.IntN(8) == 0 {
				clear(pg) // a PAGE record of zeros
			}
			for _, h := range []Handler{fl, sp} {
				if err := h.Page(i, off, pg); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// A first pass in order, then passes of pages sent again at random.
	for i, b := range blocks {
		for p := range b.Pages() {
			record(i, p)
		}
	}
	for range 3 {
		for range 2000 {
			i := rng.IntN(len(blocks))
			record(i, rng.Int64N(blocks[i].Pages()))
		}
		// Runs of consecutive pages after random ones, across a block's end.
		i := rng.IntN(len(blocks))
		for p := blocks[i].Pages() / 2; p < blocks[i].Pages(); p++ {
			record(i, p)
		}
	}
	if err := sp.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		got := make([]byte, b.Length)
		if _, err := sp.ReaderAt(i).ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, fl.Block(i)) {
			t.Fatalf("block %q: the spool differs from the flat image", b.ID)
		}
		for p := range b.Pages() {
			if sp.NonZero(i).Get(p) != fl.NonZero(i).Get(p) {
				t.Fatalf("block %q page %d: NonZero %v, Flat says %v", b.ID, p, sp.NonZero(i).Get(p), fl.NonZero(i).Get(p))
			}
		}
	}
	if names, err := fsys.List("/work"); err != nil || len(names) != 0 {
		t.Fatalf("spool files left in the directory: %v %v", names, err)
	}
}

// TestSpoolFailures: each failing file operation fails the record that
// needed it with an error naming the block and the cause, and leaves no
// file behind.
func TestSpoolFailures(t *testing.T) {
	for _, tc := range []struct {
		op   errorfs.OpKind
		want string
	}{
		{errorfs.OpCreate, `spool file for RAM block "pc.ram"`},
		{errorfs.OpRemove, `spool file for RAM block "pc.ram"`},
		{errorfs.OpTruncate, `spool file for RAM block "pc.ram"`},
		{errorfs.OpWriteAt, `spooling RAM block "pc.ram" to /work`},
	} {
		t.Run(tc.op.String(), func(t *testing.T) {
			mem := memfs.New()
			if err := mem.MkdirAll("/work", 0o700); err != nil {
				t.Fatal(err)
			}
			fsys := errorfs.Wrap(mem, errorfs.When(errorfs.Ops(tc.op), errorfs.OnIndex(0, syscall.ENOSPC)))
			var s sb
			s.header().start(2).memSize(false, blkRAM, blkVRAM).
				page("pc.ram", 0, pageOf(1)).page("", PageSize, pageOf(2)).eos().footer(2).
				part(2).zero("pc.ram", 0, 0).eos().footer(2).
				end(2).eos().footer(2).device()
			sp := NewSpool(fsys, "/work", "t")
			defer sp.Close()
			_, err := Parse(bytes.NewReader(s.bytes()), sp, Options{})
			if err == nil {
				err = sp.Flush()
			}
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ENOSPC and %q", err, tc.want)
			}
			if names, _ := mem.List("/work"); len(names) != 0 {
				t.Fatalf("spool files left in the directory: %v", names)
			}
		})
	}
}
