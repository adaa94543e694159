package rbdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/recovery"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// handle is an open, locked replica in a pool.
type handle struct {
	s      *Store
	vm     string
	o      replica.OpenOptions
	log    *slog.Logger
	lock   rbd.Image
	man    *replica.Manifest
	tables map[string]*blockhash.Table // by replica.Key
	// patched is, by replica.Key, the entries of a table changed since
	// its whole table was written (tables.go).
	patched map[string][]int64

	st      *replica.Stage
	nonce   uint64
	chunks  int    // chunks of st written
	pending []byte // the chunk being filled, nil if none
	pendN   int    // items in pending
	synced  int    // items of st durable
	broken  error  // a storage failure: reopen
	relsd   bool   // released
	chunkC  map[int][]wire.Frame
	enc     *wire.Encoder
	encBuf  *bytes.Buffer
}

var errReleased = fmt.Errorf("replica used while released: %w", replica.ErrBroken)

func (h *handle) obj(what string) string { return h.s.name(h.vm, what) }

func (h *handle) chunkName(nonce uint64, n int) string {
	return h.obj(fmt.Sprintf("journal.%016x.%d", nonce, n))
}

// note tells would-be lockers what the holder does; informational.
func (h *handle) note(activity string) {
	if err := h.lock.SetMetadata(holderKey, who(h.o.Holder, activity)); err != nil {
		h.log.Debug("lock note", "err", err)
	}
}

func (h *handle) fail(err error) error {
	if errors.Is(err, replica.ErrStorage) {
		h.broken = err
	}
	return err
}

func (h *handle) load() error {
	b, err := h.s.Pool.ReadObject(h.obj("manifest"))
	switch {
	case notExist(err):
		h.man = &replica.Manifest{Format: replica.ManifestFormat, VM: h.vm}
	case err != nil:
		return storageErr("read manifest", err)
	default:
		if h.man, err = replica.ParseManifest(b); err != nil {
			return fmt.Errorf("%s manifest: %w", h.s.Where(h.vm), err)
		}
		if h.man.VM != h.vm {
			return fmt.Errorf("%s holds VM %q, not %q: %w", h.s.Where(h.vm), h.man.VM, h.vm, replica.ErrCorrupt)
		}
	}
	h.patched = map[string][]int64{}
	for _, t := range h.man.Targets {
		tab, patched, err := readTable(func(name string) ([]byte, error) { return h.s.Pool.ReadObject(h.obj(name)) }, t, h.man.Epoch)
		if err != nil {
			return err
		}
		k := replica.Key(t.TargetKind(), t.Name)
		h.tables[k], h.patched[k] = tab, patched
	}
	return h.recover()
}

