package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
)

// The guard records what it did in the VM's state directory, but never
// brings back a state directory that was removed (with its VM, or by a
// test's cleanup) while the guard outlived the sender.
func TestRecordGuard(t *testing.T) {
	now := func() time.Time { return time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC) }
	dir := filepath.Join(t.TempDir(), "web-1")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := recordGuard(dir, now, livecut.GuardReport{Acted: true, Resumed: true, Gen: 7}, nil); err != nil {
		t.Fatal(err)
	}
	rec, err := ReadGuardRecord(dir)
	if err != nil || rec.Resumes != 1 || len(rec.Events) != 1 || rec.Events[0].Cut != 7 {
		t.Fatalf("record %+v, %v; want one resume of cut 7", rec, err)
	}
	gone := filepath.Join(t.TempDir(), "removed-vm")
	if err := recordGuard(gone, now, livecut.GuardReport{}, errors.New("no QEMU")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the guard's record brought back a removed state directory: %v", err)
	}
}
