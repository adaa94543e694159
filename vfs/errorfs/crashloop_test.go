package errorfs_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"testing"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vfs/memfs"
)

// replace atomically replaces /CURRENT with data.
func replace(fsys vfs.FS, data string, syncFile bool) error {
	f, err := fsys.Create("/CURRENT.tmp")
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(data)); err != nil {
		f.Close()
		return err
	}
	if syncFile {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename("/CURRENT.tmp", "/CURRENT"); err != nil {
		return err
	}
	return fsys.SyncDir("/")
}

func readCurrent(fsys vfs.FS) (string, error) {
	f, err := fsys.Open("/CURRENT")
	if errors.Is(err, fs.ErrNotExist) {
		return "<missing>", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// crashLoop runs replace once per mutating operation, failing that
// operation and crashing right after, plus once without failure, and
// returns the runs whose crash image broke atomicity or durability.
func crashLoop(t *testing.T, syncFile bool) []string {
	setup := func() *memfs.FS {
		fsys := memfs.NewStrict()
		if err := replace(fsys, "old", true); err != nil {
			t.Fatal(err)
		}
		return fsys
	}
	var c errorfs.Counter
	if err := replace(errorfs.Wrap(setup(), errorfs.When(errorfs.Mutations(), &c)), "new", syncFile); err != nil {
		t.Fatal(err)
	}
	var bad []string
	for i := 0; i <= c.Count(); i++ {
		fsys := setup()
		idx := errorfs.OnIndex(i, nil)
		err := replace(errorfs.Wrap(fsys, errorfs.When(errorfs.Mutations(), idx)), "new", syncFile)
		if idx.Fired() != (err != nil) {
			t.Fatalf("run %d: fired %v but err %v", i, idx.Fired(), err)
		}
		got, rerr := readCurrent(fsys.Crash())
		if rerr != nil {
			t.Fatal(rerr)
		}
		switch {
		case got != "old" && got != "new":
			bad = append(bad, fmt.Sprintf("run %d: torn contents %q", i, got))
		case err == nil && got != "new":
			bad = append(bad, fmt.Sprintf("run %d: acknowledged write lost, got %q", i, got))
		}
	}
	return bad
}

func TestCrashLoop(t *testing.T) {
	if bad := crashLoop(t, true); len(bad) > 0 {
		t.Errorf("correct protocol fails: %q", bad)
	}
	// Leaving out the file sync must be caught: the rename becomes durable
	// before the data.
	if bad := crashLoop(t, false); len(bad) == 0 {
		t.Error("crash loop did not catch the missing file sync")
	}
}
