package replica

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strconv"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/journal"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Recovery points. With Options.KeepPoints > 0, or for a consistency
// group's member whose group may need E (keepsPoint), applying epoch E+1
// first saves what it overwrites of epoch E, so the replica can be rolled back
// to E (after corruption was replicated, say):
//
//	points/<E>/MANIFEST       epoch E's manifest
//	points/<E>/devstate-E.bin epoch E's device state, if any
//	points/<E>/UNDO           journal-format file: for each range epoch E+1
//	                          writes, its content at E, as DiskExtent frames
//	                          (ZeroRun where it read as zeros); Target is
//	                          the index of the target in points/<E>/MANIFEST
//	points/<E>/COMPLETE       written last: the point is whole
//
// The undo data is durable (COMPLETE written and synced) before the first
// image write of E+1, so a crash anywhere leaves either no point or a
// whole one, and an interrupted apply recaptures nothing: it finds COMPLETE.
// Rolling back to E applies the undo files of the newest point down to E,
// on a copy: the replica itself always stays at its newest epoch.

const pointsDir = "points"

// KeepInherited, as a store's KeepPoints, is for an opener that is not the
// replica's receiver (a takeover, status, verify): whatever apply it
// finishes keeps and prunes recovery points by the rule the receiver
// recorded in the committed manifest, never by a keep of its own.
const KeepInherited = -1

// InheritedKeep is the retention rule m records (see KeepInherited); known
// is false for a manifest that records none (written by an older
// version), whose opener keeps every point and prunes none.
func InheritedKeep(m *Manifest) (keep int, known bool) {
	if m == nil || m.KeepPoints == nil {
		return 0, false
	}
	return max(*m.KeepPoints, 0), true
}

func pointDir(e uint64) string { return path.Join(pointsDir, strconv.FormatUint(e, 10)) }

// undoChunk bounds one undo record.
const undoChunk = 1 << 20

// capturePoint saves what st overwrites of the committed epoch.
func (r *Replica) capturePoint(st *stage, images map[uint16]vfs.File) error {
	prev := r.man
	if prev == nil || prev.Epoch == 0 || !r.keepsPoint(prev) {
		return nil
	}
	dir := r.p(pointDir(prev.Epoch))
	if _, err := r.o.FS.Stat(path.Join(dir, "COMPLETE")); err == nil {
		return nil // captured before a crash interrupted this apply
	}
	wrap := func(what string, err error) error {
		return fmt.Errorf("keep recovery point %d: %s: %w (%w)", prev.Epoch, what, err, ErrStorage)
	}
	if err := r.o.FS.RemoveAll(dir); err != nil {
		return wrap("clear", err)
	}
	if err := vfs.MkdirAllDurable(r.o.FS, dir, dirPerm); err != nil {
		return wrap("create", err)
	}
	index := map[string]int{}
	for i, t := range prev.Targets {
		index[t.Kind+"/"+t.Name] = i
	}
	w, err := journal.Create(r.o.FS, path.Join(dir, "UNDO"), r.o.VM)
	if err != nil {
		return wrap("undo file", err)
	}
	defer w.Close()
	buf := make([]byte, undoChunk)
	seq := uint64(0)
	for _, it := range st.items {
		t := st.targets[it.Target]
		if t.base == nil || it.Type == wire.TypeDeviceState {
			continue // new in this epoch: nothing to keep
		}
		ti := index[kindName(t.Kind)+"/"+t.Name]
		off, n := itemOffset(it), int64(it.Length)
		if it.Type == wire.TypePageRef {
			n *= vmspec.PageSize
		}
		end := min(off+n, t.base.Size)
		for pos := off; pos < end; pos += undoChunk {
			b := buf[:min(undoChunk, end-pos)]
			if _, err := images[it.Target].ReadAt(b, pos); err != nil && err != io.EOF {
				return wrap("read "+t.base.File, err)
			}
			var f wire.Frame
			if blockhash.IsZero(b) {
				f = &wire.ZeroRun{Seq: seq, Target: uint16(ti), Offset: uint64(pos), Length: uint64(len(b))}
			} else {
				f = &wire.DiskExtent{Seq: seq, Target: uint16(ti), Offset: uint64(pos), Data: bytes.Clone(b)}
			}
			if err := w.Append(f); err != nil {
				return wrap("write undo", err)
			}
			seq++
		}
	}
	if err := w.Sync(); err != nil {
		return wrap("sync undo", err)
	}
	if prev.DeviceState != nil {
		if err := copyFile(r.o.FS, r.p(prev.DeviceState.File), path.Join(dir, prev.DeviceState.File)); err != nil {
			return wrap("device state", err)
		}
	}
	b, err := prev.Marshal()
	if err == nil {
		err = writeFileSync(r.o.FS, path.Join(dir, manifestName), b)
	}
	if err == nil {
		err = writeFileSync(r.o.FS, path.Join(dir, "COMPLETE"), []byte("ok\n"))
	}
	if err == nil {
		err = r.o.FS.SyncDir(dir)
	}
	if err != nil {
		return wrap("finish", err)
	}
	return nil
}

