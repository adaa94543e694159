package vfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"
)

// ErrLocked is matched by the error of a refused lock (see LockedError).
var ErrLocked = errors.New("locked")

// LockedError refuses a lock that another holder has.
type LockedError struct {
	Name string
	// Note is what the holder says it is doing; empty if it says nothing
	// (an older version, another tool).
	Note string
}

func (e *LockedError) Error() string {
	if e.Note == "" {
		return e.Name + " is locked"
	}
	return e.Name + " is locked: " + e.Note
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lockPoll is how often a waiting locker tries again.
const lockPoll = 20 * time.Millisecond

// Lock takes the lock name on fsys with FS.Lock, trying again for up to
// wait while another holder has it. If wait passes or ctx ends first, it
// returns the last refusal, which says what the holder is doing.
func Lock(ctx context.Context, fsys FS, name, note string, wait time.Duration) (Locked, error) {
	var l Locked
	if err := whileLocked(ctx, wait, func() (err error) { l, err = fsys.Lock(name, note); return err }); err != nil {
		return nil, err
	}
	return l, nil
}

// WaitUnlocked is CheckUnlocked, trying again for up to wait while another
// holder has the lock: it waits for the holder to let go without taking
// the lock.
func WaitUnlocked(ctx context.Context, fsys FS, name string, wait time.Duration) error {
	return whileLocked(ctx, wait, func() error { return CheckUnlocked(fsys, name) })
}

// whileLocked calls try until it succeeds or fails other than by a
// refusal, trying again for up to wait (or until ctx ends) while it is
// refused; it returns try's last error.
func whileLocked(ctx context.Context, wait time.Duration, try func() error) error {
	deadline := time.Now().Add(wait)
	for {
		err := try()
		if err == nil || !errors.Is(err, ErrLocked) || !time.Now().Before(deadline) {
			return err
		}
		if sleepCtx(ctx, min(lockPoll, time.Until(deadline)+time.Millisecond)) != nil {
			return err
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

// CheckUnlocked returns the holder's *LockedError if the lock name is
// held, without keeping it and without creating name: a missing lock file
// is an unheld lock. The answer may be stale as soon as it is returned;
// it is for checks that refuse early.
func CheckUnlocked(fsys FS, name string) error {
	if _, err := fsys.Stat(name); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	l, err := fsys.Lock(name, "")
	if err != nil {
		return err
	}
	return l.Unlock()
}

// noteLen is the fixed length notes are padded to in a lock file, so that
// rewriting one in place never leaves the tail of a longer one behind.
const noteLen = 200

// encodeNote pads note to noteLen bytes, newline included.
func encodeNote(note string) []byte {
	b := []byte(note)
	if len(b) > noteLen-1 {
		b = b[:noteLen-1]
	}
	b = append(b, bytes.Repeat([]byte{' '}, noteLen-1-len(b))...)
	return append(b, '\n')
}

// decodeNote reads a note written by encodeNote, or any short text
// another tool left in the file.
func decodeNote(b []byte) string {
	return strings.TrimSpace(string(bytes.ToValidUTF8(bytes.TrimRight(b, "\x00"), nil)))
}

// lockError wraps a failure to take a lock other than a refusal.
func lockError(name string, err error) error {
	return fmt.Errorf("lock %s: %w", name, err)
}
