package vfs

import (
	"errors"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Default is the FS of the host operating system. Paths are handed to the
// kernel as given, so relative paths resolve against the working directory.
var Default FS = osFS{}

// filePerm is the mode of created files. Replicas hold guest disk and memory
// contents, so nobody but the owner may read them.
const filePerm = 0o600

type osFS struct{}

func (osFS) Create(name string) (File, error) {
	return openOS(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
}

func (osFS) Open(name string) (File, error) {
	return openOS(name, os.O_RDONLY)
}

func (osFS) OpenReadWrite(name string) (File, error) {
	return openOS(name, os.O_RDWR|os.O_CREATE)
}

func openOS(name string, flag int) (File, error) {
	f, err := os.OpenFile(name, flag, filePerm)
	if err != nil {
		return nil, err
	}
	return &osFile{f}, nil
}

func (osFS) Remove(name string) error                    { return os.Remove(name) }
func (osFS) RemoveAll(name string) error                 { return os.RemoveAll(name) }
func (osFS) Rename(oldname, newname string) error        { return os.Rename(oldname, newname) }
func (osFS) MkdirAll(dir string, perm os.FileMode) error { return os.MkdirAll(dir, perm) }
func (osFS) Stat(name string) (os.FileInfo, error)       { return os.Stat(name) }

func (osFS) List(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

func (osFS) SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// lockPerm is the mode of lock files: they hold only the holder's note,
// which monitoring in the owner's group may read.
const lockPerm = 0o640

// Lock locks with flock, so that it excludes other processes and other
// opens in this one. The holder's note is kept at the start of the file.
func (osFS) Lock(name, note string) (Locked, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, lockPerm)
	if errors.Is(err, os.ErrPermission) {
		// Read access is enough to take (or probe) the lock; only the
		// note is lost.
		f, err = os.OpenFile(name, os.O_RDONLY, 0)
	}
	if err != nil {
		return nil, lockError(name, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b := make([]byte, noteLen)
			n, _ := f.ReadAt(b, 0)
			return nil, &LockedError{Name: name, Note: decodeNote(b[:n])}
		}
		return nil, lockError(name, &os.PathError{Op: "flock", Path: name, Err: err})
	}
	l := &osLock{f: f}
	if note != "" {
		l.Note(note)
	}
	return l, nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

type osLock struct {
	mu sync.Mutex
	f  *os.File // nil once unlocked
}

func (l *osLock) Note(note string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	_, err := l.f.WriteAt(encodeNote(note), 0)
	return err
}

// Unlock closes the file, which releases the flock.
func (l *osLock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// osFile embeds *os.File so that io.Copy and friends still find its
// ReadFrom/WriteTo fast paths.
type osFile struct {
	*os.File
}

// Allocate fails with an error matching errors.ErrUnsupported on file systems
// without fallocate; callers that can live without the reservation may
// ignore that case.
func (f *osFile) Allocate(off, n int64) error {
	if n == 0 {
		// fallocate rejects an empty range with EINVAL; there is nothing to do.
		return nil
	}
	return f.fallocate(unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (f *osFile) PunchHole(off, n int64) error {
	if n == 0 {
		return nil
	}
	err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, errors.ErrUnsupported) {
		// The range must read as zeros either way; only the space saving is lost.
		return f.writeZeros(off, n)
	}
	return err
}

func (f *osFile) fallocate(mode uint32, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	var errno error
	cerr := rc.Control(func(fd uintptr) {
		for {
			errno = unix.Fallocate(int(fd), mode, off, n)
			// Runtime preemption signals can interrupt the call.
			if errno != unix.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: cerr}
	}
	if errno != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: errno}
	}
	return nil
}

// writeZeros zeroes [off, off+n) clamped to the file size, because a punched
// hole must not grow the file.
func (f *osFile) writeZeros(off, n int64) error {
	if off < 0 || n < 0 {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: unix.EINVAL}
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	end := min(off+n, st.Size())
	if end <= off {
		return nil
	}
	zeros := make([]byte, min(end-off, 64<<10))
	for off < end {
		m := min(int64(len(zeros)), end-off)
		if _, err := f.WriteAt(zeros[:m], off); err != nil {
			return err
		}
		off += m
	}
	return nil
}

// StartWriteback asks the kernel to begin writing f's dirty pages to disk
// now, without waiting for them.
func (f *osFile) StartWriteback() error {
	return unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
