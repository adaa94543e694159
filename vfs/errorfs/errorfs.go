package errorfs

import (
	"errors"
	"fmt"
	"os"

	"github.com/drsync/drsync/vfs"
)

// OpKind names an FS or File method.
type OpKind int

// The operations errorfs intercepts. File methods carry the name the file
// was opened with as their path.
const (
	OpCreate OpKind = iota
	OpOpen
	OpOpenReadWrite
	OpRemove
	OpRemoveAll
	OpRename
	OpMkdirAll
	OpStat
	OpList
	OpSyncDir
	OpRead
	OpReadAt
	OpWrite
	OpWriteAt
	OpSync
	OpFileStat
	OpTruncate
	OpAllocate
	OpPunchHole
	OpClose
	OpChmod
	OpLock
	numOpKinds
)

var opNames = [numOpKinds]string{
	OpCreate:        "create",
	OpOpen:          "open",
	OpOpenReadWrite: "openreadwrite",
	OpRemove:        "remove",
	OpRemoveAll:     "removeall",
	OpRename:        "rename",
	OpMkdirAll:      "mkdirall",
	OpStat:          "stat",
	OpList:          "list",
	OpSyncDir:       "syncdir",
	OpRead:          "read",
	OpReadAt:        "readat",
	OpWrite:         "write",
	OpWriteAt:       "writeat",
	OpSync:          "sync",
	OpFileStat:      "filestat",
	OpTruncate:      "truncate",
	OpAllocate:      "allocate",
	OpPunchHole:     "punchhole",
	OpClose:         "close",
	OpChmod:         "chmod",
	OpLock:          "lock",
}

