package sender

import (
	"bytes"
	"fmt"
	"io"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/internal/bufpool"
	"github.com/drsync/drsync/vmspec"

	"github.com/drsync/drsync/pagecache"
)

// Dedup turns memory pages whose content a disk of the same snapshot
// holds (the guest's page cache, mostly) into references, as FDM does:
// the replica copies the page from its own disk instead of receiving it.
//
// It keeps a pagecache.Index of the disks' content at the latest planned
// cut, fed by the blocks the planner reads; a disk is read whole once per
// sender start so that unchanged data is indexed too. Every reference is
// checked byte for byte against the snapshot's disk before it is used:
// the index only proposes.
//
// A second index holds the RAM pages, fed by the hashes the planner
// computes anyway, so that a page equal to another page of memory travels
// as a reference to it (RefPage). The replica reads a reference's source
// as it is after the epoch's data and zero items but before any reference
// (replica.checkCommit refuses references that read what references
// write), so a RAM source must be a page the epoch does not write by
// reference: one already planned as data or left unchanged, or one not yet
// planned that the replica already holds with this content (it will then
// be left unchanged).
type Dedup struct {
	idx     *pagecache.Index
	disks   targetIDs       // disk name ↔ index target
	indexed map[string]bool // disks read whole since the sender started
	snap    *Snapshot       // the snapshot being planned, for verification
	byName  map[string]int  // disk name → target index in snap
	buf     []byte
	window  window

	ram     *pagecache.Index
	rams    targetIDs // RAM name ↔ RAM index target
	ramByID []int     // RAM index target → target index in snap, -1 if absent
	// ramFed is, per RAM index target, the table whose every page the
	// index was last fed (a whole scan of the target), nil while a scan
	// is under way or after one that did not finish. A chunk kept from
	// that very table needs no feeding again.
	ramFed map[uint16]*blockhash.Table

	// The plan in progress: what the replica holds per snapshot target
	// (nil: unknown), the pages written by reference so far, and where
	// the scan is.
	old    []*blockhash.Table
	refd   [][]uint64 // per snapshot target, a bit per page
	curTgt int
	curOff int64
}

// NewDedup returns a Dedup whose index holds at most maxEntries pages
// (pagecache.EntryBytes each; 0 for pagecache's default).
func NewDedup(maxEntries int) (*Dedup, error) {
	idx, err := pagecache.New(pagecache.Options{MaxEntries: maxEntries})
	if err != nil {
		return nil, err
	}
	ram, err := pagecache.New(pagecache.Options{MaxEntries: maxEntries})
	if err != nil {
		return nil, err
	}
	return &Dedup{idx: idx, indexed: map[string]bool{}, buf: make([]byte, vmspec.PageSize), ram: ram}, nil
}

// targetIDs numbers target names for an index, stably across epochs.
type targetIDs struct {
	ids   map[string]uint16
	names []string // by id
}

func (t *targetIDs) id(name string) uint16 {
	id, ok := t.ids[name]
	if !ok {
		if t.ids == nil {
			t.ids = map[string]uint16{}
		}
		id = uint16(len(t.names))
		t.ids[name] = id
		t.names = append(t.names, name)
	}
	return id
}

func (d *Dedup) id(name string) uint16    { return d.disks.id(name) }
func (d *Dedup) ramID(name string) uint16 { return d.rams.id(name) }

// begin prepares for planning snap against old, what the replica holds
// of each of its targets (nil: unknown).
func (d *Dedup) begin(snap *Snapshot, old []*blockhash.Table) {
	d.snap = snap
	d.byName = map[string]int{}
	for i, t := range snap.Targets {
		switch t.Kind {
		case vmspec.KindDisk:
			d.byName[t.Name] = i
			d.id(t.Name)
		case vmspec.KindRAM:
			d.ramID(t.Name)
		}
	}
	d.ramByID = make([]int, len(d.rams.names))
	for i := range d.ramByID {
		d.ramByID[i] = -1
	}
	d.old = old
	d.refd = make([][]uint64, len(snap.Targets))
	for i, t := range snap.Targets {
		if t.Kind == vmspec.KindRAM {
			d.ramByID[d.ramID(t.Name)] = i
			d.refd[i] = make([]uint64, (t.Size/vmspec.PageSize+63)/64)
		}
	}
	d.curTgt, d.curOff = 0, 0
}

// end drops what planning the snapshot needed: the snapshot itself (and
// through it what its source holds for the cut), the replica's tables and
// the read-ahead window, whose buffer goes back to a pool every VM's
// planner shares. A sender of many VMs otherwise kept all of it per VM
// between epochs.
func (d *Dedup) end() {
	if d.window.buf != nil {
		windowBufs.Put(d.window.buf)
	}
	d.window = window{}
	d.snap, d.byName, d.old, d.refd = nil, nil, nil, nil
}

// planning says that target i is scanned next.
func (d *Dedup) planning(i int) { d.curTgt, d.curOff = i, 0 }

// ramScan starts the scan of RAM target name, whose previous cut's table
// is prev, and says whether the index already holds every page of prev
// (the last scan of the target fed it prev whole). Until ramScanned, the
// target counts as not fed.
func (d *Dedup) ramScan(name string, prev *blockhash.Table) (fed bool) {
	id := d.ramID(name)
	fed = prev != nil && d.ramFed[id] == prev
	delete(d.ramFed, id)
	return fed
}

// ramScanned records that the scan of RAM target name fed the index
// every page of next.
func (d *Dedup) ramScanned(name string, next *blockhash.Table) {
	if d.ramFed == nil {
		d.ramFed = map[uint16]*blockhash.Table{}
	}
	d.ramFed[d.ramID(name)] = next
}

