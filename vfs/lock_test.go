package vfs_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
)

// WaitUnlocked waits for a holder to let go, without taking the lock, and
// gives up after wait with the holder's note.
func TestWaitUnlocked(t *testing.T) {
	tests := []struct {
		name    string
		held    bool
		release time.Duration // after this long; 0: never
		wait    time.Duration
		locked  bool
	}{
		{"no lock file", false, 0, 0, false},
		{"held for good", true, 0, 50 * time.Millisecond, true},
		// The margin is wide: the holder lets go long before the wait ends.
		{"let go while waiting", true, 50 * time.Millisecond, 10 * time.Second, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "LOCK")
			if tc.held {
				l, err := vfs.Default.Lock(name, "applying epoch 7")
				if err != nil {
					t.Fatal(err)
				}
				defer l.Unlock()
				if tc.release > 0 {
					time.AfterFunc(tc.release, func() { l.Unlock() })
				}
			}
			err := vfs.WaitUnlocked(context.Background(), vfs.Default, name, tc.wait)
			var le *vfs.LockedError
			if got := errors.As(err, &le); got != tc.locked || (got && le.Note != "applying epoch 7") {
				t.Fatalf("WaitUnlocked = %v, want locked %v with the holder's note", err, tc.locked)
			}
			if !tc.locked && err != nil {
				t.Fatal(err)
			}
		})
	}
}
