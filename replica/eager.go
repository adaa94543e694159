package replica

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Writing new targets as their items arrive.
//
// A target the committed manifest does not name (every target of a first
// epoch) gets an image file no committed epoch uses, which only the
// manifest written after the commit makes part of the replica. Nothing
// there needs protecting while the epoch is staged, so its data and zero
// items are written into that file as they are appended, beside the
// journal, instead of all being read back from the journal and written at
// commit: the initial sync of a VM no longer ends with a second pass over
// everything it sent. The journal still holds every item, so a crash
// changes nothing: a restarted process has no eager files, and Commit then
// starts those images empty (resetNewImages) and apply writes them from
// the journal, as always.
//
// An eager file holds exactly the items staged so far, applied in order
// (an item is written only once the stage has taken it and the journal
// holds it), so it is the epoch's end view of that target before any
// reference: a resumed epoch goes on writing it. Any failure to write it
// drops the eager files and leaves the work to apply. A stage discarded
// or replaced removes them, so nothing is left behind.

// eagerImage is one new target's image, written as items arrive.
type eagerImage struct {
	f    vfs.File
	name string
	// unflushed counts the bytes written since the kernel was last asked
	// to start writing the file out: the commit's sync of a first epoch's
	// images then finds most of them on disk already.
	unflushed int64
}

// writebackEvery is how many bytes an image takes between requests to
// start its writeback.
const writebackEvery = 8 << 20

// startEager opens, empty, the image of every new target of the stage
// just begun.
func (r *Replica) startEager(st *stage) {
	r.eager, r.early = map[uint16]*eagerImage{}, newEarlyRefs()
	for id, t := range st.targets {
		if t.base != nil {
			continue
		}
		name := r.fileFor(st, id)
		f, err := r.o.FS.OpenReadWrite(r.p(name))
		if err == nil {
			// The file may hold what an earlier stage wrote into it.
			if err = f.Truncate(0); err == nil {
				err = f.Truncate(int64(t.Size))
			}
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			r.dropEager(fmt.Errorf("open %s: %w", name, err))
			return
		}
		r.eager[id] = &eagerImage{f: f, name: name}
	}
}

// eagerWrite writes item it into its target's eager image, if it has one.
func (r *Replica) eagerWrite(it wire.Item) {
	if ref, ok := it.(*wire.PageRef); ok {
		r.earlyRef(ref)
		return
	}
	t, off, n, ok := imageTarget(it)
	if !ok {
		return
	}
	if r.early != nil {
		r.early.noteWrite(t, off, n)
	}
	if r.eager[t] == nil {
		return
	}
	e := r.eager[t]
	if err := writeItem(e.f, it); err != nil {
		r.dropEager(fmt.Errorf("epoch %d item %d: %w", r.st.begin.Epoch, it.ItemSeq(), err))
		return
	}
	e.wrote(len(wire.DataOf(it)))
}

// wrote counts n bytes just written into the image and starts its
// writeback every writebackEvery bytes.
func (e *eagerImage) wrote(n int) {
	e.unflushed += int64(n)
	if e.unflushed >= writebackEvery {
		e.unflushed = 0
		vfs.StartWriteback(e.f) // a hint: Commit's Sync reports real failures
	}
}

// imageTarget is the target a data or zero item writes and the byte range
// it writes there; ok is false for any other frame.
func imageTarget(fr wire.Frame) (target uint16, off, length uint64, ok bool) {
	switch f := fr.(type) {
	case *wire.DiskExtent:
		return f.Target, f.Offset, uint64(len(f.Data)), true
	case *wire.MemRun:
		return f.Target, f.Page * vmspec.PageSize, uint64(len(f.Data)), true
	case *wire.ZeroRun:
		return f.Target, f.Offset, f.Length, true
	}
	return 0, 0, 0, false
}

// writeItem writes a data or zero item into f, its target's image.
func writeItem(f vfs.File, fr wire.Frame) error {
	var err error
	switch it := fr.(type) {
	case *wire.DiskExtent:
		_, err = f.WriteAt(it.Data, int64(it.Offset))
	case *wire.MemRun:
		_, err = f.WriteAt(it.Data, int64(it.Page)*vmspec.PageSize)
	case *wire.ZeroRun:
		err = f.PunchHole(int64(it.Offset), int64(it.Length))
	}
	return err
}

// dropEager stops writing new targets early; apply writes them all from
// the journal. The files stay: Commit empties them before it reserves
// their space.
func (r *Replica) dropEager(why error) {
	for _, e := range r.eager {
		e.f.Close()
	}
	if why != nil && r.eager != nil {
		r.log.Warn("new images will be written at commit instead of as items arrive", "err", why)
	}
	r.eager, r.early = nil, nil
}

// removeEager drops the eager images of a stage that will not be applied
// and removes their files, which no committed epoch names.
func (r *Replica) removeEager() {
	images := r.eager
	r.dropEager(nil)
	for _, e := range images {
		if err := r.o.FS.Remove(r.p(e.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("remove image of a discarded epoch", "file", e.name, "err", err)
		}
	}
}

// resetNewImages empties the image of every new target that was not
// written as its items arrived: apply writes it whole from the journal,
// and it must not keep what a stage before a restart wrote.
func (r *Replica) resetNewImages(st *stage) error {
	for id, t := range st.targets {
		if t.base != nil || r.eager[id] != nil {
			continue
		}
		name := r.fileFor(st, id)
		f, err := r.o.FS.OpenReadWrite(r.p(name))
		if err != nil {
			return fmt.Errorf("epoch %d: open image %s: %w (%w)", st.begin.Epoch, name, err, ErrStorage)
		}
		err = f.Truncate(0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("epoch %d: empty image %s: %w (%w)", st.begin.Epoch, name, err, ErrStorage)
		}
	}
	return nil
}

// journalWrites reports whether apply must write any data or zero item
// from the journal: one whose target has no eager image.
func (r *Replica) journalWrites(st *stage) bool {
	for _, it := range st.items {
		switch it.Type {
		case wire.TypeDiskExtent, wire.TypeMemRun, wire.TypeZeroRun:
			if r.eager[it.Target] == nil {
				return true
			}
		}
	}
	return false
}
