package replica

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/drsync/drsync/vfs"
)

// ErrLocked means another process or session holds the replica.
var ErrLocked = errors.New("replica is in use")

// Replicas are locked with the FS's lock (flock on the real file system),
// so a second receiver process (or a verify run) cannot write or read a
// replica while it is being applied.
//
// The holder says what it is doing in the lock's note ("the receiver (pid
// 42) is applying epoch 7"), so that whoever is refused the lock can tell
// the operator why, rather than guess.

// held is a taken replica lock.
type held struct {
	l vfs.Locked
}

// note records what the holder is doing. It is informational: a note
// that cannot be written is not an error.
func (h *held) note(s string) {
	if h == nil {
		return
	}
	h.l.Note(s)
}

func (h *held) Close() error { return h.l.Unlock() }

// lock takes the replica lock name, waiting up to wait for a holder to let
// go, and notes the holder as who. A refusal wraps ErrLocked and says what
// the holder is doing.
func lock(ctx context.Context, fsys vfs.FS, name, who string, wait time.Duration) (*held, error) {
	l, err := vfs.Lock(ctx, fsys, name, who, wait)
	if err != nil {
		return nil, lockFailed(name, err)
	}
	return &held{l: l}, nil
}

// lockFailed turns a refusal into ErrLocked saying what the holder does,
// and anything else into a storage error.
func lockFailed(name string, err error) error {
	var le *vfs.LockedError
	if !errors.As(err, &le) {
		return fmt.Errorf("%w (%w)", err, ErrStorage)
	}
	note := le.Note
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
func CheckUnlocked(dir string) error { return checkUnlocked(vfs.Default, dir) }

// checkUnlocked is CheckUnlocked for the replica in dir on fsys.
func checkUnlocked(fsys vfs.FS, dir string) error {
	name := path.Join(dir, "LOCK")
	if err := vfs.CheckUnlocked(fsys, name); err != nil {
		return lockFailed(name, err)
	}
	return nil
}

// baseFS is the file system under any wrappers (errorfs in tests): copies
// take the real file system's shortcuts only when they reach it.
func baseFS(fsys vfs.FS) vfs.FS {
	for {
		u, ok := fsys.(interface{ Unwrap() vfs.FS })
		if !ok {
			return fsys
		}
		fsys = u.Unwrap()
	}
}

// WaitUnlocked is CheckUnlocked, waiting up to wait (or until ctx ends)
// for a holder to let go: a receiver finishing the apply of an epoch, or
// one that lets go while its sender is silent.
func WaitUnlocked(ctx context.Context, dir string, wait time.Duration) error {
	return waitUnlocked(ctx, vfs.Default, dir, wait)
}

func waitUnlocked(ctx context.Context, fsys vfs.FS, dir string, wait time.Duration) error {
	name := path.Join(dir, "LOCK")
	if err := vfs.WaitUnlocked(ctx, fsys, name, wait); err != nil {
		return lockFailed(name, err)
	}
	return nil
}
