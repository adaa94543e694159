package migstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/drsync/drsync/vfs"
)

// spoolRun is the most bytes Spool gathers before it writes them: a
// migration's first pass sends each block's pages in order, so runs of
// consecutive pages go to the file in few large writes.
const spoolRun = 1 << 20

// Spool is a Handler that keeps each block's image in a file instead of in
// this process's memory, so that holding a stream costs page cache, which
// the kernel may write out and reclaim, and disk space, not the process's
// own memory. The files are removed as soon as they are created: a process
// killed while it holds a Spool leaves nothing behind, and nothing else can
// open them. Pages are read back through ReaderAt.
//
// Like Flat, a page whose NonZero bit is clear reads as zeros: files start
// sparse, and a ZERO record over a page written before writes zeros there.
type Spool struct {
	fs     vfs.FS
	dir    string
	prefix string
	blocks []Block
	files  []vfs.File
	nz     []*Bitmap

	// The pages received but not yet written: consecutive ones of one
	// block, starting at runOff.
	runBlock int
	runOff   int64
	run      []byte
}

// NewSpool returns an empty Spool whose files go in dir, named from prefix
// (for the moment each exists): Parse fills it. Close it when done.
func NewSpool(fs vfs.FS, dir, prefix string) *Spool {
	return &Spool{fs: fs, dir: dir, prefix: prefix}
}

// Blocks creates one empty file per block. It implements Handler and may be
// called once.
func (s *Spool) Blocks(blocks []Block) error {
	if s.blocks != nil {
		return errors.New("migstream: Spool already holds a block list")
	}
	files := make([]vfs.File, 0, len(blocks))
	nz := make([]*Bitmap, len(blocks))
	linked := "" // a file created but not yet removed
	fail := func(err error) error {
		for _, f := range files {
			f.Close()
		}
		if linked != "" {
			s.fs.Remove(linked) // once more; its error is the one returned
		}
		return err
	}
	for i, b := range blocks {
		if !b.imageable() {
			return fail(fmt.Errorf("migstream: RAM block %q length %d cannot be spooled", b.ID, b.Length))
		}
		name := path.Join(s.dir, fmt.Sprintf("%s-%d.spool", s.prefix, i))
		f, err := s.fs.Create(name)
		if err != nil {
			return fail(fmt.Errorf("migstream: spool file for RAM block %q: %w", b.ID, err))
		}
		files, linked = append(files, f), name
		// Unlinked at once: the open file is all that keeps it.
		if err := s.fs.Remove(name); err != nil {
			return fail(fmt.Errorf("migstream: spool file for RAM block %q: %w", b.ID, err))
		}
		linked = ""
		if err := f.Truncate(b.Length); err != nil {
			return fail(fmt.Errorf("migstream: spool file for RAM block %q: %w", b.ID, err))
		}
		nz[i] = NewBitmap(b.Pages())
	}
	s.blocks, s.files, s.nz = blocks, files, nz
	s.run = make([]byte, 0, spoolRun)
	return nil
}

// Page stores one page; an all-zero page is handled as Zero(0).
func (s *Spool) Page(i int, off int64, data []byte) error {
	if err := s.check(i, off); err != nil {
		return err
	}
	if len(data) != PageSize {
		return fmt.Errorf("migstream: page of %d bytes", len(data))
	}
	if isZero(data) {
		return s.Zero(i, off, 0)
	}
	return s.add(i, off, data)
}

// Zero stores a page whose every byte is fill. A page of zeros needs a
// write only over a page that was written before.
func (s *Spool) Zero(i int, off int64, fill byte) error {
	if err := s.check(i, off); err != nil {
		return err
	}
	if fill != 0 {
		return s.add(i, off, bytes.Repeat([]byte{fill}, PageSize))
	}
	p := off / PageSize
	if !s.nz[i].Get(p) {
		return nil
	}
	// Written out first, so that the zeros land after the page they clear.
	if err := s.Flush(); err != nil {
		return err
	}
	if _, err := s.files[i].WriteAt(zeroPage[:], off); err != nil {
		return s.writeErr(i, err)
	}
	s.nz[i].clear(p)
	return nil
}

// add appends a non-zero page to the pending run, writing the run out
// first when the page does not follow it.
func (s *Spool) add(i int, off int64, data []byte) error {
	if len(s.run) > 0 && (i != s.runBlock || off != s.runOff+int64(len(s.run)) || len(s.run) == cap(s.run)) {
		if err := s.Flush(); err != nil {
			return err
		}
	}
	if len(s.run) == 0 {
		s.runBlock, s.runOff = i, off
	}
	s.run = append(s.run, data...)
	s.nz[i].set(off / PageSize)
	return nil
}

// Flush writes the pending pages. Parse's caller calls it once the stream
// is complete, before reading the images.
func (s *Spool) Flush() error {
	if len(s.run) == 0 {
		return nil
	}
	_, err := s.files[s.runBlock].WriteAt(s.run, s.runOff)
	s.run = s.run[:0]
	if err != nil {
		return s.writeErr(s.runBlock, err)
	}
	return nil
}

func (s *Spool) writeErr(i int, err error) error {
	return fmt.Errorf("migstream: spooling RAM block %q to %s: %w", s.blocks[i].ID, s.dir, err)
}

func (s *Spool) check(i int, off int64) error {
	if i < 0 || i >= len(s.files) || off < 0 || off%PageSize != 0 || off >= s.blocks[i].Length {
		return fmt.Errorf("migstream: page at block %d offset 0x%x is outside the spooled blocks", i, off)
	}
	return nil
}

// BlockList is the block list Parse announced.
func (s *Spool) BlockList() []Block { return s.blocks }

// NonZero tells which pages of block i hold non-zero data.
func (s *Spool) NonZero(i int) *Bitmap { return s.nz[i] }

// ReaderAt reads block i's image, valid until Close. Pages not yet
// written out (Flush) read as they were before.
func (s *Spool) ReaderAt(i int) io.ReaderAt { return s.files[i] }

// Close closes, and so frees, every file.
func (s *Spool) Close() error {
	var errs []error
	for _, f := range s.files {
		if err := f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("migstream: closing a spool file: %w", err))
		}
	}
	s.files, s.nz, s.blocks, s.run = nil, nil, nil, nil
	return errors.Join(errs...)
}
