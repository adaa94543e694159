package heapprofile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Write leaves a gzipped pprof profile and no temporary file; a path that
// cannot be written is an error naming the profile.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "heap")
	if err := Write(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Errorf("the profile is not gzipped pprof: % x", b[:min(len(b), 8)])
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	if err := Write(filepath.Join(dir, "missing", "heap")); err == nil {
		t.Error("a profile into a missing directory: no error")
	}
}
