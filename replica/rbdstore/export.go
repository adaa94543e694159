package rbdstore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
)

// Export makes epoch openable by QEMU (see replica.Handle). The committed
// epoch without a copy is its images at their head; a recovery point, or
// a copy, is copied into images named scratch + "." + the target's file
// (and the device state into the object scratch + "." + its file), which
// belong to the caller afterwards.
func (h *handle) Export(epoch uint64, scratch string, keep func(replica.TargetEntry) bool) (replica.Image, error) {
	if h.relsd {
		return nil, errReleased
	}
	if epoch == h.man.Epoch && keep == nil {
		return &image{pool: h.s.Pool, cluster: h.s.Cluster, base: h.s.base(h.vm), m: h.man}, nil
	}
	if scratch == "" {
		return nil, fmt.Errorf("export of epoch %d needs a scratch name", epoch)
	}
	m, snap := h.man, ""
	if epoch != h.man.Epoch {
		eps, err := h.s.snapEpochs(h.vm, h.man)
		if err != nil {
			return nil, err
		}
		found := false
		for _, e := range eps {
			found = found || e == epoch
		}
		if !found {
			return nil, fmt.Errorf("epoch %d of %s is not a retained recovery point: %w", epoch, h.vm, fs.ErrNotExist)
		}
		if m, err = h.s.pointManifest(h.vm, epoch); err != nil {
			return nil, fmt.Errorf("recovery point %d: %w", epoch, err)
		}
		snap = snapName(epoch)
	}
	if d := m.DeviceState; d != nil {
		b, err := h.s.Pool.ReadObject(h.obj(d.File))
		if err != nil {
			return nil, storageErr("read device state", err)
		}
		if err := h.s.Pool.WriteObject(scratch+"."+d.File, b); err != nil {
			return nil, storageErr("copy device state", err)
		}
	}
	for _, t := range m.Targets {
		if keep != nil && !keep(t) {
			continue
		}
		if err := copyImage(h.s.Pool, h.obj(t.File), snap, scratch+"."+t.File, uint64(t.Size)); err != nil {
			return nil, fmt.Errorf("copy %s: %w", t.File, err)
		}
	}
	return &image{pool: h.s.Pool, cluster: h.s.Cluster, base: scratch, m: m}, nil
}

// copyImage copies from@snap into a fresh image to, skipping zeros so the
// copy stays thin.
func copyImage(p rbd.Pool, from, snap, to string, size uint64) error {
	if err := p.RemoveImage(to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return storageErr("remove old "+to, err)
	}
	if err := p.CreateImage(to, size); err != nil {
		return storageErr("create "+to, err)
	}
	src, err := p.OpenImage(from, snap)
	if err != nil {
		return storageErr("open "+from, err)
	}
	defer src.Close()
	dst, err := p.OpenImage(to, "")
	if err != nil {
		return storageErr("open "+to, err)
	}
	defer dst.Close()
	buf := make([]byte, 4<<20)
	zero := make([]byte, len(buf))
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		n := min(uint64(len(buf)), size-off)
		if _, err := src.ReadAt(buf[:n], int64(off)); err != nil {
			return storageErr("read "+from, err)
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			continue
		}
		if _, err := dst.WriteAt(buf[:n], int64(off)); err != nil {
			return storageErr("write "+to, err)
		}
	}
	if err := dst.Flush(); err != nil {
		return storageErr("flush "+to, err)
	}
	return nil
}

// image is an epoch held as RBD images whose names start with base, read
// at snap ("" for their head).
type image struct {
	pool    rbd.Pool
	cluster rbd.Config
	base    string
	snap    string
	m       *replica.Manifest
	// clones are the targets cloned for a VM to write (Handle.Clone): by
	// file, the clone's image name; snaps the RAM targets Clone only
	// snapshotted: by file, the snapshot they are read at.
	clones map[string]string
	snaps  map[string]string
}

func (d *image) Manifest() *replica.Manifest { return d.m }

// Location is the name QEMU's rbd driver opens:
// rbd:pool/image[@snap][:id=user][:conf=path].
func (d *image) Location(t *replica.TargetEntry) string {
	if c, ok := d.clones[t.File]; ok {
		return rbd.QEMUFile(d.cluster, d.pool.Name(), c, "")
	}
	return rbd.QEMUFile(d.cluster, d.pool.Name(), d.base+"."+t.File, d.snap)
}

// OpenTarget reads a target at snap, or at the snapshot Clone made of it
// (a RAM image a lazy takeover reads while the receiver may apply the
// next epochs).
func (d *image) OpenTarget(t *replica.TargetEntry) (replica.ReaderAtCloser, error) {
	snap := d.snap
	if s, ok := d.snaps[t.File]; ok {
		snap = s
	}
	im, err := d.pool.OpenImage(d.base+"."+t.File, snap)
	if err != nil {
		return nil, storageErr("open image "+t.File, err)
	}
	return im, nil
}

func (d *image) DeviceState() ([]byte, error) {
	if d.m.DeviceState == nil {
		return nil, nil
	}
	b, err := d.pool.ReadObject(d.base + "." + d.m.DeviceState.File)
	if err != nil {
		return nil, storageErr("read device state", err)
	}
	return b, nil
}
