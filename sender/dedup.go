package sender

import (
	"fmt"

	"github.com/drsync/drsync/pagecache"
	"github.com/drsync/drsync/wire"
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
type Dedup struct {
	idx     *pagecache.Index
	ids     map[string]uint16 // disk name → index target
	names   []string          // index target → disk name
	indexed map[string]bool   // disks read whole since the sender started
	snap    *Snapshot         // the snapshot being planned, for verification
	byName  map[string]int    // disk name → target index in snap
	buf     []byte
}

// NewDedup returns a Dedup whose index holds at most maxEntries pages
// (pagecache.EntryBytes each; 0 for pagecache's default).
func NewDedup(maxEntries int) (*Dedup, error) {
	idx, err := pagecache.New(pagecache.Options{MaxEntries: maxEntries})
	if err != nil {
		return nil, err
	}
	return &Dedup{idx: idx, ids: map[string]uint16{}, indexed: map[string]bool{}, buf: make([]byte, wire.PageSize)}, nil
}

func (d *Dedup) id(name string) uint16 {
	id, ok := d.ids[name]
	if !ok {
		id = uint16(len(d.ids))
		d.ids[name] = id
		d.names = append(d.names, name)
	}
	return id
}

// begin prepares for planning snap.
func (d *Dedup) begin(snap *Snapshot) {
	d.snap = snap
	d.byName = map[string]int{}
	for i, t := range snap.Targets {
		if t.Kind == wire.KindDisk {
			d.byName[t.Name] = i
			d.id(t.Name)
		}
	}
}

// needsFullRead reports whether the planner must read every non-zero
// block of disk name, so that the index learns its unchanged content.
func (d *Dedup) needsFullRead(name string) bool { return !d.indexed[name] }

func (d *Dedup) scanned(name string)                     { d.indexed[name] = true }
func (d *Dedup) update(name string, off int64, b []byte) { d.idx.Update(d.id(name), off, b) }
func (d *Dedup) zero(name string, off, n int64)          { d.idx.Zero(d.id(name), off, n) }

// ReadPage implements pagecache.PageReader over the snapshot's disks.
func (d *Dedup) ReadPage(loc pagecache.Loc, buf []byte) error {
	i, ok := d.target(loc.Target)
	if !ok {
		return fmt.Errorf("index target %d is not a disk of this snapshot", loc.Target)
	}
	_, err := d.snap.Targets[i].Reader.ReadAt(buf, loc.Off)
	return err
}

// target maps an index target to the snapshot's target index.
func (d *Dedup) target(id uint16) (int, bool) {
	if int(id) >= len(d.names) {
		return 0, false
	}
	i, ok := d.byName[d.names[id]]
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
