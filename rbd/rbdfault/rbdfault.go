// Package rbdfault injects failures at the rbd seam, as vfs/errorfs does at
// the file-system one: every operation of a wrapped rbd.Pool, and of the
// images opened through it, is first offered to an errorfs.Injector, so
// the same injectors (Counter, OnIndex, FromIndex, When) count and fail
// the storage operations of a store on Ceph.
//
// Operations map onto errorfs kinds by what they do to stored bytes:
//
//	CreateImage, Clone          OpCreate      (path: the new image)
//	RemoveImage, RemoveObject   OpRemove
//	ListImages                  OpList        (path: the pool)
//	OpenImage                   OpOpen at a snapshot, OpOpenReadWrite at the head
//	WriteObject                 OpWrite       (a whole object, atomically)
//	ReadObject                  OpRead
//	Size, Snaps, Owners         OpFileStat
//	Resize                      OpTruncate    (Off: the new size)
//	ReadAt, WriteAt             OpReadAt, OpWriteAt
//	WriteZeroes                 OpPunchHole
//	Flush                       OpSync
//	CreateSnap, RemoveSnap, ProtectSnap, UnprotectSnap, RollbackSnap
//	                            OpRename      (NewPath: "@" and the snapshot)
//	Acquire, Release, BreakLock OpLock
//	Metadata, SetMetadata       OpStat, OpChmod (NewPath: the key)
//	Close                       OpClose       (the image is closed anyway)
//
// A failed operation does nothing. Its error matches errorfs.ErrInjected
// and the injector's error; an injected errno is also an *rbd.Error, so
// an injected ENOSPC or EDQUOT matches rbd.ErrNoSpace as a real one does.
// It must not know about replicas.
package rbdfault

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/vfs/errorfs"
)

// Wrap returns a pool that asks inj before every operation of p.
func Wrap(p rbd.Pool, inj errorfs.Injector) rbd.Pool { return &pool{p: p, inj: inj} }

type injected struct {
	op  errorfs.Op
	err error
}

func (e *injected) Error() string { return fmt.Sprintf("rbd: %s: injected: %v", e.op, e.err) }

func (e *injected) Unwrap() []error {
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		return []error{e.err, &rbd.Error{Op: e.op.Kind.String(), Name: e.op.Path, Errno: errno}}
	}
	return []error{e.err}
}

func (e *injected) Is(target error) bool { return target == errorfs.ErrInjected }

func check(inj errorfs.Injector, op errorfs.Op) error {
	if err := inj.MaybeError(op); err != nil {
		return &injected{op: op, err: err}
	}
	return nil
}

type pool struct {
	p   rbd.Pool
	inj errorfs.Injector
}

func (p *pool) op(kind errorfs.OpKind, name string) error {
	return check(p.inj, errorfs.Op{Kind: kind, Path: name})
}

func (p *pool) Name() string { return p.p.Name() }
func (p *pool) Close()       { p.p.Close() }

func (p *pool) CreateImage(name string, size uint64) error {
	if err := p.op(errorfs.OpCreate, name); err != nil {
		return err
	}
	return p.p.CreateImage(name, size)
}

func (p *pool) RemoveImage(name string) error {
	if err := p.op(errorfs.OpRemove, name); err != nil {
		return err
	}
	return p.p.RemoveImage(name)
}

func (p *pool) ListImages() ([]string, error) {
	if err := p.op(errorfs.OpList, p.p.Name()); err != nil {
		return nil, err
	}
	return p.p.ListImages()
}

func (p *pool) OpenImage(name, snap string) (rbd.Image, error) {
	kind := errorfs.OpOpenReadWrite
	if snap != "" {
		kind = errorfs.OpOpen
	}
	if err := p.op(kind, name); err != nil {
		return nil, err
	}
	im, err := p.p.OpenImage(name, snap)
	if err != nil {
		return nil, err
	}
	return &image{im: im, inj: p.inj, name: name}, nil
}

func (p *pool) Clone(parent, snap, child string) error {
	if err := p.op(errorfs.OpCreate, child); err != nil {
		return err
	}
	return p.p.Clone(parent, snap, child)
}

func (p *pool) WriteObject(oid string, data []byte) error {
	if err := check(p.inj, errorfs.Op{Kind: errorfs.OpWrite, Path: oid, Len: int64(len(data))}); err != nil {
		return err
	}
	return p.p.WriteObject(oid, data)
}

