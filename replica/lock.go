package replica

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/drsync/drsync/vfs"
)

// ErrLocked means another process or session holds the replica.
var ErrLocked = errors.New("replica is in use")

// Replicas on the real file system are locked with flock, so a second
// receiver process (or a verify run) cannot write or read a replica while
// it is being applied. Other file systems (tests) lock in memory.
var (
	memLocksMu sync.Mutex
	memLocks   = map[string]bool{}
)

type unlockFunc func() error

func (u unlockFunc) Close() error { return u() }

func lock(fsys vfs.FS, name string) (io.Closer, error) {
	if fsys == vfs.Default {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open lock %s: %w (%w)", name, err, ErrStorage)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s: %w", name, ErrLocked)
			}
			return nil, fmt.Errorf("lock %s: %w (%w)", name, err, ErrStorage)
		}
		return unlockFunc(f.Close), nil
	}
	k := fmt.Sprintf("%p:%s", fsys, name)
	memLocksMu.Lock()
	defer memLocksMu.Unlock()
	if memLocks[k] {
		return nil, fmt.Errorf("%s: %w", name, ErrLocked)
	}
	memLocks[k] = true
	return unlockFunc(func() error {
		memLocksMu.Lock()
		delete(memLocks, k)
		memLocksMu.Unlock()
		return nil
	}), nil
}

// CheckUnlocked reports ErrLocked if a process holds the replica in dir
// (a receiver applying an epoch, a verify run), without taking or
// changing anything. The answer may be stale as soon as it is returned;
// it is for checks that refuse early, such as a failover's dry run.
func CheckUnlocked(dir string) error {
	name := dir + "/LOCK"
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open lock %s: %w (%w)", name, err, ErrStorage)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", name, ErrLocked)
		}
		return fmt.Errorf("lock %s: %w (%w)", name, err, ErrStorage)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
