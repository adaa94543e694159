package migstream

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Flat is a Handler that keeps each block's non-zero pages in memory,
// packed in the order they first arrived, and tracks which pages hold
// non-zero data. Zero pages cost nothing.
//
// Packed, not laid out at their addresses: a guest's non-zero pages lie
// scattered over its RAM, so a flat image would fault every one of them in
// as a small page (over a thousand per 4 MiB, each slow under a
// hypervisor, and the parser must keep up with a guest stopped for the
// cut's last pass). Packed, they fill the arena from its start; past its
// first 2 MiB it is mapped for transparent huge pages where the kernel
// offers them: one fault per 2 MiB, and nothing mapped that holds no page
// but the rest of the last huge page.
//
// Invariant: a page whose NonZero bit is clear reads as zeros, whatever
// its slot holds; a page that has been non-zero keeps its slot, so the
// arena never holds more slots than the block has pages.
type Flat struct {
	blocks []Block
	imgs   []*packed
}

// packed is one block's pages: slot[p] is 1 + the arena slot of page p, 0
// for a page never non-zero (slot is nil until a page is).
type packed struct {
	arena []byte // the mapping, unmapped by Close
	base  []byte // arena from its first huge-page boundary
	slot  []uint32
	used  uint32
	nz    *Bitmap
	// The prefaulter (prefault.go), started once used reaches
	// prefaultFrom, and the use at which to ask it for more.
	pf      *prefaulter
	nextAsk int64
}

// size is the block's length in bytes.
func (img *packed) size() int64 { return int64(len(img.base)) }

// hugePage is the boundary the arena starts at, so that its first 2 MiB
// can be one huge page.
const hugePage = 2 << 20

// imageable says whether b's length can be held as an image: whole pages,
// within MaxRAM.
func (b Block) imageable() bool {
	return b.Length > 0 && b.Length%PageSize == 0 && b.Length <= MaxRAM
}

// NewFlat returns an empty Flat; Parse fills it. Close it when done.
func NewFlat() *Flat { return &Flat{} }

// Blocks reserves one arena per block. It implements Handler and may be
// called once.
func (f *Flat) Blocks(blocks []Block) error {
	if f.blocks != nil {
		return errors.New("migstream: Flat already holds a block list")
	}
	imgs := make([]*packed, 0, len(blocks))
	for _, b := range blocks {
		if !b.imageable() {
			unmapAll(imgs)
			return fmt.Errorf("migstream: RAM block %q length %d cannot be mapped", b.ID, b.Length)
		}
		img, err := newPacked(b.Length)
		if err != nil {
			unmapAll(imgs)
			return fmt.Errorf("migstream: mapping %d bytes for RAM block %q: %w", b.Length, b.ID, err)
		}
		imgs = append(imgs, img)
	}
	f.blocks, f.imgs = blocks, imgs
	return nil
}

// newPacked reserves an arena for size bytes of pages. NORESERVE: only the
// pages written are ever backed.
func newPacked(size int64) (*packed, error) {
	pad := int64(0)
	if size >= hugePage {
		pad = hugePage
	}
	m, err := unix.Mmap(-1, 0, int(size+pad), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	base := m
	if pad > 0 {
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(m)))
		skip := int64((hugePage - addr%hugePage) % hugePage)
		base = m[skip : skip+size : skip+size]
		// From the second 2 MiB on only: a block with few non-zero pages
		// (video memory, ROMs, a tracked cut's small blocks) stays in small
		// pages, where a huge one would cost 2 MiB for each. Advice only:
		// a kernel without transparent huge pages refuses it, and small
		// pages work as before.
		if size > hugePage {
			_ = unix.Madvise(base[hugePage:], unix.MADV_HUGEPAGE)
		}
	}
	return &packed{arena: m, base: base, nz: NewBitmap(size / PageSize), nextAsk: prefaultFrom}, nil
}

// at is page p's bytes in the arena, given a slot to it first if it has
// none.
func (img *packed) at(p int64) []byte {
	if img.slot == nil {
		// Made at the first page: a block the stream never fills (a
		// tracked cut's shared RAM, gigabytes of it) costs no index.
		img.slot = make([]uint32, img.size()/PageSize)
	}
	s := img.slot[p]
	if s == 0 {
		img.used++
		s = img.used
		img.slot[p] = s
		if used := int64(s) * PageSize; used >= img.nextAsk {
			if img.pf == nil {
				img.pf = startPrefault(img.base)
			}
			img.pf.ask(used)
			img.nextAsk = used + hugePage
		}
	}
	off := int64(s-1) * PageSize
	return img.base[off : off+PageSize : off+PageSize]
}