// keepsPoint says whether applying the epoch after prev saves prev as a
// recovery point: always with KeepPoints > 0; with none, still for a
// consistency group's member whose group may need prev, or an epoch
// before it, later (a member can commit the next cut before another
// member commits this one). prunePoints then keeps only what the group
// needs.
func (r *Replica) keepsPoint(prev *Manifest) bool {
	keep, known := r.keepRule()
	if keep > 0 {
		return true
	}
	if known && r.o.GroupKeepFrom == nil {
		return false
	}
	if prev.Tag() != nil {
		return true
	}
	// A point kept for the group, or by a rule this opener cannot read,
	// is chained to.
	pts, err := points(r.o.FS, r.o.Dir)
	return err != nil || len(pts) > 0
}

// keepRule is the retention rule in force: the store's own, or for an
// opener that inherits it (KeepInherited), the one the committed manifest
// records. known is false when neither says: such an opener then keeps
// every point there is and prunes none.
func (r *Replica) keepRule() (keep int, known bool) {
	if r.o.KeepPoints >= 0 {
		return r.o.KeepPoints, true
	}
	return InheritedKeep(r.man)
}

// prunePoints removes points beyond keep, oldest first, and points
// that the chain no longer reaches; but not the points from the epoch
// GroupKeepFrom names on, which a consistency group's complete group
// point needs (rolling back to it passes through every later point).
func (r *Replica) prunePoints(keep int) {
	pts, err := points(r.o.FS, r.o.Dir)
	if err != nil {
		r.log.Warn("list recovery points", "err", err)
		return
	}
	keepFrom := uint64(0)
	if r.o.GroupKeepFrom != nil && len(pts) > keep {
		if keepFrom, err = r.o.GroupKeepFrom(keep); err != nil {
			r.log.Warn("recovery points kept: cannot tell which a consistency group needs", "err", err)
			return
		}
	}
	for len(pts) > keep && (keepFrom == 0 || pts[0] < keepFrom) {
		if err := r.o.FS.RemoveAll(r.p(pointDir(pts[0]))); err != nil {
			r.log.Warn("remove recovery point", "epoch", pts[0], "err", err)
			return
		}
		pts = pts[1:]
	}
}

