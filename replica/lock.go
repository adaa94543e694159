package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/vfs"
)

// ErrLocked means another process or session holds the replica.
var ErrLocked = errors.New("replica is in use")

// Replicas on the real file system are locked with flock, so a second
// receiver process (or a verify run) cannot write or read a replica while
// it is being applied. Other file systems (tests) lock in memory.
//
// The holder says what it is doing in the lock file, one line rewritten in
// place ("the receiver (pid 42) is applying epoch 7"), so that whoever is
// refused the lock can tell the operator why, rather than guess.
var (
	memLocksMu sync.Mutex
	memLocks   = map[string]string{} // held locks and their notes
)

// noteLen is the fixed length notes are padded to, so that rewriting one
// never leaves the tail of a longer one behind.
const noteLen = 200

// lockPoll is how often a waiting locker tries again.
const lockPoll = 20 * time.Millisecond

// held is a taken replica lock.
type held struct {
	f   *os.File // flock; nil for an in-memory lock
	key string   // in-memory lock
}

// note records what the holder is doing. It is informational: a note
// that cannot be written is not an error.
func (h *held) note(s string) {
	if h == nil {
		return
	}
	if h.f == nil {
		memLocksMu.Lock()
		if _, ok := memLocks[h.key]; ok {
			memLocks[h.key] = s
		}
		memLocksMu.Unlock()
		return
	}
	b := []byte(s)
	if len(b) > noteLen-1 {
		b = b[:noteLen-1]
	}
	b = append(b, bytes.Repeat([]byte{' '}, noteLen-1-len(b))...)
	h.f.WriteAt(append(b, '\n'), 0)
}

func (h *held) Close() error {
	if h.f != nil {
		return h.f.Close()
	}
	memLocksMu.Lock()
	delete(memLocks, h.key)
	memLocksMu.Unlock()
	return nil
}

// baseFS is the file system fsys wraps (an error-injecting layer over the
// real one locks like the real one), or fsys itself.
func baseFS(fsys vfs.FS) vfs.FS {
	for {
		u, ok := fsys.(interface{ Unwrap() vfs.FS })
		if !ok {
			return fsys
		}
		fsys = u.Unwrap()
	}
}

// lock takes the replica lock name, waiting up to wait for a holder to let
// go, and notes the holder as who. A refusal wraps ErrLocked and says what
// the holder is doing.
func lock(ctx context.Context, fsys vfs.FS, name, who string, wait time.Duration) (*held, error) {
	deadline := time.Now().Add(wait)
	for {
		h, err := tryLock(fsys, name)
		if err == nil {
			h.note(who)
			return h, nil
		}
		if !errors.Is(err, ErrLocked) || !time.Now().Before(deadline) {
			return nil, err
		}
		if sleepCtx(ctx, min(lockPoll, time.Until(deadline)+time.Millisecond)) != nil {
			return nil, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func tryLock(fsys vfs.FS, name string) (*held, error) {
	if baseFS(fsys) == vfs.Default {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open lock %s: %w (%w)", name, err, ErrStorage)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			defer f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, lockedError(name, readNote(f))
			}
			return nil, fmt.Errorf("lock %s: %w (%w)", name, err, ErrStorage)
		}
		return &held{f: f}, nil
	}
	k := fmt.Sprintf("%p:%s", fsys, name)
	memLocksMu.Lock()
	defer memLocksMu.Unlock()
	if n, ok := memLocks[k]; ok {
		return nil, lockedError(name, n)
	}
	memLocks[k] = ""
	return &held{key: k}, nil
}

func readNote(f *os.File) string {
	b := make([]byte, noteLen)
	n, _ := f.ReadAt(b, 0)
	return strings.TrimSpace(string(bytes.ToValidUTF8(bytes.TrimRight(b[:n], "\x00"), nil)))
}

func lockedError(name, note string) error {
	if note == "" {
		// A holder that says nothing: an older drsync, or another tool.
		note = "held by a process that does not say what it does"
	}
	return fmt.Errorf("%s: %w: %s", name, ErrLocked, note)
}

// CheckUnlocked reports ErrLocked if a process holds the replica in dir
// (a receiver applying an epoch, a verify run), without taking or
// changing anything; the error says what the holder is doing. The answer
// may be stale as soon as it is returned; it is for checks that refuse
// early, such as a failover's dry run.
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
			return lockedError(name, readNote(f))
		}
		return fmt.Errorf("lock %s: %w (%w)", name, err, ErrStorage)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// checkUnlocked is CheckUnlocked for the replica in dir on fsys: a
// replica on another file system (tests) is locked in memory.
func checkUnlocked(fsys vfs.FS, dir string) error {
	if baseFS(fsys) == vfs.Default {
		return CheckUnlocked(dir)
	}
	name := dir + "/LOCK"
	memLocksMu.Lock()
	defer memLocksMu.Unlock()
	if n, ok := memLocks[fmt.Sprintf("%p:%s", fsys, name)]; ok {
		return lockedError(name, n)
	}
	return nil
}

// WaitUnlocked is CheckUnlocked, waiting up to wait (or until ctx ends)
// for a holder to let go: a receiver finishing the apply of an epoch, or
// one that lets go while its sender is silent.
func WaitUnlocked(ctx context.Context, dir string, wait time.Duration) error {
	return waitUnlocked(ctx, vfs.Default, dir, wait)
}

func waitUnlocked(ctx context.Context, fsys vfs.FS, dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := checkUnlocked(fsys, dir)
		if !errors.Is(err, ErrLocked) || !time.Now().Before(deadline) {
			return err
		}
		if sleepCtx(ctx, min(lockPoll, time.Until(deadline)+time.Millisecond)) != nil {
			return err
		}
	}
}