func (p *pool) ReadObject(oid string) ([]byte, error) {
	if err := p.op(errorfs.OpRead, oid); err != nil {
		return nil, err
	}
	return p.p.ReadObject(oid)
}

func (p *pool) RemoveObject(oid string) error {
	if err := p.op(errorfs.OpRemove, oid); err != nil {
		return err
	}
	return p.p.RemoveObject(oid)
}

type image struct {
	im   rbd.Image
	inj  errorfs.Injector
	name string
}

func (m *image) op(kind errorfs.OpKind, off, n int64, sub string) error {
	return check(m.inj, errorfs.Op{Kind: kind, Path: m.name, NewPath: sub, Off: off, Len: n})
}

func (m *image) Name() string { return m.im.Name() }

func (m *image) Size() (uint64, error) {
	if err := m.op(errorfs.OpFileStat, 0, 0, ""); err != nil {
		return 0, err
	}
	return m.im.Size()
}

func (m *image) Resize(size uint64) error {
	if err := m.op(errorfs.OpTruncate, int64(size), 0, ""); err != nil {
		return err
	}
	return m.im.Resize(size)
}

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	if err := m.op(errorfs.OpReadAt, off, int64(len(p)), ""); err != nil {
		return 0, err
	}
	return m.im.ReadAt(p, off)
}

func (m *image) WriteAt(p []byte, off int64) (int, error) {
	if err := m.op(errorfs.OpWriteAt, off, int64(len(p)), ""); err != nil {
		return 0, err
	}
	return m.im.WriteAt(p, off)
}

func (m *image) WriteZeroes(off, n uint64) error {
	if err := m.op(errorfs.OpPunchHole, int64(off), int64(n), ""); err != nil {
		return err
	}
	return m.im.WriteZeroes(off, n)
}

func (m *image) Flush() error {
	if err := m.op(errorfs.OpSync, 0, 0, ""); err != nil {
		return err
	}
	return m.im.Flush()
}

func (m *image) snapOp(name string, f func(string) error) error {
	if err := m.op(errorfs.OpRename, 0, 0, "@"+name); err != nil {
		return err
	}
	return f(name)
}

func (m *image) CreateSnap(name string) error    { return m.snapOp(name, m.im.CreateSnap) }
func (m *image) RemoveSnap(name string) error    { return m.snapOp(name, m.im.RemoveSnap) }
func (m *image) ProtectSnap(name string) error   { return m.snapOp(name, m.im.ProtectSnap) }
func (m *image) UnprotectSnap(name string) error { return m.snapOp(name, m.im.UnprotectSnap) }
func (m *image) RollbackSnap(name string) error  { return m.snapOp(name, m.im.RollbackSnap) }

func (m *image) Snaps() ([]rbd.Snap, error) {
	if err := m.op(errorfs.OpFileStat, 0, 0, ""); err != nil {
		return nil, err
	}
	return m.im.Snaps()
}

func (m *image) Acquire() error {
	if err := m.op(errorfs.OpLock, 0, 0, ""); err != nil {
		return err
	}
	return m.im.Acquire()
}

func (m *image) Release() error {
	if err := m.op(errorfs.OpLock, 0, 0, ""); err != nil {
		return err
	}
	return m.im.Release()
}

func (m *image) Owners() ([]string, error) {
	if err := m.op(errorfs.OpFileStat, 0, 0, ""); err != nil {
		return nil, err
	}
	return m.im.Owners()
}

func (m *image) BreakLock(owner string) error {
	if err := m.op(errorfs.OpLock, 0, 0, owner); err != nil {
		return err
	}
	return m.im.BreakLock(owner)
}

func (m *image) Metadata(key string) (string, error) {
	if err := m.op(errorfs.OpStat, 0, 0, key); err != nil {
		return "", err
	}
	return m.im.Metadata(key)
}

func (m *image) SetMetadata(key, value string) error {
	if err := m.op(errorfs.OpChmod, 0, 0, key); err != nil {
		return err
	}
	return m.im.SetMetadata(key, value)
}

// Close closes the image even when the injector fails it, so that
// nothing leaks.
func (m *image) Close() error {
	err := m.op(errorfs.OpClose, 0, 0, "")
	if cerr := m.im.Close(); err == nil {
		err = cerr
	}
	return err
}