// points lists the epochs of the whole points in dir, oldest first.
func points(fsys vfs.FS, dir string) ([]uint64, error) {
	names, err := fsys.List(path.Join(dir, pointsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, n := range names {
		e, err := strconv.ParseUint(n, 10, 64)
		if err != nil {
			continue
		}
		if _, err := fsys.Stat(path.Join(dir, pointDir(e), "COMPLETE")); err == nil {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Point is a retained recovery point.
type Point struct {
	Manifest *Manifest
}

// Points returns the replica's recovery points that can be restored, oldest
// first: its committed epoch last, and before it every retained epoch
// whose undo chain up to the committed epoch is whole.
func Points(fsys vfs.FS, dir string) ([]Point, error) {
	b, err := readFile(fsys, path.Join(dir, manifestName))
	if err != nil {
		return nil, err
	}
	cur, err := ParseManifest(b)
	if err != nil {
		return nil, err
	}
	eps, err := points(fsys, dir)
	if err != nil {
		return nil, err
	}
	out := []Point{{Manifest: cur}}
	// Walk down from the committed epoch while the chain is unbroken.
	want := cur.Epoch - 1
	for i := len(eps) - 1; i >= 0 && cur.Epoch > 0; i-- {
		if eps[i] != want {
			break
		}
		b, err := readFile(fsys, path.Join(dir, pointDir(eps[i]), manifestName))
		if err != nil {
			break
		}
		m, err := ParseManifest(b)
		if err != nil || m.Epoch != eps[i] {
			break
		}
		out = append([]Point{{Manifest: m}}, out...)
		want--
	}
	return out, nil
}

// Materialize writes into the empty directory to a replica holding epoch
// of the replica in dir: images, block tables, device state and manifest,
// so that it can be verified and run. The source replica must not change
// meanwhile (hold its lock).
func Materialize(fsys vfs.FS, dir string, epoch uint64, to string) (*Manifest, error) {
	pts, err := Points(fsys, dir)
	if err != nil {
		return nil, err
	}
	var want *Manifest
	for _, p := range pts {
		if p.Manifest.Epoch == epoch {
			want = p.Manifest
		}
	}
	if want == nil {
		var have []uint64
		for _, p := range pts {
			have = append(have, p.Manifest.Epoch)
		}
		return nil, fmt.Errorf("replica %s keeps no recovery point for epoch %d (it has %v)", dir, epoch, have)
	}
	cur := pts[len(pts)-1].Manifest
	if err := vfs.MkdirAllDurable(fsys, to, dirPerm); err != nil {
		return nil, err
	}
	// Start from the committed images, cut to epoch's sizes.
	for _, t := range want.Targets {
		src := cur.Find(kindOf(t.Kind), t.Name)
		if src == nil {
			return nil, fmt.Errorf("materialize epoch %d: %s %s is gone from the replica: %w", epoch, t.Kind, t.Name, ErrCorrupt)
		}
		if err := copyFile(fsys, path.Join(dir, src.File), path.Join(to, t.File)); err != nil {
			return nil, fmt.Errorf("materialize epoch %d: %w", epoch, err)
		}
		f, err := fsys.OpenReadWrite(path.Join(to, t.File))
		if err != nil {
			return nil, err
		}
		err = f.Truncate(t.Size)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	// Undo, newest point first, down to epoch.
	for e := cur.Epoch - 1; e >= epoch && e < cur.Epoch; e-- {
		b, err := readFile(fsys, path.Join(dir, pointDir(e), manifestName))
		if err != nil {
			return nil, err
		}
		pm, err := ParseManifest(b)
		if err != nil {
			return nil, err
		}
		files := map[uint16]vfs.File{}
		_, tail, err := journal.Scan(fsys, path.Join(dir, pointDir(e), "UNDO"), want.VM, func(_ int64, fr wire.Frame) error {
			var target uint16
			switch f := fr.(type) {
			case *wire.DiskExtent:
				target = f.Target
			case *wire.ZeroRun:
				target = f.Target
			default:
				return nil
			}
			if int(target) >= len(pm.Targets) {
				return fmt.Errorf("undo record for target %d of %d: %w", target, len(pm.Targets), ErrCorrupt)
			}
			t := pm.Targets[target]
			dst := want.Find(kindOf(t.Kind), t.Name)
			if dst == nil {
				return nil // a target epoch does not have
			}
			f, ok := files[target]
			if !ok {
				var err error
				if f, err = fsys.OpenReadWrite(path.Join(to, dst.File)); err != nil {
					return err
				}
				files[target] = f
			}
			switch fr := fr.(type) {
			case *wire.DiskExtent:
				_, err := f.WriteAt(fr.Data, int64(fr.Offset))
				return err
			case *wire.ZeroRun:
				return f.PunchHole(int64(fr.Offset), int64(fr.Length))
			}
			return nil
		})
		for _, f := range files {
			if serr := f.Sync(); err == nil {
				err = serr
			}
			f.Close()
		}
		if err == nil && tail != nil {
			err = fmt.Errorf("undo of epoch %d is torn: %w", e, errors.Join(tail, ErrCorrupt))
		}
		if err != nil {
			return nil, fmt.Errorf("materialize epoch %d: undo %d: %w", epoch, e, err)
		}
		if e == 0 {
			break
		}
	}
	// Tables from the restored images, checked against the manifest.
	for _, t := range want.Targets {
		tab, err := hashImage(fsys, path.Join(to, t.File), t.Size, t.BlockSize)
		if err != nil {
			return nil, err
		}
		if tab.Digest() != t.Digest {
			return nil, fmt.Errorf("materialize epoch %d: %s %s does not match the epoch's digest: %w", epoch, t.Kind, t.Name, ErrCorrupt)
		}
		if err := writeFileSync(fsys, path.Join(to, t.Table), tab.Marshal()); err != nil {
			return nil, err
		}
	}
	if want.DeviceState != nil {
		src := path.Join(dir, pointDir(epoch), want.DeviceState.File)
		if epoch == cur.Epoch {
			src = path.Join(dir, want.DeviceState.File)
		}
		if err := copyFile(fsys, src, path.Join(to, want.DeviceState.File)); err != nil {
			return nil, err
		}
	}
	b, err := want.Marshal()
	if err == nil {
		err = writeFileSync(fsys, path.Join(to, manifestName), b)
	}
	if err == nil {
		err = fsys.SyncDir(to)
	}
	return want, err
}

func hashImage(fsys vfs.FS, name string, size int64, bs int) (*blockhash.Table, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t := blockhash.NewZero(size, bs)
	buf := make([]byte, bs)
	for i := range t.Hashes {
		b := buf[:min(int64(bs), size-int64(i)*int64(bs))]
		if _, err := f.ReadAt(b, int64(i)*int64(bs)); err != nil && err != io.EOF {
			return nil, err
		}
		t.Hashes[i] = blockhash.Hash(b)
	}
	return t, nil
}

func copyFile(fsys vfs.FS, from, to string) error {
	src, err := fsys.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := fsys.Create(to)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, rerr := src.ReadAt(buf, off)
		if n > 0 {
			// Keep holes: zero chunks are skipped, the size set at the end.
			if !blockhash.IsZero(buf[:n]) {
				if _, err := dst.WriteAt(buf[:n], off); err != nil {
					dst.Close()
					return err
				}
			}
			off += int64(n)
		}
		if rerr != nil && rerr != io.EOF {
			dst.Close()
			return rerr
		}
		if rerr == io.EOF || n == 0 {
			break
		}
	}
	err = dst.Truncate(off)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

func writeFileSync(fsys vfs.FS, name string, b []byte) error {
	f, err := fsys.Create(name)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
