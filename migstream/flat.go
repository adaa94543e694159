package migstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"golang.org/x/sys/unix"
)

// Flat is a Handler that lays each block out as a flat byte image in
// anonymous memory (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, so pages never
// written cost nothing) and tracks which pages hold non-zero data.
//
// Invariant: a page whose NonZero bit is clear is all zeros in the image,
// so a ZERO record only has to clear a page that was written before.
type Flat struct {
	blocks []Block
	mem    [][]byte
	nz     []*Bitmap
}

// imageable says whether b's length can be held as an image: whole pages,
// within MaxRAM.
func (b Block) imageable() bool {
	return b.Length > 0 && b.Length%PageSize == 0 && b.Length <= MaxRAM
}

// NewFlat returns an empty Flat; Parse fills it. Close it when done.
func NewFlat() *Flat { return &Flat{} }

// Blocks maps one zero-filled image per block. It implements Handler and
// may be called once.
func (f *Flat) Blocks(blocks []Block) error {
	if f.blocks != nil {
		return errors.New("migstream: Flat already holds a block list")
	}
	mem := make([][]byte, len(blocks))
	nz := make([]*Bitmap, len(blocks))
	for i, b := range blocks {
		if !b.imageable() {
			unmapAll(mem)
			return fmt.Errorf("migstream: RAM block %q length %d cannot be mapped", b.ID, b.Length)
		}
		m, err := unix.Mmap(-1, 0, int(b.Length), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			unmapAll(mem)
			return fmt.Errorf("migstream: mapping %d bytes for RAM block %q: %w", b.Length, b.ID, err)
		}
		mem[i] = m
		nz[i] = NewBitmap(b.Pages())
	}
	f.blocks, f.mem, f.nz = blocks, mem, nz
	return nil
}

// Page stores one page; an all-zero page is handled as Zero(0).
func (f *Flat) Page(i int, off int64, data []byte) error {
	dst, err := f.page(i, off)
	if err != nil {
		return err
	}
	if len(data) != PageSize {
		return fmt.Errorf("migstream: page of %d bytes", len(data))
	}
	p := off / PageSize
	// The zero test stops at the first non-zero byte, so it is nearly free
	// for data pages and keeps the NonZero bitmap exact.
	if isZero(data) {
		if f.nz[i].Get(p) {
			clear(dst)
			f.nz[i].clear(p)
		}
		return nil
	}
	copy(dst, data)
	f.nz[i].set(p)
	return nil
}

// Zero fills one page with fill; fill 0 clears a page written earlier.
func (f *Flat) Zero(i int, off int64, fill byte) error {
	dst, err := f.page(i, off)
	if err != nil {
		return err
	}
	p := off / PageSize
	if fill == 0 {
		if f.nz[i].Get(p) {
			clear(dst)
			f.nz[i].clear(p)
		}
		return nil
	}
	for j := range dst {
		dst[j] = fill
	}
	f.nz[i].set(p)
	return nil
}

func (f *Flat) page(i int, off int64) ([]byte, error) {
	if i < 0 || i >= len(f.mem) || off < 0 || off%PageSize != 0 || off >= int64(len(f.mem[i])) {
		return nil, fmt.Errorf("migstream: page at block %d offset 0x%x is outside the mapped blocks", i, off)
	}
	return f.mem[i][off : off+PageSize : off+PageSize], nil
}

// BlockList is the block list Parse announced.
func (f *Flat) BlockList() []Block { return f.blocks }

// Block is block i's image, valid until Close.
func (f *Flat) Block(i int) []byte { return f.mem[i] }

// ReaderAt reads block i's image, valid until Close.
func (f *Flat) ReaderAt(i int) io.ReaderAt { return bytes.NewReader(f.mem[i]) }

// Flush does nothing: Flat writes every page as it comes. It lets callers
// hold a Flat and a Spool alike.
func (f *Flat) Flush() error { return nil }

// NonZero tells which pages of block i hold non-zero data.
func (f *Flat) NonZero(i int) *Bitmap { return f.nz[i] }

// Close unmaps every image.
func (f *Flat) Close() error {
	err := unmapAll(f.mem)
	f.mem, f.nz, f.blocks = nil, nil, nil
	return err
}

func unmapAll(mem [][]byte) error {
	var errs []error
	for _, m := range mem {
		if m != nil {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, fmt.Errorf("migstream: munmap: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Bitmap holds one bit per page.
type Bitmap struct {
	words []uint64
	n     int64
}

// NewBitmap returns a bitmap of n clear bits.
func NewBitmap(n int64) *Bitmap {
	return &Bitmap{words: make([]uint64, (n+63)/64), n: n}
}

// Len is the number of pages covered.
func (b *Bitmap) Len() int64 { return b.n }

// Get reports bit p.
func (b *Bitmap) Get(p int64) bool { return b.words[p>>6]&(1<<(p&63)) != 0 }

func (b *Bitmap) set(p int64)   { b.words[p>>6] |= 1 << (p & 63) }
func (b *Bitmap) clear(p int64) { b.words[p>>6] &^= 1 << (p & 63) }

// Count is the number of set bits.
func (b *Bitmap) Count() int64 {
	var c int
	for _, w := range b.words {
		c += bits.OnesCount64(w)
	}
	return int64(c)
}

// Run is a maximal range of pages with the same bit.
type Run struct {
	First, Count int64 // pages
	NonZero      bool
}

// Bytes is the run as a byte offset and length.
func (r Run) Bytes() (off, n int64) { return r.First * PageSize, r.Count * PageSize }

// Runs splits the bitmap into alternating runs of clear and set bits that
// cover every page in order.
func (b *Bitmap) Runs() []Run {
	var runs []Run
	for p := int64(0); p < b.n; {
		v := b.Get(p)
		end := b.next(p, !v)
		runs = append(runs, Run{First: p, Count: end - p, NonZero: v})
		p = end
	}
	return runs
}

// next is the first page at or after p whose bit is v, or Len.
func (b *Bitmap) next(p int64, v bool) int64 {
	for p < b.n {
		w := b.words[p>>6]
		if !v {
			w = ^w
		}
		w >>= uint(p & 63)
		if w != 0 {
			return min(p+int64(bits.TrailingZeros64(w)), b.n)
		}
		p = (p | 63) + 1
	}
	return b.n
}