func (k OpKind) String() string {
	if k >= 0 && k < numOpKinds {
		return opNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Mutates reports whether operations of kind k can change what is stored.
// Close counts, since callers flush on it.
func (k OpKind) Mutates() bool {
	switch k {
	case OpOpen, OpStat, OpList, OpRead, OpReadAt, OpFileStat:
		return false
	}
	return k >= 0 && k < numOpKinds
}

// Op describes one intercepted operation.
type Op struct {
	Kind OpKind
	// Path is the name the operation was called with; for file methods the
	// name the file was opened with; for OpRename the old name.
	Path string
	// NewPath is the new name of OpRename.
	NewPath string
	// Off is the offset of ReadAt, WriteAt, Allocate and PunchHole, and the
	// size of Truncate.
	Off int64
	// Len is the byte count of Read, ReadAt, Write and WriteAt, and the
	// length of Allocate and PunchHole.
	Len int64
}

func (op Op) String() string {
	switch op.Kind {
	case OpRename:
		return fmt.Sprintf("%s %s %s", op.Kind, op.Path, op.NewPath)
	case OpRead, OpWrite:
		return fmt.Sprintf("%s %s len=%d", op.Kind, op.Path, op.Len)
	case OpReadAt, OpWriteAt, OpAllocate, OpPunchHole:
		return fmt.Sprintf("%s %s off=%d len=%d", op.Kind, op.Path, op.Off, op.Len)
	case OpTruncate:
		return fmt.Sprintf("%s %s size=%d", op.Kind, op.Path, op.Off)
	}
	return fmt.Sprintf("%s %s", op.Kind, op.Path)
}

// Injector decides, before each operation, whether it fails. A non-nil
// error is returned by the operation (wrapped, see Wrap) instead of calling
// the wrapped FS.
type Injector interface {
	MaybeError(op Op) error
}

// InjectorFunc adapts a function to Injector.
type InjectorFunc func(op Op) error

func (f InjectorFunc) MaybeError(op Op) error { return f(op) }

// ErrInjected is the default injected error. Every error produced by an
// injector also matches it under errors.Is, whatever its cause.
var ErrInjected = errors.New("errorfs: injected error")

// injectedError marks an injector's error so tests can tell injected
// failures from real ones while errors.Is still sees the cause.
type injectedError struct {
	err error
}

func (e *injectedError) Error() string {
	if e.err == ErrInjected {
		return e.err.Error()
	}
	return "errorfs: injected: " + e.err.Error()
}

func (e *injectedError) Unwrap() error        { return e.err }
func (e *injectedError) Is(target error) bool { return target == ErrInjected }

// Wrap returns an FS that asks inj before every operation of inner and of
// the files it opens whether to fail it. A failed operation does nothing
// and returns an *os.PathError (*os.LinkError for Rename) wrapping the
// injector's error; errors.Is(err, ErrInjected) holds for it. A failed
// Close still closes the inner file so that nothing leaks.
func Wrap(inner vfs.FS, inj Injector) vfs.FS {
	return &errFS{inner: inner, inj: inj}
}

type errFS struct {
	inner vfs.FS
	inj   Injector
}

func (e *errFS) check(op Op) error {
	err := e.inj.MaybeError(op)
	if err == nil {
		return nil
	}
	err = &injectedError{err: err}
	if op.Kind == OpRename {
		return &os.LinkError{Op: op.Kind.String(), Old: op.Path, New: op.NewPath, Err: err}
	}
	return &os.PathError{Op: op.Kind.String(), Path: op.Path, Err: err}
}

func (e *errFS) openWith(kind OpKind, name string, open func(string) (vfs.File, error)) (vfs.File, error) {
	if err := e.check(Op{Kind: kind, Path: name}); err != nil {
		return nil, err
	}
	f, err := open(name)
	if err != nil {
		return nil, err
	}
	return &errFile{fs: e, f: f, name: name}, nil
}

func (e *errFS) Create(name string) (vfs.File, error) {
	return e.openWith(OpCreate, name, e.inner.Create)
}

func (e *errFS) Open(name string) (vfs.File, error) {
	return e.openWith(OpOpen, name, e.inner.Open)
}

func (e *errFS) OpenReadWrite(name string) (vfs.File, error) {
	return e.openWith(OpOpenReadWrite, name, e.inner.OpenReadWrite)
}

func (e *errFS) Remove(name string) error {
	if err := e.check(Op{Kind: OpRemove, Path: name}); err != nil {
		return err
	}
	return e.inner.Remove(name)
}

func (e *errFS) RemoveAll(name string) error {
	if err := e.check(Op{Kind: OpRemoveAll, Path: name}); err != nil {
		return err
	}
	return e.inner.RemoveAll(name)
}

func (e *errFS) Rename(oldname, newname string) error {
	if err := e.check(Op{Kind: OpRename, Path: oldname, NewPath: newname}); err != nil {
		return err
	}
	return e.inner.Rename(oldname, newname)
}

func (e *errFS) MkdirAll(dir string, perm os.FileMode) error {
	if err := e.check(Op{Kind: OpMkdirAll, Path: dir}); err != nil {
		return err
	}
	return e.inner.MkdirAll(dir, perm)
}

func (e *errFS) Stat(name string) (os.FileInfo, error) {
	if err := e.check(Op{Kind: OpStat, Path: name}); err != nil {
		return nil, err
	}
	return e.inner.Stat(name)
}

func (e *errFS) List(dir string) ([]string, error) {
	if err := e.check(Op{Kind: OpList, Path: dir}); err != nil {
		return nil, err
	}
	return e.inner.List(dir)
}

// Lock asks about OpLock; the lock itself is the wrapped FS's, so that
// layers over one FS exclude each other.
func (e *errFS) Lock(name, note string) (vfs.Locked, error) {
	if err := e.check(Op{Kind: OpLock, Path: name}); err != nil {
		return nil, err
	}
	return e.inner.Lock(name, note)
}

func (e *errFS) SyncDir(dir string) error {
	if err := e.check(Op{Kind: OpSyncDir, Path: dir}); err != nil {
		return err
	}
	return e.inner.SyncDir(dir)
}

type errFile struct {
	fs   *errFS
	f    vfs.File
	name string
}

func (f *errFile) op(kind OpKind, off, n int64) Op {
	return Op{Kind: kind, Path: f.name, Off: off, Len: n}
}

func (f *errFile) Read(p []byte) (int, error) {
	if err := f.fs.check(f.op(OpRead, 0, int64(len(p)))); err != nil {
		return 0, err
	}
	return f.f.Read(p)
}

func (f *errFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(f.op(OpReadAt, off, int64(len(p)))); err != nil {
		return 0, err
	}
	return f.f.ReadAt(p, off)
}

func (f *errFile) Write(p []byte) (int, error) {
	if err := f.fs.check(f.op(OpWrite, 0, int64(len(p)))); err != nil {
		return 0, err
	}
	return f.f.Write(p)
}

func (f *errFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(f.op(OpWriteAt, off, int64(len(p)))); err != nil {
		return 0, err
	}
	return f.f.WriteAt(p, off)
}

func (f *errFile) Sync() error {
	if err := f.fs.check(f.op(OpSync, 0, 0)); err != nil {
		return err
	}
	return f.f.Sync()
}

func (f *errFile) Stat() (os.FileInfo, error) {
	if err := f.fs.check(f.op(OpFileStat, 0, 0)); err != nil {
		return nil, err
	}
	return f.f.Stat()
}

func (f *errFile) Truncate(size int64) error {
	if err := f.fs.check(f.op(OpTruncate, size, 0)); err != nil {
		return err
	}
	return f.f.Truncate(size)
}

func (f *errFile) Allocate(off, n int64) error {
	if err := f.fs.check(f.op(OpAllocate, off, n)); err != nil {
		return err
	}
	return f.f.Allocate(off, n)
}

func (f *errFile) PunchHole(off, n int64) error {
	if err := f.fs.check(f.op(OpPunchHole, off, n)); err != nil {
		return err
	}
	return f.f.PunchHole(off, n)
}

func (f *errFile) Chmod(mode os.FileMode) error {
	if err := f.fs.check(f.op(OpChmod, 0, 0)); err != nil {
		return err
	}
	return f.f.Chmod(mode)
}

func (f *errFile) Close() error {
	if err := f.fs.check(f.op(OpClose, 0, 0)); err != nil {
		f.f.Close()
		return err
	}
	return f.f.Close()
}

// Unwrap returns the wrapped file system, for tests that need to reach
// it (locks need not: Lock is passed on).
func (e *errFS) Unwrap() vfs.FS { return e.inner }