// recover applies the journal recovery rule (replica/recovery) to the
// journal objects.
func (h *handle) recover() error {
	hb, err := h.s.Pool.ReadObject(h.obj("journal"))
	if notExist(err) {
		return nil
	}
	if err != nil {
		return storageErr("read journal", err)
	}
	facts := recovery.JournalFacts{Exists: true}
	nonce, _, frames, perr := parse(hb, magicHeader, 0)
	var begin *wire.EpochBegin
	if perr == nil && len(frames) == 1 {
		begin, _ = frames[0].(*wire.EpochBegin)
	}
	if begin == nil {
		h.log.Warn("journal header unreadable; discarding it", "err", perr)
		return h.removeJournal(nonce, 0)
	}
	facts.HasBegin, facts.Epoch = true, begin.Epoch
	var st *replica.Stage
	chunks := 0
	var stageErr error
	if begin.Epoch == h.man.Epoch+1 {
		if st, stageErr = replica.NewStage(h.man, begin, h.s.MaxTargetSize); stageErr == nil {
			chunks, stageErr = h.scanChunks(st, nonce)
		}
		if stageErr != nil && !errors.Is(stageErr, replica.ErrStorage) {
			// Only validated frames are ever written, so this is damage:
			// an uncommitted epoch is simply sent again.
			h.log.Warn("journal failed validation; discarding it", "err", stageErr)
			if _, err := h.s.Pool.ReadObject(h.obj("commit")); err == nil {
				return fmt.Errorf("committed journal of epoch %d is damaged: %v: %w", begin.Epoch, stageErr, replica.ErrCorrupt)
			}
			return h.removeJournal(nonce, chunks+1)
		}
		if stageErr != nil {
			return stageErr
		}
		cb, err := h.s.Pool.ReadObject(h.obj("commit"))
		switch {
		case notExist(err):
		case err != nil:
			return storageErr("read commit record", err)
		default:
			cn, extra, frames, err := parse(cb, magicCommit, 1)
			if err == nil && cn == nonce && len(frames) == 1 && extra[0] == uint64(chunks) {
				if c, ok := frames[0].(*wire.EpochCommit); ok {
					if err := st.CheckCommit(c, nil); err != nil {
						return fmt.Errorf("commit record of epoch %d: %v: %w", begin.Epoch, err, replica.ErrCorrupt)
					}
					st.SetCommit(c)
					facts.HasCommit = true
				}
			}
		}
	}
	action := recovery.Decide(h.man.Epoch, facts)
	h.log.Info("journal recovery", "action", action.String(), "journal_epoch", facts.Epoch, "committed", h.man.Epoch)
	switch action {
	case recovery.Discard:
		return h.removeJournal(nonce, chunks)
	case recovery.Corrupt:
		return fmt.Errorf("journal holds epoch %d but the replica is at epoch %d: %w", facts.Epoch, h.man.Epoch, replica.ErrCorrupt)
	case recovery.Replay:
		h.st, h.nonce, h.chunks = st, nonce, chunks
		h.note(fmt.Sprintf("applying epoch %d (an apply a crash interrupted)", begin.Epoch))
		tables, err := h.newTables(st)
		if err != nil {
			return err
		}
		// h.tables were checked against the manifest as they were read,
		// so a table the epoch shares keeps its digest here too.
		return h.apply(tables, st.Digests(tables, h.tables))
	case recovery.Resume:
		h.st, h.nonce, h.chunks, h.synced = st, nonce, chunks, st.Len()
	}
	return nil
}

// scanChunks stages the items of the journal's chunks in order and returns
// how many chunks there are.
func (h *handle) scanChunks(st *replica.Stage, nonce uint64) (int, error) {
	for n := 0; ; n++ {
		b, err := h.s.Pool.ReadObject(h.chunkName(nonce, n))
		if notExist(err) {
			return n, nil
		}
		if err != nil {
			return n, storageErr("read journal chunk", err)
		}
		cn, _, frames, err := parse(b, magicChunk, 0)
		if err != nil {
			return n, err
		}
		if cn != nonce {
			return n, fmt.Errorf("chunk %d belongs to another staging: %w", n, errJournal)
		}
		for i, f := range frames {
			it, ok := f.(wire.Item)
			if !ok {
				return n, fmt.Errorf("%s in a journal chunk: %w", f.Type(), errJournal)
			}
			if err := st.Item(it, loc(n, i)); err != nil {
				return n, err
			}
		}
	}
}

// removeJournal deletes the journal: the commit record first, so that no
// later state can pass for committed, then the header, then the chunks
// (an interrupted removal leaves chunks no header names: garbage, not a
// journal).
func (h *handle) removeJournal(nonce uint64, chunks int) error {
	for _, o := range []string{h.obj("commit"), h.obj("journal")} {
		if err := h.s.Pool.RemoveObject(o); err != nil && !notExist(err) {
			return storageErr("remove journal", err)
		}
	}
	for n := range chunks {
		if err := h.s.Pool.RemoveObject(h.chunkName(nonce, n)); err != nil && !notExist(err) {
			h.log.Warn("remove journal chunk", "err", err)
		}
	}
	h.chunkC = nil
	return nil
}

func (h *handle) Manifest() *replica.Manifest { return h.man }

func (h *handle) Position() wire.Position {
	p := wire.Position{Committed: h.man.Epoch, CommittedCut: h.man.Cut, StateID: h.man.StateID}
	if h.st != nil && h.st.Commit() == nil {
		b := h.st.Begin()
		p.StagedEpoch, p.StagedPlan, p.StagedDurable = b.Epoch, h.st.StagedPlan(h.synced), uint64(h.synced)
	}
	return p
}

