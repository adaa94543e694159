package memfs

import (
	"io"
	"os"
	"syscall"

	"github.com/drsync/drsync/vfs"
)

// file is an open handle. Its offset is guarded by fs.mu like everything
// else, so a handle may be shared between goroutines.
type file struct {
	fs     *FS
	n      *node
	name   string
	write  bool
	pos    int64
	closed bool
}

var _ vfs.File = (*file)(nil)

// lock locks the FS and checks that the handle is usable for op. On
// success the caller must unlock fs.mu.
func (f *file) lock(op string) error {
	f.fs.mu.Lock()
	var err error
	switch {
	case f.fs.crashed:
		err = ErrCrashed
	case f.closed:
		err = os.ErrClosed
	default:
		return nil
	}
	f.fs.mu.Unlock()
	return pathErr(op, f.name, err)
}

// lockData is lock for operations on file contents.
func (f *file) lockData(op string, write bool) error {
	if err := f.lock(op); err != nil {
		return err
	}
	var err error
	switch {
	case f.n.dir:
		err = syscall.EISDIR
	case write && !f.write:
		err = syscall.EBADF
	default:
		return nil
	}
	f.fs.mu.Unlock()
	return pathErr(op, f.name, err)
}

func (f *file) Read(p []byte) (int, error) {
	if err := f.lockData("read", false); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	n := readAt(f.n, p, f.pos)
	if n == 0 {
		return 0, io.EOF
	}
	f.pos += int64(n)
	return n, nil
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	if err := f.lockData("read", false); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := readAt(f.n, p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *file) Write(p []byte) (int, error) {
	if err := f.lockData("write", true); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if err := f.fs.writeAt(f.n, p, f.pos); err != nil {
		return 0, pathErr("write", f.name, err)
	}
	f.pos += int64(len(p))
	return len(p), nil
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	if err := f.lockData("write", true); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if err := f.fs.writeAt(f.n, p, off); err != nil {
		return 0, pathErr("write", f.name, err)
	}
	return len(p), nil
}

func (f *file) Truncate(size int64) error {
	if err := f.lockData("truncate", true); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	f.fs.truncate(f.n, size)
	return nil
}

func (f *file) Allocate(off, n int64) error {
	if err := f.lockData("fallocate", true); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if n == 0 {
		return nil
	}
	if err := f.fs.allocate(f.n, off, n); err != nil {
		return pathErr("fallocate", f.name, err)
	}
	return nil
}

func (f *file) PunchHole(off, n int64) error {
	if err := f.lockData("fallocate", true); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if n == 0 {
		return nil
	}
	if err := f.fs.punchHole(f.n, off, n); err != nil {
		return pathErr("fallocate", f.name, err)
	}
	return nil
}

// Sync makes the contents of a file durable, or, on a directory handle, its
// entries (as fsync on a directory does).
func (f *file) Sync() error {
	if err := f.lock("sync"); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if f.n.dir {
		f.fs.syncDir(f.n)
	} else {
		f.fs.syncFile(f.n)
	}
	return nil
}

func (f *file) Stat() (os.FileInfo, error) {
	if err := f.lock("stat"); err != nil {
		return nil, err
	}
	defer f.fs.mu.Unlock()
	return info(f.name, f.n), nil
}

func (f *file) Chmod(mode os.FileMode) error {
	if err := f.lock("chmod"); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	f.n.mode = f.n.mode&os.ModeType | mode.Perm()
	return nil
}

func (f *file) Close() error {
	if err := f.lock("close"); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	f.closed = true
	return nil
}
