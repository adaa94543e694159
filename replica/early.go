package replica

import (
	"fmt"
	"io"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Applying references as they arrive.
//
// A first epoch's references are most of its RAM (every page of the
// guest's page cache travels as a reference to a disk block), and applying
// them at commit left the link idle while the receiver copied them. When a
// reference's target and source both have eager images, it is applied
// into the target's image as soon as it is staged, reading its source as
// the eager image holds it then.
//
// Apply's rule is that references come last: they read every target as it
// is after all data and zero items, and what they write wins. An early
// application agrees with that unless something staged after it writes a
// page it read (its source was not final yet) or a page it wrote, or it
// reads or writes a page another early reference wrote (which checkCommit
// refuses anyway). The pages early references read and wrote are kept, and
// the first item that does any of this sets redo: apply then writes every
// reference again, as it always did, and nothing more is applied early.
// Without eager images (dropped, or after a restart) nothing was applied
// early either, and apply writes all references.

// earlyRefs is what the references applied early read and wrote.
type earlyRefs struct {
	n           int                 // references applied early
	redo        bool                // apply must write every reference again
	read, wrote map[uint16]*pageSet // by target
	buf         []byte              // a source's bytes, reused
}

func newEarlyRefs() *earlyRefs {
	return &earlyRefs{read: map[uint16]*pageSet{}, wrote: map[uint16]*pageSet{}}
}

// touches says whether pages [first, first+n) of target hit a page that an
// early reference read or wrote.
func (e *earlyRefs) touches(target uint16, first, n uint64) bool {
	return e.read[target].any(first, n) || e.wrote[target].any(first, n)
}

// noteWrite records a data or zero item staged after the early references:
// one that writes what any of them read or wrote undoes them.
func (e *earlyRefs) noteWrite(target uint16, off, length uint64) {
	if e.redo || e.n == 0 || length == 0 {
		return
	}
	first := off / vmspec.PageSize
	last := (off + length + vmspec.PageSize - 1) / vmspec.PageSize
	if e.touches(target, first, last-first) {
		e.redo = true
	}
}

// refSource is the first page and page count of what ref reads.
func refSource(ref *wire.PageRef) (first, n uint64) {
	if ref.Source == wire.RefPage {
		return ref.SrcOffset, uint64(ref.Count)
	}
	return ref.SrcOffset / vmspec.PageSize, uint64(ref.Count)
}

// earlyRef applies ref into its target's eager image if it can be, now.
// Any failure leaves the references to apply (redo); the eager images stay
// as good as they were for data.
func (r *Replica) earlyRef(ref *wire.PageRef) {
	e := r.early
	if e == nil || e.redo {
		return
	}
	dst, src := r.eager[ref.Target], r.eager[ref.SrcTarget]
	srcFirst, n := refSource(ref)
	if dst == nil || src == nil {
		// Applied at commit; it must not be preceded by an early one that
		// it would undo.
		if e.touches(ref.Target, ref.Page, n) {
			e.redo = true
		}
		return
	}
	if e.touches(ref.Target, ref.Page, n) || e.wrote[ref.SrcTarget].any(srcFirst, n) {
		e.redo = true
		return
	}
	size := int(n) * vmspec.PageSize
	if cap(e.buf) < size {
		e.buf = make([]byte, size)
	}
	b := e.buf[:size]
	if _, err := src.f.ReadAt(b, int64(srcFirst)*vmspec.PageSize); err != nil && err != io.EOF {
		r.log.Warn("references will be applied at commit", "err", fmt.Errorf("read %s: %w", src.name, err))
		e.redo = true
		return
	}
	if _, err := dst.f.WriteAt(b, int64(ref.Page)*vmspec.PageSize); err != nil {
		r.log.Warn("references will be applied at commit", "err", fmt.Errorf("write %s: %w", dst.name, err))
		e.redo = true
		return
	}
	e.read[ref.SrcTarget] = e.read[ref.SrcTarget].add(srcFirst, n)
	e.wrote[ref.Target] = e.wrote[ref.Target].add(ref.Page, n)
	e.n++
	dst.wrote(size)
}

// appliedEarly says whether apply may skip it, a staged reference.
func (r *Replica) appliedEarly(it stagedItem) bool {
	e := r.early
	return e != nil && !e.redo && r.eager[it.Target] != nil && r.eager[it.SrcTarget] != nil
}

// pageSet is a sparse set of page numbers: a bitmap per 4096 pages that
// holds any. A nil *pageSet is empty.
type pageSet struct {
	chunks map[uint64]*[64]uint64
}

const pageSetChunk = 64 * 64 // pages per bitmap

func (s *pageSet) add(first, n uint64) *pageSet {
	if s == nil {
		s = &pageSet{chunks: map[uint64]*[64]uint64{}}
	}
	for p := first; p < first+n; p++ {
		c := s.chunks[p/pageSetChunk]
		if c == nil {
			c = new([64]uint64)
			s.chunks[p/pageSetChunk] = c
		}
		i := p % pageSetChunk
		c[i/64] |= 1 << (i % 64)
	}
	return s
}

func (s *pageSet) any(first, n uint64) bool {
	if s == nil {
		return false
	}
	for p := first; p < first+n; {
		c := s.chunks[p/pageSetChunk]
		if c == nil {
			p = (p/pageSetChunk + 1) * pageSetChunk // the whole chunk is empty
			continue
		}
		i := p % pageSetChunk
		if c[i/64]&(1<<(i%64)) != 0 {
			return true
		}
		p++
	}
	return false
}