func (h *handle) Table(kind vmspec.TargetKind, name string) *blockhash.Table {
	return h.tables[replica.Key(kind, name)]
}

func (h *handle) usable() error {
	if h.broken != nil {
		return replica.ErrBroken
	}
	if h.relsd {
		return errReleased
	}
	return nil
}

// Begin opens an epoch, or resumes the staged one if b.StartSeq > 0.
func (h *handle) Begin(b *wire.EpochBegin) error {
	if err := h.usable(); err != nil {
		return err
	}
	if b.StartSeq > 0 {
		if h.st == nil || h.st.Commit() != nil {
			return fmt.Errorf("EpochBegin: resume of epoch %d at item %d, nothing is staged: %w", b.Epoch, b.StartSeq, replica.ErrProtocol)
		}
		if b.StartSeq != uint64(h.synced) || h.synced != h.st.Len() {
			return fmt.Errorf("EpochBegin: resume at item %d, %d items are durable: %w", b.StartSeq, h.synced, replica.ErrProtocol)
		}
		return h.st.Resume(b)
	}
	st, err := replica.NewStage(h.man, b, h.s.MaxTargetSize)
	if err != nil {
		return err
	}
	oldNonce, oldChunks := h.nonce, h.chunks
	hadOld := h.st != nil
	h.st, h.pending, h.pendN = nil, nil, 0
	nonce := rand.Uint64()
	hb, err := encode(objPrefix(magicHeader, nonce), b)
	if err != nil {
		return err
	}
	// Replacing the header is what discards a staging left before.
	if err := h.s.Pool.WriteObject(h.obj("journal"), hb); err != nil {
		return h.fail(storageErr(fmt.Sprintf("epoch %d: write journal header", b.Epoch), err))
	}
	if hadOld {
		for n := range oldChunks {
			h.s.Pool.RemoveObject(h.chunkName(oldNonce, n))
		}
	}
	h.st, h.nonce, h.chunks, h.synced, h.chunkC = st, nonce, 0, 0, nil
	h.note(fmt.Sprintf("receiving epoch %d from its sender", b.Epoch))
	return nil
}

// Append stages the next item; it is durable after Sync.
func (h *handle) Append(it wire.Item) error {
	if err := h.usable(); err != nil {
		return err
	}
	if h.st == nil || h.st.Commit() != nil {
		return fmt.Errorf("%s outside an epoch: %w", it.Type(), replica.ErrProtocol)
	}
	if err := h.st.Item(it, loc(h.chunks, h.pendN)); err != nil {
		return err
	}
	if h.pending == nil {
		h.encBuf = bytes.NewBuffer(objPrefix(magicChunk, h.nonce))
		h.enc = wire.NewEncoder(h.encBuf, wire.EncoderOptions{})
	}
	if err := h.enc.Encode(it); err != nil {
		return h.fail(storageErr("encode item", err))
	}
	h.pending, h.pendN = h.encBuf.Bytes(), h.pendN+1
	if len(h.pending) >= chunkSize {
		return h.flushChunk()
	}
	return nil
}

// flushChunk writes the pending chunk as the next chunk object.
func (h *handle) flushChunk() error {
	if h.pending == nil {
		return nil
	}
	if err := h.s.Pool.WriteObject(h.chunkName(h.nonce, h.chunks), h.pending); err != nil {
		return h.fail(storageErr(fmt.Sprintf("epoch %d: write journal chunk %d", h.st.Begin().Epoch, h.chunks), err))
	}
	h.chunks++
	h.pending, h.pendN = nil, 0
	return nil
}

// Sync makes every appended item durable and returns how many are.
func (h *handle) Sync() (uint64, error) {
	if h.broken != nil {
		return 0, replica.ErrBroken
	}
	if h.relsd || h.st == nil {
		return uint64(h.synced), nil
	}
	if err := h.flushChunk(); err != nil {
		return uint64(h.synced), err
	}
	h.synced = h.st.Len()
	return uint64(h.synced), nil
}

