package rbdstore

import (
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vmspec"
)

// cloneTag is what a clone's name may end in: a word, never one of the
// store's own suffixes (lock, disk-N, ram-N), so that a VM named like
// another's clone ("web.disk-0.drill") never owns an image of that name.
var cloneTag = regexp.MustCompile(`^[a-z]+$`)

// targetFile is the image name of a target (fileNames).
var targetFile = regexp.MustCompile(`^(disk|ram)-[0-9]+$`)

// cloneName is the name of the clone of image parent tagged name.
func cloneName(parent, name string) string { return parent + "." + name }

// removeWait bounds how long a removal waits for the watch of a client
// that was killed with the image open (QEMU) to expire.
const removeWait = 45 * time.Second

// Clone makes a copy-on-write clone of each target o.Keep selects, of
// epoch o.Epoch, for a VM to run on (see replica.Cloner). The committed
// epoch is first snapshotted as o.Name (the lock is held, so the images
// are exactly that epoch); a recovery point is cloned from its eE
// snapshot. The snapshot is protected, as clones need. A RAM target
// o.Keep selects (a takeover that reads it while the guest runs, never
// writes it) is only snapshotted, and read at the snapshot: the epoch
// taken over, whatever the receiver applies next. Everything made is
// undone by Store.RemoveClones(vm, o.Name).
func (h *handle) Clone(o replica.CloneOptions) (replica.Image, error) {
	if h.relsd {
		return nil, errReleased
	}
	if !cloneTag.MatchString(o.Name) || o.Name == "lock" {
		return nil, fmt.Errorf("clone name %q: want lower-case letters", o.Name)
	}
	m, snap := h.man, ""
	if o.Epoch != h.man.Epoch {
		eps, err := h.s.snapEpochs(h.vm, h.man)
		if err != nil {
			return nil, err
		}
		found := false
		for _, e := range eps {
			found = found || e == o.Epoch
		}
		if !found {
			return nil, fmt.Errorf("epoch %d of %s is not a retained recovery point: %w", o.Epoch, h.vm, fs.ErrNotExist)
		}
		if m, err = h.s.pointManifest(h.vm, o.Epoch); err != nil {
			return nil, fmt.Errorf("recovery point %d: %w", o.Epoch, err)
		}
		snap = snapName(o.Epoch)
	}
	img := &image{pool: h.s.Pool, cluster: h.s.Cluster, base: h.s.base(h.vm), snap: snap, m: m, clones: map[string]string{}, snaps: map[string]string{}}
	made := false
	fail := func(err error) (replica.Image, error) {
		if made {
			if rerr := h.s.RemoveClones(h.vm, o.Name); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove the clones made: %w", rerr))
			}
		}
		return nil, err
	}
	for _, t := range m.Targets {
		if o.Keep == nil || !o.Keep(t) {
			continue
		}
		parent := h.obj(t.File)
		if t.TargetKind() == vmspec.KindRAM {
			made = true
			psnap := snap
			if psnap == "" {
				psnap = o.Name
				if err := h.freshSnap(parent, psnap); err != nil {
					return fail(err)
				}
			}
			img.snaps[t.File] = psnap
			continue
		}
		child := cloneName(parent, o.Name)
		if im, err := h.s.Pool.OpenImage(child, ""); err == nil {
			im.Close()
			if !o.Replace {
				return fail(fmt.Errorf("%s/%s exists: a VM may have written to it: %w", h.s.Pool.Name(), child, fs.ErrExist))
			}
			if err := h.s.removeImage(child); err != nil {
				return fail(err)
			}
		} else if !notExist(err) {
			return fail(storageErr("open "+child, err))
		}
		made = true
		psnap := snap
		if psnap == "" {
			psnap = o.Name
			if err := h.freshSnap(parent, psnap); err != nil {
				return fail(err)
			}
		}
		if err := protect(h.s.Pool, parent, psnap); err != nil {
			return fail(err)
		}
		if err := h.s.Pool.Clone(parent, psnap, child); err != nil {
			return fail(storageErr("clone "+parent+"@"+psnap, err))
		}
		img.clones[t.File] = child
	}
	return img, nil
}