// ramKept records that the pages of target i up to end were planned
// unchanged, as ramPage would have, for an index that holds them already.
func (d *Dedup) ramKept(i int, end int64) { d.curTgt, d.curOff = i, end }

// ramPage records the content of RAM page off of target i, now planned
// (hash h, or zero), and whether it travels as a reference.
func (d *Dedup) ramPage(i int, off int64, h uint64, zero, ref bool) {
	id := d.ramID(d.snap.Targets[i].Name)
	if zero {
		d.ram.Zero(id, off, vmspec.PageSize)
	} else {
		d.ram.SetPage(id, off, h)
	}
	if ref {
		p := off / vmspec.PageSize
		d.refd[i][p/64] |= 1 << (p % 64)
	}
	d.curOff = off + vmspec.PageSize
}

// usableSource reports whether page off of RAM target i, holding content
// of hash h in the snapshot, reads as that content on the replica when the
// epoch's references are applied.
func (d *Dedup) usableSource(i int, off int64, h uint64) bool {
	p := off / vmspec.PageSize
	if i < d.curTgt || i == d.curTgt && off < d.curOff {
		// Planned: as data or unchanged, unless written by reference.
		return d.refd[i][p/64]&(1<<(p%64)) == 0
	}
	// Not planned yet: only if the replica already holds it, so that it
	// will be found unchanged.
	old := d.old[i]
	if i == d.curTgt && off == d.curOff {
		return false // the page being planned
	}
	return old != nil && int(p) < len(old.Hashes) && old.Hashes[p] == h
}

// findRAM returns a RAM page of the snapshot equal to page (hash h) that
// the epoch may reference, verified byte for byte, other than the page at
// off of target i itself.
func (d *Dedup) findRAM(i int, off int64, h uint64, page []byte) (target int, srcOff int64, ok bool) {
	for _, loc := range d.ram.Lookup(h) {
		if int(loc.Target) >= len(d.ramByID) {
			continue
		}
		j := d.ramByID[loc.Target]
		if j < 0 || j == i && loc.Off == off || loc.Off+vmspec.PageSize > d.snap.Targets[j].Size {
			continue
		}
		if !d.usableSource(j, loc.Off, h) {
			continue
		}
		if _, err := d.snap.Targets[j].Reader.ReadAt(d.buf, loc.Off); err != nil && err != io.EOF {
			continue
		}
		if bytes.Equal(d.buf, page) {
			return j, loc.Off, true
		}
	}
	return 0, 0, false
}

// needsFullRead reports whether the planner must read every non-zero
// block of disk name, so that the index learns its unchanged content.
func (d *Dedup) needsFullRead(name string) bool { return !d.indexed[name] }

func (d *Dedup) scanned(name string)                     { d.indexed[name] = true }
func (d *Dedup) update(name string, off int64, b []byte) { d.idx.Update(d.id(name), off, b) }
func (d *Dedup) zero(name string, off, n int64)          { d.idx.Zero(d.id(name), off, n) }

// readAhead is how much of a disk one verification read fetches. The
// guest's page cache holds files read in order, in memory pages mostly
// allocated in order, so consecutive memory pages usually refer to
// consecutive disk pages: one read then verifies a few hundred of them
// instead of one request each to a disk that may be an NBD export.
const readAhead = 1 << 20

// windowBufs holds read-ahead buffers between plans.
var windowBufs = bufpool.New(readAhead, 1)

// ReadPage implements pagecache.PageReader over the snapshot's disks,
// through a read-ahead window (a snapshot does not change while planned).
func (d *Dedup) ReadPage(loc pagecache.Loc, buf []byte) error {
	i, ok := d.target(loc.Target)
	if !ok {
		return fmt.Errorf("index target %d is not a disk of this snapshot", loc.Target)
	}
	w := &d.window
	if w.snap != d.snap || w.target != i || loc.Off < w.off || loc.Off+int64(len(buf)) > w.off+int64(len(w.data)) {
		t := d.snap.Targets[i]
		off := loc.Off - loc.Off%readAhead
		n := min(int64(readAhead), t.Size-off)
		if off < 0 || loc.Off+int64(len(buf)) > off+n {
			_, err := t.Reader.ReadAt(buf, loc.Off)
			return err
		}
		if cap(w.buf) < readAhead {
			w.buf = windowBufs.Get(readAhead)
		}
		*w = window{snap: d.snap, target: i, off: off, buf: w.buf}
		m, err := t.Reader.ReadAt(w.buf[:n], off)
		if err != nil && !(err == io.EOF && int64(m) == n) {
			return err
		}
		w.data = w.buf[:n]
	}
	copy(buf, w.data[loc.Off-w.off:])
	return nil
}

// window is a read-ahead buffer of one disk of one snapshot.
type window struct {
	snap   *Snapshot
	target int
	off    int64
	data   []byte // valid bytes at off
	buf    []byte
}

// target maps an index target to the snapshot's target index.
func (d *Dedup) target(id uint16) (int, bool) {
	if int(id) >= len(d.disks.names) {
		return 0, false
	}
	i, ok := d.byName[d.disks.names[id]]
	return i, ok
}

// find returns the snapshot target and byte offset of a disk page equal to
// page (whose hash is h), verified.
func (d *Dedup) find(h uint64, page []byte) (target uint16, off int64, ok bool) {
	loc, ok, err := d.idx.FindHash(h, page, d)
	if err != nil || !ok {
		return 0, 0, false
	}
	i, ok := d.target(loc.Target)
	return uint16(i), loc.Off, ok
}

// Entries and MemoryBytes describe the index, for status.
func (d *Dedup) Entries() int     { return d.idx.Len() }
func (d *Dedup) MemoryBytes() int { return d.idx.MemoryBytes() }
