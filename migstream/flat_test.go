package migstream

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestFlatAgainstModel drives a Flat with random records and checks every
// read against a plain image laid out at its addresses: pages rewritten,
// zeroed and written again, reads across page boundaries and past the end.
func TestFlatAgainstModel(t *testing.T) {
	// "shared" is never written, as a tracked cut's shared RAM.
	blocks := []Block{{ID: "ram", Length: 4 * hugePage}, {ID: "rom", Length: 3 * PageSize}, {ID: "shared", Length: 2 * hugePage}}
	fl := NewFlat()
	defer fl.Close()
	if err := fl.Blocks(blocks); err != nil {
		t.Fatal(err)
	}
	model := [][]byte{make([]byte, blocks[0].Length), make([]byte, blocks[1].Length), make([]byte, blocks[2].Length)}
	touched := []map[int64]bool{{}, {}, {}} // pages ever non-zero: each holds one slot
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		i := rng.IntN(2)
		// Few pages, so that most records land on a page seen before.
		p := rng.Int64N(min(blocks[i].Length/PageSize, 300))
		off := p * PageSize
		dst := model[i][off : off+PageSize]
		switch rng.IntN(3) {
		case 0:
			fill := byte(rng.IntN(2) * (1 + rng.IntN(255)))
			if err := fl.Zero(i, off, fill); err != nil {
				t.Fatal(err)
			}
			for j := range dst {
				dst[j] = fill
			}
		default:
			pg := make([]byte, PageSize)
			if rng.IntN(4) > 0 {
				for j := range 8 {
					pg[rng.IntN(PageSize)] = byte(j + 1)
				}
			}
			if err := fl.Page(i, off, pg); err != nil {
				t.Fatal(err)
			}
			copy(dst, pg)
		}
		if !isZero(dst) {
			touched[i][p] = true
		}
	}
	for i, want := range model {
		img := fl.imgs[i]
		if int(img.used) != len(touched[i]) {
			t.Errorf("block %d: %d arena slots for %d pages ever non-zero", i, img.used, len(touched[i]))
		}
		for p := int64(0); p < int64(len(want))/PageSize; p++ {
			if got, nz := fl.NonZero(i).Get(p), !isZero(want[p*PageSize:(p+1)*PageSize]); got != nz {
				t.Fatalf("block %d page %d: NonZero %v, want %v", i, p, got, nz)
			}
		}
		if !bytes.Equal(fl.Block(i), want) {
			t.Fatalf("block %d: image differs", i)
		}
		r := fl.ReaderAt(i)
		for range 500 {
			off := rng.Int64N(int64(len(want)) + 2*PageSize)
			b := make([]byte, rng.IntN(3*PageSize)+1)
			n, err := r.ReadAt(b, off)
			wantN := int(max(0, min(int64(len(b)), int64(len(want))-off)))
			if n != wantN || (n < len(b)) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
				t.Fatalf("block %d: ReadAt(%d bytes at %d) = %d, %v; want %d bytes", i, len(b), off, n, err, wantN)
			}
			if n > 0 && !bytes.Equal(b[:n], want[off:off+int64(n)]) {
				t.Fatalf("block %d: ReadAt(%d bytes at %d) differs", i, len(b), off)
			}
		}
	}
	if fl.imgs[2].slot != nil {
		t.Error("a block never written has a slot index")
	}
	if _, err := fl.ReaderAt(0).ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}
	// The large block's arena starts on a huge-page boundary, so its pages
	// can come as huge pages.
	if addr := uintptr(unsafe.Pointer(unsafe.SliceData(fl.imgs[0].base))); addr%hugePage != 0 {
		t.Errorf("arena at %#x, not on a %d-byte boundary", addr, hugePage)
	}
}