// freshSnap (re)creates snapshot name of image at its head; one an
// earlier run left has no clone any more (its clone was just found absent
// or removed), so it is replaced.
func (h *handle) freshSnap(image, name string) error {
	return onSnaps(h.s.Pool, image, func(im rbd.Image, snaps []rbd.Snap) error {
		for _, sn := range snaps {
			if sn.Name == name {
				if err := dropSnap(im, image, sn); err != nil {
					return err
				}
			}
		}
		if err := im.CreateSnap(name); err != nil {
			return storageErr("snapshot "+image, err)
		}
		return nil
	})
}

func protect(p rbd.Pool, image, snap string) error {
	return onSnaps(p, image, func(im rbd.Image, snaps []rbd.Snap) error {
		if slices.ContainsFunc(snaps, func(sn rbd.Snap) bool { return sn.Name == snap && sn.Protected }) {
			return nil
		}
		if err := im.ProtectSnap(snap); err != nil {
			return storageErr("protect "+image+"@"+snap, err)
		}
		return nil
	})
}

// onSnaps calls f with image, opened at its head, and its snapshots.
func onSnaps(p rbd.Pool, image string, f func(im rbd.Image, snaps []rbd.Snap) error) error {
	im, err := p.OpenImage(image, "")
	if err != nil {
		return storageErr("open "+image, err)
	}
	defer im.Close()
	snaps, err := im.Snaps()
	if err != nil {
		return storageErr("list snapshots of "+image, err)
	}
	return f(im, snaps)
}

// dropSnap removes snapshot sn of image im, lifting its protection first.
func dropSnap(im rbd.Image, image string, sn rbd.Snap) error {
	if sn.Protected {
		if err := im.UnprotectSnap(sn.Name); err != nil {
			return storageErr("unprotect "+image+"@"+sn.Name, err)
		}
	}
	if err := im.RemoveSnap(sn.Name); err != nil && !notExist(err) {
		return storageErr("remove "+image+"@"+sn.Name, err)
	}
	return nil
}

// removeImage removes an image, waiting out the watch of a killed client
// that had it open.
func (s *Store) removeImage(name string) error {
	deadline := time.Now().Add(removeWait)
	for {
		err := s.Pool.RemoveImage(name)
		if err == nil || notExist(err) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return storageErr("remove "+name, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// RemoveClones removes vm's clones tagged name, the snapshot name the
// clones of a committed epoch were made from, and the protection of the
// recovery points' snapshots no clone needs any more (see
// replica.CloneRemover). A snapshot another clone still needs (a
// failover's) keeps its protection: librbd refuses to lift it.
func (s *Store) RemoveClones(vm, name string) error {
	if !cloneTag.MatchString(name) {
		return fmt.Errorf("clone name %q: want lower-case letters", name)
	}
	names, err := s.Pool.ListImages()
	if err != nil {
		return storageErr("list images", err)
	}
	prefix := s.base(vm) + "."
	var parents []string
	var errs []error
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		if file, ok := strings.CutSuffix(rest, "."+name); ok && targetFile.MatchString(file) {
			if err := s.removeImage(n); err != nil {
				errs = append(errs, err)
			}
		} else if targetFile.MatchString(rest) {
			parents = append(parents, n)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, p := range parents {
		if err := s.unsnap(p, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unsnap removes snapshot name of image and lifts the protection of its
// recovery points' snapshots where no clone needs it.
func (s *Store) unsnap(image, name string) error {
	return onSnaps(s.Pool, image, func(im rbd.Image, snaps []rbd.Snap) error {
		for _, sn := range snaps {
			_, point := parseSnap(sn.Name)
			switch {
			case sn.Name == name:
				if err := dropSnap(im, image, sn); err != nil {
					return err
				}
			case point && sn.Protected:
				if err := im.UnprotectSnap(sn.Name); err != nil && !errors.Is(err, syscall.EBUSY) {
					return storageErr("unprotect "+image+"@"+sn.Name, err)
				}
			}
		}
		return nil
	})
}

var (
	_ replica.Cloner       = (*handle)(nil)
	_ replica.CloneRemover = (*Store)(nil)
)