// chunk returns the frames of chunk n, keeping the last few read.
func (h *handle) chunk(n int) ([]wire.Frame, error) {
	if frames, ok := h.chunkC[n]; ok {
		return frames, nil
	}
	b, err := h.s.Pool.ReadObject(h.chunkName(h.nonce, n))
	if err != nil {
		return nil, storageErr(fmt.Sprintf("read journal chunk %d", n), err)
	}
	_, _, frames, err := parse(b, magicChunk, 0)
	if err != nil {
		return nil, fmt.Errorf("journal chunk %d: %w (%w)", n, err, replica.ErrCorrupt)
	}
	// Only a few chunks are kept: an epoch may be far larger than memory.
	if h.chunkC == nil || len(h.chunkC) >= 4 {
		h.chunkC = map[int][]wire.Frame{}
	}
	h.chunkC[n] = frames
	return frames, nil
}

// readItem returns the item at l in the journal.
func (h *handle) readItem(l int64) (wire.Item, error) {
	n, i := splitLoc(l)
	frames, err := h.chunk(n)
	if err != nil {
		return nil, err
	}
	if i >= len(frames) {
		return nil, fmt.Errorf("journal chunk %d has no item %d: %w", n, i, replica.ErrCorrupt)
	}
	it, ok := frames[i].(wire.Item)
	if !ok {
		return nil, fmt.Errorf("journal chunk %d: %s: %w", n, frames[i].Type(), replica.ErrCorrupt)
	}
	return it, nil
}

// newTables computes the epoch's block tables: the committed image bytes
// under the staged items are what page references read.
func (h *handle) newTables(st *replica.Stage) (map[uint16]*blockhash.Table, error) {
	targets := st.Targets()
	return st.Tables(h.tables, func(target uint16, off int64, n int) ([]byte, error) {
		t := targets[target]
		out := make([]byte, n)
		if t.Base != nil && off < t.Base.Size {
			im, err := h.s.Pool.OpenImage(h.obj(t.Base.File), "")
			if err != nil {
				return nil, storageErr("open image "+t.Base.File, err)
			}
			m := min(int64(n), t.Base.Size-off)
			_, err = im.ReadAt(out[:m], off)
			im.Close()
			if err != nil {
				return nil, storageErr("read image "+t.Base.File, err)
			}
		}
		if err := st.Overlay(target, off, out, h.readItem); err != nil {
			return nil, err
		}
		return out, nil
	})
}

// Commit checks c against the staged epoch and the states it produces,
// makes the commit record durable and applies the epoch.
func (h *handle) Commit(c *wire.EpochCommit) error {
	if err := h.usable(); err != nil {
		return err
	}
	if h.st == nil {
		return fmt.Errorf("EpochCommit outside an epoch: %w", replica.ErrProtocol)
	}
	st := h.st
	h.note(fmt.Sprintf("committing and applying epoch %d", c.Epoch))
	if _, err := h.Sync(); err != nil {
		return err
	}
	tables, err := h.newTables(st)
	var digests map[uint16]uint64
	if err == nil {
		digests = st.Digests(tables, h.tables)
		err = st.CheckCommit(c, digests)
	}
	if err != nil {
		if errors.Is(err, replica.ErrDigest) {
			h.st = nil
			if err := h.removeJournal(h.nonce, h.chunks); err != nil {
				h.broken = err
			}
		}
		return h.fail(err)
	}
	cb, err := encode(objPrefix(magicCommit, h.nonce, uint64(h.chunks)), c)
	if err != nil {
		return err
	}
	if err := h.s.Pool.WriteObject(h.obj("commit"), cb); err != nil {
		return h.fail(storageErr(fmt.Sprintf("epoch %d commit", c.Epoch), err))
	}
	st.SetCommit(c)
	return h.fail(h.apply(tables, digests))
}

