package vfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The zero-writing fallback of PunchHole only runs on file systems without
// hole punching, so exercise it directly.
func TestWriteZerosFallback(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{0xaa}, 200_000)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	of := &osFile{f}
	if err := of.writeZeros(1000, 150_000); err != nil {
		t.Fatal(err)
	}
	// Past EOF nothing may be written.
	if err := of.writeZeros(199_990, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := of.writeZeros(300_000, 10); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(data)) {
		t.Fatalf("size %d, want %d", fi.Size(), len(data))
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[1000:151_000])
	clear(want[199_990:])
	if !bytes.Equal(got, want) {
		t.Error("contents differ from expected zeroing")
	}
}