// slotOf is page p's slot, 0 if it has none.
func (img *packed) slotOf(p int64) uint32 {
	if img.slot == nil {
		return 0
	}
	return img.slot[p]
}

// zero makes page p read as zeros. Its slot keeps the old bytes, which
// no read returns, until a later write fills it again.
func (img *packed) zero(p int64) { img.nz.clear(p) }

// Page stores one page; an all-zero page is handled as Zero(0).
func (f *Flat) Page(i int, off int64, data []byte) error {
	img, p, err := f.page(i, off)
	if err != nil {
		return err
	}
	if len(data) != PageSize {
		return fmt.Errorf("migstream: page of %d bytes", len(data))
	}
	// The zero test stops at the first non-zero byte, so it is nearly free
	// for data pages and keeps the NonZero bitmap exact.
	if isZero(data) {
		img.zero(p)
		return nil
	}
	copy(img.at(p), data)
	img.nz.set(p)
	return nil
}

// Zero fills one page with fill; fill 0 clears a page written earlier.
func (f *Flat) Zero(i int, off int64, fill byte) error {
	img, p, err := f.page(i, off)
	if err != nil {
		return err
	}
	if fill == 0 {
		img.zero(p)
		return nil
	}
	dst := img.at(p)
	for j := range dst {
		dst[j] = fill
	}
	img.nz.set(p)
	return nil
}

func (f *Flat) page(i int, off int64) (*packed, int64, error) {
	if i < 0 || i >= len(f.imgs) || off < 0 || off%PageSize != 0 || off >= f.imgs[i].size() {
		return nil, 0, fmt.Errorf("migstream: page at block %d offset 0x%x is outside the mapped blocks", i, off)
	}
	return f.imgs[i], off / PageSize, nil
}

// BlockList is the block list Parse announced.
func (f *Flat) BlockList() []Block { return f.blocks }

// Block is a copy of block i's image laid out at its addresses: as large
// as the block, so meant for tests and small blocks.
func (f *Flat) Block(i int) []byte {
	img := f.imgs[i]
	b := make([]byte, img.size())
	img.ReadAt(b, 0)
	return b
}

// ReaderAt reads block i's image at its addresses, valid until Close.
func (f *Flat) ReaderAt(i int) io.ReaderAt { return f.imgs[i] }

// ReadAt reads the image as if laid out at its addresses: pages never
// non-zero read as zeros. Like bytes.Reader, it returns io.EOF when it
// reads fewer than len(b) bytes.
func (img *packed) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("migstream: read at a negative offset")
	}
	size := img.size()
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), size-off))
	for done := 0; done < n; {
		p, in := (off+int64(done))/PageSize, (off+int64(done))%PageSize
		k := min(n-done, int(PageSize-in))
		if s := img.slotOf(p); s != 0 && img.nz.Get(p) {
			at := int64(s-1)*PageSize + in
			copy(b[done:done+k], img.base[at:])
		} else {
			clear(b[done : done+k])
		}
		done += k
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// Flush does nothing: Flat writes every page as it comes. It lets callers
// hold a Flat and a Spool alike.
func (f *Flat) Flush() error { return nil }

// NonZero tells which pages of block i hold non-zero data.
func (f *Flat) NonZero(i int) *Bitmap { return f.imgs[i].nz }

// Close unmaps every arena.
func (f *Flat) Close() error {
	err := unmapAll(f.imgs)
	f.imgs, f.blocks = nil, nil
	return err
}

func unmapAll(imgs []*packed) error {
	var errs []error
	for _, img := range imgs {
		if img == nil {
			continue
		}
		if img.pf != nil {
			img.pf.close()
			img.pf = nil
		}
		if img.arena != nil {
			if err := unix.Munmap(img.arena); err != nil {
				errs = append(errs, fmt.Errorf("migstream: munmap: %w", err))
			}
			img.arena, img.base = nil, nil
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