// apply writes the committed staged epoch into the images, snapshots them
// if points are kept, writes the tables and device state, replaces the
// manifest and removes the journal. It is idempotent: a crash anywhere
// inside it is repaired by running it again. digests are the tables'
// (Stage.Digests).
func (h *handle) apply(tables map[uint16]*blockhash.Table, digests map[uint16]uint64) error {
	st := h.st
	epoch := st.Begin().Epoch
	wrap := func(what string, err error) error {
		return fmt.Errorf("apply epoch %d: %s: %w (%w)", epoch, what, err, replica.ErrStorage)
	}
	for _, sd := range st.Commit().States {
		if digests[sd.Target] != sd.Digest {
			return fmt.Errorf("apply epoch %d: journal yields another state for target %d than was committed: %w", epoch, sd.Target, replica.ErrCorrupt)
		}
	}
	targets := st.Targets()
	files := h.fileNames(targets)
	devSeen, devTotal, devHash := st.DeviceState()
	devFile := fmt.Sprintf("devstate-%d.bin", epoch)
	if devSeen {
		var blob []byte
		for _, l := range st.DeviceStateItems() {
			it, err := h.readItem(l)
			if err != nil {
				return err
			}
			blob = append(blob, wire.DataOf(it)...)
		}
		if uint64(len(blob)) != devTotal || xxh(blob) != devHash {
			return fmt.Errorf("apply epoch %d: device state in the journal differs from what was received: %w", epoch, replica.ErrCorrupt)
		}
		if err := h.s.Pool.WriteObject(h.obj(devFile), blob); err != nil {
			return wrap("write device state", err)
		}
	}
	images := map[uint16]rbd.Image{}
	defer func() {
		for _, im := range images {
			im.Close()
		}
	}()
	for id, t := range targets {
		name := h.obj(files[id])
		if t.Base == nil {
			if err := h.s.Pool.CreateImage(name, t.Size); err != nil && !errors.Is(err, fs.ErrExist) {
				return wrap("create image "+files[id], err)
			}
		}
		im, err := h.s.Pool.OpenImage(name, "")
		if err != nil {
			return wrap("open image "+files[id], err)
		}
		images[id] = im
		size, err := im.Size()
		if err != nil {
			return wrap("size of image "+files[id], err)
		}
		if size < t.Size {
			if err := im.Resize(t.Size); err != nil {
				return wrap("grow image "+files[id], err)
			}
		}
	}
	hot := hotMarks{}
	// Data and zeros in journal order, then references, which never read
	// what references write.
	for n := 0; n < h.chunks; n++ {
		frames, err := h.chunk(n)
		if err != nil {
			return err
		}
		for _, fr := range frames {
			switch f := fr.(type) {
			case *wire.DiskExtent:
				_, err = images[f.Target].WriteAt(f.Data, int64(f.Offset))
			case *wire.MemRun:
				_, err = images[f.Target].WriteAt(f.Data, int64(f.Page)*vmspec.PageSize)
				hot.mark(targets[f.Target].Name, targets[f.Target].Size, f.Page*vmspec.PageSize, len(f.Data))
			case *wire.ZeroRun:
				err = images[f.Target].WriteZeroes(f.Offset, f.Length)
			}
			if err != nil {
				return wrap("write image", err)
			}
		}
	}
	if err := st.Refs(func(target uint16, off int64, src []byte) error {
		if t := targets[target]; t.Kind == vmspec.KindRAM {
			hot.mark(t.Name, t.Size, uint64(off), len(src))
		}
		_, err := images[target].WriteAt(src, off)
		return err
	}, func(target uint16, off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := images[target].ReadAt(b, off)
		return b, err
	}); err != nil {
		return wrap("apply page references", err)
	}
	for id, im := range images {
		if err := im.Flush(); err != nil {
			return wrap("flush image "+files[id], err)
		}
	}
	// A consistency group's member snapshots its group cuts whatever
	// KeepPoints says: another member may commit this cut only after this
	// replica has moved on, and the group point needs this epoch then.
	// An opener that cannot read the receiver's rule snapshots too; the
	// receiver's next prune removes what its rule does not keep.
	rule, known := h.keepRule()
	keep := rule > 0 || !known || st.Begin().Group != nil
	if keep {
		for id, im := range images {
			if err := snapOnce(im, snapName(epoch)); err != nil {
				return wrap("snapshot image "+files[id], err)
			}
		}
	}
	next := &replica.Manifest{Format: replica.ManifestFormat, VM: h.vm, Epoch: epoch, Cut: st.Begin().Cut, Applied: h.now().UTC()}
	if known {
		next.KeepPoints = &rule
	}
	if g := st.Begin().Group; g != nil {
		next.Group = &replica.GroupTag{GroupCut: *g}
	}
	ids := make([]int, 0, len(targets))
	for id := range targets {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	newTables, newPatched := map[string]*blockhash.Table{}, map[string][]int64{}
	prev := map[string]tableRef{}
	for _, e := range h.man.Targets {
		prev[replica.Key(e.TargetKind(), e.Name)] = refOf(e, h.man.Epoch)
	}
	for _, id := range ids {
		t := targets[uint16(id)]
		tab := tables[uint16(id)]
		k := replica.Key(t.Kind, t.Name)
		e := replica.TargetEntry{
			Kind: kindName(t.Kind), Name: t.Name, Size: int64(t.Size), BlockSize: int(t.BlockSize),
			File: files[uint16(id)], Table: files[uint16(id)] + ".bht", Digest: digests[uint16(id)],
		}
		var p *tableRef
		if r, ok := prev[k]; ok {
			p = &r
		}
		w := nextTable(p, h.tables[k], h.patched[k], tab, epoch)
		switch {
		case w.whole:
			if err := h.s.Pool.WriteObject(h.obj(tableName(e.Table, w.ref.Base)), tab.Marshal()); err != nil {
				return wrap("write block table "+e.Table, err)
			}
		case w.write:
			if err := h.s.Pool.WriteObject(h.obj(patchName(e.Table, w.ref.Patch)), blockhash.PatchOf(tab, w.patched).Marshal()); err != nil {
				return wrap("write block table patch "+e.Table, err)
			}
		}
		e.TableBase, e.TablePatch = w.ref.Base, w.ref.Patch
		next.Targets = append(next.Targets, e)
		newTables[k], newPatched[k] = tab, w.patched
	}
	if devSeen {
		next.DeviceState = &replica.DeviceStateInfo{File: devFile, Size: int64(devTotal), Hash: devHash}
	} else if h.man.DeviceState != nil {
		next.DeviceState = h.man.DeviceState
	}
	next.StateID = next.ComputeStateID()
	mb, err := next.Marshal()
	if err != nil {
		return err
	}
	if keep {
		if err := h.s.Pool.WriteObject(h.obj(pointName(epoch)), mb); err != nil {
			return wrap("write recovery point manifest", err)
		}
	}
	// Before the manifest, as every write of the apply: one that fails
	// fails the epoch, and the replay writes it again.
	if err := h.recordHot(epoch, hot); err != nil {
		return wrap("write the hot set", err)
	}
	// The manifest's replacement is the apply's single atomic step.
	if err := h.s.Pool.WriteObject(h.obj("manifest"), mb); err != nil {
		return wrap("write manifest", err)
	}
	old := h.man
	h.man, h.tables, h.patched = next, newTables, newPatched
	h.st = nil
	if err := h.removeJournal(h.nonce, h.chunks); err != nil {
		return err
	}
	h.chunks, h.synced = 0, 0
	// The table objects the new manifest no longer names. A crash before
	// this leaves them behind, never read.
	live := map[string]bool{}
	for _, t := range next.Targets {
		for _, o := range refOf(t, next.Epoch).objects(t.Table) {
			live[o] = true
		}
	}
	for _, t := range old.Targets {
		for _, o := range refOf(t, old.Epoch).objects(t.Table) {
			if !live[o] {
				h.s.Pool.RemoveObject(h.obj(o))
			}
		}
	}
	if known {
		h.prune(old, rule)
	}
	h.note(fmt.Sprintf("using it (committed epoch %d)", epoch))
	h.log.Info("epoch applied", "epoch", epoch, "items", st.Len(), "bytes", st.Bytes())
	return nil
}

func (h *handle) now() time.Time {
	if h.s.Now != nil {
		return h.s.Now()
	}
	return time.Now()
}

func kindName(k vmspec.TargetKind) string {
	if k == vmspec.KindRAM {
		return "ram"
	}
	return "disk"
}

func xxh(b []byte) uint64 { return xxhash.Sum64(b) }

// snapOnce creates a snapshot unless a replayed apply already did: a
// snapshot is only taken after every write of its epoch was flushed.
func snapOnce(im rbd.Image, name string) error {
	err := im.CreateSnap(name)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// fileNames names the image of each staged target: its committed name,
// or kind-N with the lowest N no other target uses, deterministically so
// a replayed apply picks the same.
func (h *handle) fileNames(targets map[uint16]replica.StagedTarget) map[uint16]string {
	used := map[string]bool{}
	for _, e := range h.man.Targets {
		used[e.File] = true
	}
	out := map[uint16]string{}
	var fresh []int
	for id, t := range targets {
		if t.Base != nil {
			out[id] = t.Base.File
		} else {
			fresh = append(fresh, int(id))
		}
	}
	sort.Ints(fresh)
	for _, id := range fresh {
		k := kindName(targets[uint16(id)].Kind)
		for n := 0; ; n++ {
			name := fmt.Sprintf("%s-%d", k, n)
			if !used[name] {
				used[name] = true
				out[uint16(id)] = name
				break
			}
		}
	}
	return out
}

// keepRule is the retention rule in force: the store's KeepPoints, or the
// rule the committed manifest records for a store that inherits it
// (replica.KeepInherited; known is false if the manifest records none).
func (h *handle) keepRule() (keep int, known bool) {
	if h.s.KeepPoints >= 0 {
		return h.s.KeepPoints, true
	}
	return replica.InheritedKeep(h.man)
}

// prune removes the recovery points beyond keep, and the device
// state of the epoch before if no kept point needs it. A point leaves
// Points (its manifest object) before its device state and snapshots go,
// so a crash midway never lists a point that cannot be restored; a
// device state is only removed when every kept point could be read.
// Failures are logged: what is left behind costs space, never a point.
func (h *handle) prune(old *replica.Manifest, keep int) {
	cur := h.man
	var keepFrom uint64
	if uint64(keep) < cur.Epoch {
		keepFrom = cur.Epoch - uint64(keep)
	}
	eps, err := h.s.snapEpochsAny(h.vm, cur)
	if err != nil {
		h.log.Warn("list recovery points", "err", err)
		return
	}
	// The points from the oldest epoch a consistency group's complete
	// point needs are kept too; a store that cannot tell prunes nothing.
	own := func(e uint64) bool { return e == cur.Epoch || (keep > 0 && e >= keepFrom) }
	var groupFrom uint64
	if slices.ContainsFunc(eps, func(e uint64) bool { return !own(e) }) {
		if groupFrom, err = replica.GroupKeepFrom(h.s, h.vm, keep); err != nil {
			h.log.Warn("recovery points kept: cannot tell which a consistency group needs", "err", err)
			return
		}
	}
	kept := func(e uint64) bool { return own(e) || (groupFrom > 0 && e >= groupFrom) }
	devKept := map[string]bool{}
	for _, m := range []*replica.Manifest{cur, old} {
		if m.DeviceState != nil && kept(m.Epoch) {
			devKept[m.DeviceState.File] = true
		}
	}
	sure := true
	for _, e := range eps {
		if !kept(e) || e == cur.Epoch {
			continue
		}
		m, err := h.s.pointManifest(h.vm, e)
		switch {
		case err == nil && m.DeviceState != nil:
			devKept[m.DeviceState.File] = true
		case err != nil && !notExist(err):
			sure = false
		}
	}
	dropDev := func(d *replica.DeviceStateInfo) {
		if d != nil && sure && !devKept[d.File] {
			if err := h.s.Pool.RemoveObject(h.obj(d.File)); err != nil && !notExist(err) {
				h.log.Warn("remove device state", "file", d.File, "err", err)
			}
		}
	}
	for _, e := range eps {
		if kept(e) {
			continue
		}
		m, err := h.s.pointManifest(h.vm, e)
		if err := h.s.Pool.RemoveObject(h.obj(pointName(e))); err != nil && !notExist(err) {
			h.log.Warn("remove recovery point", "epoch", e, "err", err)
			continue
		}
		if err == nil {
			dropDev(m.DeviceState)
		}
		for _, t := range cur.Targets {
			im, err := h.s.Pool.OpenImage(h.obj(t.File), "")
			if err != nil {
				continue
			}
			if err := im.RemoveSnap(snapName(e)); err != nil && !notExist(err) {
				h.log.Warn("remove recovery point", "epoch", e, "image", t.File, "err", err)
			}
			im.Close()
		}
	}
	dropDev(old.DeviceState)
}

// snapEpochsAny lists the epochs any image of m has a snapshot of.
func (s *Store) snapEpochsAny(vm string, m *replica.Manifest) ([]uint64, error) {
	seen := map[uint64]bool{}
	for _, t := range m.Targets {
		im, err := s.Pool.OpenImage(s.name(vm, t.File), "")
		if err != nil {
			return nil, err
		}
		snaps, err := im.Snaps()
		im.Close()
		if err != nil {
			return nil, err
		}
		for _, sn := range snaps {
			if e, ok := parseSnap(sn.Name); ok {
				seen[e] = true
			}
		}
	}
	var out []uint64
	for e := range seen {
		out = append(out, e)
	}
	sortU64(out)
	return out, nil
}

// Release lets go of the lock, keeping what is staged (made durable).
func (h *handle) Release() error {
	if h.relsd {
		return nil
	}
	if h.broken != nil {
		return replica.ErrBroken
	}
	if _, err := h.Sync(); err != nil {
		return err
	}
	if err := h.lock.Release(); err != nil {
		return h.fail(storageErr("release the lock", err))
	}
	h.relsd = true
	return nil
}

func (h *handle) Released() bool { return h.relsd }

// Reacquire takes the replica back after Release (see replica.Handle).
func (h *handle) Reacquire(ctx context.Context, wait time.Duration) error {
	if !h.relsd {
		return nil
	}
	if h.broken != nil {
		return replica.ErrBroken
	}
	if err := h.s.acquire(ctx, h.vm, h.lock, wait); err != nil {
		return err
	}
	fail := func(err error) error {
		h.lock.Release()
		h.broken = err
		return err
	}
	if !h.o.AllowTakenOver {
		mark, err := h.s.TakenOver(h.vm)
		if err != nil {
			return fail(err)
		}
		if mark != nil {
			return fail(takenOverError(h.vm, mark))
		}
	}
	changed := func(what string) error {
		return fail(fmt.Errorf("the replica of %s changed while it was released (%s): %w", h.vm, what, replica.ErrBroken))
	}
	m, err := h.s.Manifest(h.vm)
	switch {
	case notExist(err):
		if h.man.Epoch != 0 {
			return changed("manifest gone")
		}
	case err != nil:
		return fail(storageErr("read manifest", err))
	case m.Epoch != h.man.Epoch || m.StateID != h.man.StateID:
		return changed(fmt.Sprintf("now at epoch %d, was %d", m.Epoch, h.man.Epoch))
	}
	if h.st == nil {
		// Released between epochs: a journal now is another writer's
		// staged or committed epoch, which Begin would overwrite.
		if _, err := h.s.Pool.ReadObject(h.obj("journal")); !notExist(err) {
			return changed("journal")
		}
	} else {
		hb, err := h.s.Pool.ReadObject(h.obj("journal"))
		if err != nil {
			return changed("journal")
		}
		if nonce, _, _, err := parse(hb, magicHeader, 0); err != nil || nonce != h.nonce {
			return changed("journal")
		}
	}
	h.relsd = false
	h.note("taking it back")
	return nil
}

// MarkTakenOver durably fences the replica.
func (h *handle) MarkTakenOver(m replica.TakeoverMark) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := h.s.Pool.WriteObject(h.obj("takenover"), append(b, '\n')); err != nil {
		return storageErr("mark taken over", err)
	}
	return nil
}

// Close releases the replica; a staged epoch stays staged.
func (h *handle) Close() error {
	if h.lock == nil {
		return nil
	}
	if !h.relsd && h.broken == nil {
		h.Sync()
	}
	err := h.lock.Close()
	h.lock = nil
	return err
}

var _ replica.Handle = (*handle)(nil)
