// Package vfstest is a conformance suite for implementations of vfs.FS.
//
// Each implementation's tests call Run; the suite pins down the behaviour
// the rest of the code base may rely on, whatever FS it runs on.
package vfstest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/vfs"
)

// Run runs the suite. newFS is called once per subtest and returns a fresh
// FS and an existing, empty directory in it that the subtest may use.
func Run(t *testing.T, newFS func(t *testing.T) (fsys vfs.FS, root string)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"CreateWriteRead", testCreateWriteRead},
		{"CreateTruncates", testCreateTruncates},
		{"CreateOnDirectory", testCreateOnDirectory},
		{"SequentialIO", testSequentialIO},
		{"ReadAtEOF", testReadAtEOF},
		{"WriteAtSparse", testWriteAtSparse},
		{"TruncateGrowShrink", testTruncateGrowShrink},
		{"LargeSparseFile", testLargeSparseFile},
		{"PunchHole", testPunchHole},
		{"Allocate", testAllocate},
		{"OpenReadOnly", testOpenReadOnly},
		{"OpenReadWrite", testOpenReadWrite},
		{"OpenDirectory", testOpenDirectory},
		{"NotExist", testNotExist},
		{"RenameReplaces", testRenameReplaces},
		{"RenameOpenFile", testRenameOpenFile},
		{"RenameAcrossDirs", testRenameAcrossDirs},
		{"Remove", testRemove},
		{"RemoveAll", testRemoveAll},
		{"MkdirAll", testMkdirAll},
		{"List", testList},
		{"Stat", testStat},
		{"Sync", testSync},
		{"UseAfterClose", testUseAfterClose},
		{"Concurrent", testConcurrent},
		{"Chmod", testChmod},
		{"LockExclusive", testLockExclusive},
		{"LockNote", testLockNote},
		{"LockErrors", testLockErrors},
		{"CheckUnlocked", testCheckUnlocked},
		{"WriteFileDurable", testWriteFileDurable},
		{"WriteFileAtomic", testWriteFileAtomic},
		{"MkdirAllDurable", testMkdirAllDurable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fsys, root := newFS(t)
			tc.fn(t, &suite{fs: fsys, root: root})
		})
	}
}

type suite struct {
	fs   vfs.FS
	root string
}

func (s *suite) path(elem ...string) string {
	return path.Join(append([]string{s.root}, elem...)...)
}

func (s *suite) create(t *testing.T, name string, data []byte) {
	t.Helper()
	f, err := s.fs.Create(name)
	if err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("Write(%q): %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close(%q): %v", name, err)
	}
}

func (s *suite) read(t *testing.T, name string) []byte {
	t.Helper()
	f, err := s.fs.Open(name)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("ReadAll(%q): %v", name, err)
	}
	return b
}

func (s *suite) size(t *testing.T, name string) int64 {
	t.Helper()
	fi, err := s.fs.Stat(name)
	if err != nil {
		t.Fatalf("Stat(%q): %v", name, err)
	}
	return fi.Size()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// file checks the result of opening name and closes the file when the test
// ends.
func file(t *testing.T, name string, f vfs.File, err error) vfs.File {
	t.Helper()
	if err != nil {
		t.Fatalf("opening %q: %v", name, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func (s *suite) createFile(t *testing.T, name string) vfs.File {
	t.Helper()
	f, err := s.fs.Create(name)
	return file(t, name, f, err)
}

func (s *suite) openFile(t *testing.T, name string) vfs.File {
	t.Helper()
	f, err := s.fs.Open(name)
	return file(t, name, f, err)
}

func (s *suite) openRW(t *testing.T, name string) vfs.File {
	t.Helper()
	f, err := s.fs.OpenReadWrite(name)
	return file(t, name, f, err)
}

func wantNotExist(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: got %v, want an error matching fs.ErrNotExist", what, err)
	}
}

// pattern returns n bytes that differ from their neighbours and from zero.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) + seed | 1
	}
	return b
}

func readAt(t *testing.T, f vfs.File, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
	}
	return b
}

func wantZeros(t *testing.T, what string, b []byte) {
	t.Helper()
	for i, c := range b {
		if c != 0 {
			t.Errorf("%s: byte %d is %#x, want zero", what, i, c)
			return
		}
	}
}

func testCreateWriteRead(t *testing.T, s *suite) {
	name := s.path("a")
	s.create(t, name, []byte("hello, world"))
	if got := s.read(t, name); string(got) != "hello, world" {
		t.Errorf("read %q", got)
	}
	if got := s.size(t, name); got != 12 {
		t.Errorf("size %d, want 12", got)
	}
}

func testCreateTruncates(t *testing.T, s *suite) {
	name := s.path("a")
	s.create(t, name, pattern(100_000, 1))
	s.create(t, name, []byte("short"))
	if got := s.read(t, name); string(got) != "short" {
		t.Errorf("after re-Create read %q", got)
	}
	f := s.createFile(t, name)
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != 0 {
		t.Errorf("Create left size %d", fi.Size())
	}
}

func testCreateOnDirectory(t *testing.T, s *suite) {
	must(t, s.fs.MkdirAll(s.path("d"), 0o755))
	if f, err := s.fs.Create(s.path("d")); err == nil {
		f.Close()
		t.Error("Create on a directory succeeded")
	}
	if f, err := s.fs.Create(s.path("missing", "a")); err == nil {
		f.Close()
		t.Error("Create in a missing directory succeeded")
	} else {
		wantNotExist(t, "Create in missing dir", err)
	}
}

func testSequentialIO(t *testing.T, s *suite) {
	name := s.path("a")
	f := s.createFile(t, name)
	for _, p := range []string{"ab", "cd", "ef"} {
		n, err := f.Write([]byte(p))
		if err != nil || n != len(p) {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	must(t, f.Close())

	r := s.openFile(t, name)
	buf := make([]byte, 4)
	n, err := io.ReadFull(r, buf)
	if err != nil || string(buf[:n]) != "abcd" {
		t.Fatalf("first read %q, %v", buf[:n], err)
	}
	n, err = r.Read(buf)
	if err != nil || string(buf[:n]) != "ef" {
		t.Fatalf("second read %q, %v", buf[:n], err)
	}
	if n, err = r.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read at EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

func testReadAtEOF(t *testing.T, s *suite) {
	name := s.path("a")
	s.create(t, name, []byte("0123456789"))
	f := s.openFile(t, name)
	buf := make([]byte, 4)

	if n, err := f.ReadAt(buf, 2); n != 4 || err != nil || string(buf) != "2345" {
		t.Errorf("ReadAt(2) = %d, %v, %q", n, err, buf[:n])
	}
	if n, err := f.ReadAt(buf, 6); n != 4 || (err != nil && err != io.EOF) || string(buf) != "6789" {
		t.Errorf("ReadAt(6) = %d, %v, %q", n, err, buf[:n])
	}
	if n, err := f.ReadAt(buf, 8); n != 2 || err != io.EOF || string(buf[:n]) != "89" {
		t.Errorf("ReadAt(8) = %d, %v, %q; want 2, io.EOF", n, err, buf[:n])
	}
	if n, err := f.ReadAt(buf, 10); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(10) = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := f.ReadAt(buf, 1<<40); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(1<<40) = %d, %v; want 0, io.EOF", n, err)
	}
	if _, err := f.ReadAt(buf, -1); err == nil {
		t.Error("ReadAt(-1) succeeded")
	}
}

func testWriteAtSparse(t *testing.T, s *suite) {
	f := s.createFile(t, s.path("a"))
	const off = 1<<20 + 7
	data := pattern(100_000, 3)
	if n, err := f.WriteAt(data, off); n != len(data) || err != nil {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != off+int64(len(data)) {
		t.Errorf("size %d, want %d", fi.Size(), off+len(data))
	}
	wantZeros(t, "gap", readAt(t, f, 0, off))
	if got := readAt(t, f, off, len(data)); !bytes.Equal(got, data) {
		t.Error("data written at offset reads back differently")
	}
	if _, err := f.WriteAt([]byte("x"), -1); err == nil {
		t.Error("WriteAt(-1) succeeded")
	}
}

func testTruncateGrowShrink(t *testing.T, s *suite) {
	f := s.createFile(t, s.path("a"))
	data := pattern(100_000, 5)
	_, err := f.Write(data)
	must(t, err)
	must(t, f.Truncate(1000))
	if fi, _ := f.Stat(); fi.Size() != 1000 {
		t.Errorf("after shrink size %d", fi.Size())
	}
	must(t, f.Truncate(300_000))
	if fi, _ := f.Stat(); fi.Size() != 300_000 {
		t.Errorf("after grow size %d", fi.Size())
	}
	if got := readAt(t, f, 0, 1000); !bytes.Equal(got, data[:1000]) {
		t.Error("kept prefix changed")
	}
	wantZeros(t, "regrown tail", readAt(t, f, 1000, 299_000))
	if err := f.Truncate(-1); err == nil {
		t.Error("Truncate(-1) succeeded")
	}
}

func testLargeSparseFile(t *testing.T, s *suite) {
	const size = 1 << 30
	f := s.createFile(t, s.path("image"))
	must(t, f.Truncate(size))
	if fi, _ := f.Stat(); fi.Size() != size {
		t.Fatalf("size %d, want %d", fi.Size(), size)
	}
	wantZeros(t, "middle of sparse file", readAt(t, f, 700<<20, 64<<10))
	_, err := f.WriteAt([]byte("tail"), size-4)
	must(t, err)
	if got := readAt(t, f, size-8, 8); string(got) != "\x00\x00\x00\x00tail" {
		t.Errorf("tail reads %q", got)
	}
	if fi, _ := f.Stat(); fi.Size() != size {
		t.Errorf("size after tail write %d", fi.Size())
	}
}

func testPunchHole(t *testing.T, s *suite) {
	f := s.createFile(t, s.path("a"))
	data := pattern(3<<16+123, 7)
	_, err := f.Write(data)
	must(t, err)
	size := int64(len(data))

	// Unaligned on both ends, spanning whole blocks in between.
	const off, n = 1000, 150_000
	must(t, f.PunchHole(off, n))
	got := readAt(t, f, 0, len(data))
	if !bytes.Equal(got[:off], data[:off]) || !bytes.Equal(got[off+n:], data[off+n:]) {
		t.Error("punching changed bytes outside the hole")
	}
	wantZeros(t, "hole", got[off:off+n])
	if fi, _ := f.Stat(); fi.Size() != size {
		t.Errorf("size %d after punch, want %d", fi.Size(), size)
	}

	// A hole reaching past EOF keeps the size too.
	must(t, f.PunchHole(size-10, 1<<20))
	if fi, _ := f.Stat(); fi.Size() != size {
		t.Errorf("size %d after punch past EOF, want %d", fi.Size(), size)
	}
	wantZeros(t, "tail hole", readAt(t, f, size-10, 10))
	must(t, f.PunchHole(0, 0))

	// The hole is writable again.
	_, err = f.WriteAt([]byte("back"), off+10)
	must(t, err)
	if got := readAt(t, f, off+10, 4); string(got) != "back" {
		t.Errorf("write into hole reads %q", got)
	}
}

func testAllocate(t *testing.T, s *suite) {
	f := s.createFile(t, s.path("a"))
	data := pattern(100_000, 9)
	_, err := f.Write(data)
	must(t, err)
	err = f.Allocate(0, 1<<20)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("Allocate unsupported here: %v", err)
	}
	must(t, err)
	if fi, _ := f.Stat(); fi.Size() != int64(len(data)) {
		t.Errorf("size %d after Allocate, want %d", fi.Size(), len(data))
	}
	if got := readAt(t, f, 0, len(data)); !bytes.Equal(got, data) {
		t.Error("Allocate changed contents")
	}
	must(t, f.Allocate(50, 0))

	g := s.createFile(t, s.path("b"))
	must(t, g.Allocate(4096, 1<<20))
	if fi, _ := g.Stat(); fi.Size() != 0 {
		t.Errorf("Allocate on empty file set size %d", fi.Size())
	}
	_, err = g.WriteAt([]byte("in"), 8192)
	must(t, err)
	got := readAt(t, g, 0, 8194)
	wantZeros(t, "before write", got[:8192])
	if string(got[8192:]) != "in" {
		t.Errorf("write into reserved range reads %q", got[8192:])
	}
}

func testOpenReadOnly(t *testing.T, s *suite) {
	name := s.path("a")
	s.create(t, name, []byte("data"))
	f := s.openFile(t, name)
	if _, err := f.Write([]byte("x")); err == nil {
		t.Error("Write on read-only file succeeded")
	}
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Error("WriteAt on read-only file succeeded")
	}
	if err := f.Truncate(0); err == nil {
		t.Error("Truncate on read-only file succeeded")
	}
	if got := s.read(t, name); string(got) != "data" {
		t.Errorf("contents changed to %q", got)
	}
}

func testOpenReadWrite(t *testing.T, s *suite) {
	name := s.path("a")
	f := s.openRW(t, name)
	if fi, err := f.Stat(); err != nil || fi.Size() != 0 {
		t.Fatalf("new file: %v, %v", fi, err)
	}
	_, err := f.Write([]byte("first"))
	must(t, err)
	must(t, f.Close())

	g := s.openRW(t, name)
	if got := readAt(t, g, 0, 5); string(got) != "first" {
		t.Errorf("reopen lost contents: %q", got)
	}
	_, err = g.WriteAt([]byte("F"), 0)
	must(t, err)
	must(t, g.Close())
	if got := s.read(t, name); string(got) != "First" {
		t.Errorf("read %q", got)
	}
}

func testOpenDirectory(t *testing.T, s *suite) {
	dir := s.path("d")
	must(t, s.fs.MkdirAll(dir, 0o755))
	f := s.openFile(t, dir)
	fi, err := f.Stat()
	must(t, err)
	if !fi.IsDir() {
		t.Error("Stat of an open directory: not a directory")
	}
	must(t, f.Sync())
	if f, err := s.fs.OpenReadWrite(dir); err == nil {
		f.Close()
		t.Error("OpenReadWrite of a directory succeeded")
	}
}

func testNotExist(t *testing.T, s *suite) {
	missing := s.path("missing")
	_, err := s.fs.Open(missing)
	wantNotExist(t, "Open", err)
	_, err = s.fs.Open(s.path("missing", "a"))
	wantNotExist(t, "Open in missing dir", err)
	_, err = s.fs.Stat(missing)
	wantNotExist(t, "Stat", err)
	wantNotExist(t, "Remove", s.fs.Remove(missing))
	wantNotExist(t, "Rename", s.fs.Rename(missing, s.path("b")))
	_, err = s.fs.List(missing)
	wantNotExist(t, "List", err)
	if err := s.fs.SyncDir(missing); err == nil {
		t.Error("SyncDir of a missing directory succeeded")
	}
}

func testRenameReplaces(t *testing.T, s *suite) {
	a, b := s.path("a"), s.path("b")
	s.create(t, a, []byte("new"))
	s.create(t, b, []byte("old contents"))
	must(t, s.fs.Rename(a, b))
	if got := s.read(t, b); string(got) != "new" {
		t.Errorf("target reads %q", got)
	}
	_, err := s.fs.Stat(a)
	wantNotExist(t, "Stat of rename source", err)
	names, err := s.fs.List(s.root)
	must(t, err)
	if len(names) != 1 || names[0] != "b" {
		t.Errorf("List = %q, want [b]", names)
	}
}

func testRenameOpenFile(t *testing.T, s *suite) {
	a, b := s.path("a"), s.path("b")
	f := s.createFile(t, a)
	_, err := f.Write([]byte("before"))
	must(t, err)
	must(t, s.fs.Rename(a, b))
	_, err = f.Write([]byte(" after"))
	must(t, err)
	must(t, f.Close())
	if got := s.read(t, b); string(got) != "before after" {
		t.Errorf("renamed file reads %q", got)
	}
}

func testRenameAcrossDirs(t *testing.T, s *suite) {
	must(t, s.fs.MkdirAll(s.path("x"), 0o755))
	must(t, s.fs.MkdirAll(s.path("y"), 0o755))
	s.create(t, s.path("x", "f"), []byte("moved"))
	must(t, s.fs.Rename(s.path("x", "f"), s.path("y", "g")))
	if got := s.read(t, s.path("y", "g")); string(got) != "moved" {
		t.Errorf("read %q", got)
	}
	// Directories move with their contents.
	must(t, s.fs.Rename(s.path("y"), s.path("z")))
	if got := s.read(t, s.path("z", "g")); string(got) != "moved" {
		t.Errorf("read after dir rename %q", got)
	}
}

func testRemove(t *testing.T, s *suite) {
	f, d := s.path("f"), s.path("d")
	s.create(t, f, []byte("x"))
	must(t, s.fs.MkdirAll(d, 0o755))
	s.create(t, s.path("d", "inner"), nil)
	if err := s.fs.Remove(d); err == nil {
		t.Error("Remove of a non-empty directory succeeded")
	}
	must(t, s.fs.Remove(f))
	must(t, s.fs.Remove(s.path("d", "inner")))
	must(t, s.fs.Remove(d))
	names, err := s.fs.List(s.root)
	must(t, err)
	if len(names) != 0 {
		t.Errorf("List after removes = %q", names)
	}
}

func testRemoveAll(t *testing.T, s *suite) {
	must(t, s.fs.MkdirAll(s.path("t", "a", "b"), 0o755))
	s.create(t, s.path("t", "a", "b", "f"), []byte("x"))
	s.create(t, s.path("t", "g"), []byte("y"))
	must(t, s.fs.RemoveAll(s.path("t")))
	_, err := s.fs.Stat(s.path("t"))
	wantNotExist(t, "Stat of removed tree", err)
	must(t, s.fs.RemoveAll(s.path("t")))
	must(t, s.fs.RemoveAll(s.path("missing", "deeper")))
	s.create(t, s.path("file"), nil)
	must(t, s.fs.RemoveAll(s.path("file")))
}

func testMkdirAll(t *testing.T, s *suite) {
	d := s.path("a", "b", "c")
	must(t, s.fs.MkdirAll(d, 0o755))
	must(t, s.fs.MkdirAll(d, 0o755))
	for _, p := range []string{s.path("a"), s.path("a", "b"), d} {
		fi, err := s.fs.Stat(p)
		if err != nil || !fi.IsDir() {
			t.Errorf("Stat(%q) = %v, %v; want a directory", p, fi, err)
		}
	}
	s.create(t, s.path("a", "file"), nil)
	if err := s.fs.MkdirAll(s.path("a", "file", "x"), 0o755); err == nil {
		t.Error("MkdirAll through a file succeeded")
	}
	if err := s.fs.MkdirAll(s.path("a", "file"), 0o755); err == nil {
		t.Error("MkdirAll over a file succeeded")
	}
}

func testList(t *testing.T, s *suite) {
	for _, n := range []string{"m", "b", "z", "a10", "a2"} {
		s.create(t, s.path(n), nil)
	}
	must(t, s.fs.MkdirAll(s.path("dir"), 0o755))
	s.create(t, s.path("dir", "nested"), nil)
	names, err := s.fs.List(s.root)
	must(t, err)
	want := []string{"a10", "a2", "b", "dir", "m", "z"}
	if len(names) != len(want) {
		t.Fatalf("List = %q, want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("List = %q, want %q", names, want)
		}
	}
	must(t, s.fs.MkdirAll(s.path("empty"), 0o755))
	if names, err := s.fs.List(s.path("empty")); err != nil || len(names) != 0 {
		t.Errorf("List(empty) = %q, %v", names, err)
	}
	if _, err := s.fs.List(s.path("m")); err == nil {
		t.Error("List of a file succeeded")
	}
}

func testStat(t *testing.T, s *suite) {
	name := s.path("a")
	f := s.createFile(t, name)
	_, err := f.Write(pattern(12345, 0))
	must(t, err)
	fi, err := s.fs.Stat(name)
	must(t, err)
	if fi.Name() != "a" || fi.Size() != 12345 || fi.IsDir() || !fi.Mode().IsRegular() {
		t.Errorf("Stat = name %q size %d mode %v", fi.Name(), fi.Size(), fi.Mode())
	}
	fi, err = f.Stat()
	must(t, err)
	if fi.Name() != "a" || fi.Size() != 12345 {
		t.Errorf("File.Stat = name %q size %d", fi.Name(), fi.Size())
	}
	fi, err = s.fs.Stat(s.root)
	must(t, err)
	if !fi.IsDir() {
		t.Error("root is not a directory")
	}
}

func testSync(t *testing.T, s *suite) {
	must(t, s.fs.MkdirAll(s.path("d"), 0o755))
	f := s.createFile(t, s.path("d", "f"))
	_, err := f.Write([]byte("x"))
	must(t, err)
	must(t, f.Sync())
	must(t, s.fs.SyncDir(s.path("d")))
	must(t, s.fs.SyncDir(s.root))
	r := s.openFile(t, s.path("d", "f"))
	must(t, r.Sync())
}

func testUseAfterClose(t *testing.T, s *suite) {
	f, err := s.fs.Create(s.path("a"))
	must(t, err)
	must(t, f.Close())
	checks := map[string]error{
		"Write":    func() error { _, err := f.Write([]byte("x")); return err }(),
		"WriteAt":  func() error { _, err := f.WriteAt([]byte("x"), 0); return err }(),
		"Read":     func() error { _, err := f.Read(make([]byte, 1)); return err }(),
		"ReadAt":   func() error { _, err := f.ReadAt(make([]byte, 1), 0); return err }(),
		"Sync":     f.Sync(),
		"Truncate": f.Truncate(0),
		"Close":    f.Close(),
	}
	for op, err := range checks {
		if !errors.Is(err, fs.ErrClosed) {
			t.Errorf("%s after Close: %v, want an error matching fs.ErrClosed", op, err)
		}
	}
}

// testConcurrent writes and reads disjoint ranges of one file from several
// goroutines; under -race it checks that implementations lock correctly.
func testConcurrent(t *testing.T, s *suite) {
	const workers, blocks, bs = 4, 16, 10_000
	name := s.path("a")
	f := s.createFile(t, name)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for b := range blocks {
				off := int64((b*workers + w) * bs)
				data := pattern(bs, byte(w))
				if _, err := f.WriteAt(data, off); err != nil {
					errs <- err
					return
				}
				got := make([]byte, bs)
				if _, err := f.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- errors.New("read back different data")
					return
				}
				if _, err := s.fs.Stat(name); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.size(t, name); got != workers*blocks*bs {
		t.Errorf("size %d, want %d", got, workers*blocks*bs)
	}
}

func testChmod(t *testing.T, s *suite) {
	f := s.createFile(t, s.path("a"))
	for _, mode := range []os.FileMode{0o640, 0o600, 0o644} {
		must(t, f.Chmod(mode))
		fi, err := s.fs.Stat(s.path("a"))
		must(t, err)
		if fi.Mode().Perm() != mode || !fi.Mode().IsRegular() {
			t.Errorf("after Chmod(%v): mode %v", mode, fi.Mode())
		}
	}
}

func wantLocked(t *testing.T, what string, err error, note string) {
	t.Helper()
	var le *vfs.LockedError
	if !errors.As(err, &le) || !errors.Is(err, vfs.ErrLocked) {
		t.Errorf("%s: got %v, want a *vfs.LockedError matching vfs.ErrLocked", what, err)
		return
	}
	if le.Note != note {
		t.Errorf("%s: holder's note %q, want %q", what, le.Note, note)
	}
}

// testLockExclusive: a lock excludes every other Lock call on the file,
// from this process too, until it is released.
func testLockExclusive(t *testing.T, s *suite) {
	name := s.path("LOCK")
	l, err := s.fs.Lock(name, "first")
	must(t, err)
	if _, err := s.fs.Stat(name); err != nil {
		t.Errorf("Lock did not create the lock file: %v", err)
	}
	_, err = s.fs.Lock(name, "second")
	wantLocked(t, "second Lock", err, "first")
	// Another file is another lock.
	other, err := s.fs.Lock(s.path("OTHER"), "other")
	must(t, err)
	must(t, other.Unlock())

	must(t, l.Unlock())
	must(t, l.Unlock()) // a second Unlock does nothing
	l2, err := s.fs.Lock(name, "second")
	if err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	_, err = s.fs.Lock(name, "third")
	wantLocked(t, "third Lock", err, "second")
	// A stale Unlock of the first holder must not release the second's.
	must(t, l.Unlock())
	_, err = s.fs.Lock(name, "third")
	wantLocked(t, "Lock after a stale Unlock", err, "second")
	must(t, l2.Unlock())
}

func testLockNote(t *testing.T, s *suite) {
	name := s.path("LOCK")
	l, err := s.fs.Lock(name, "a long note that the next one is shorter than")
	must(t, err)
	defer l.Unlock()
	for _, note := range []string{"applying epoch 7", "", strings.Repeat("x", 500)} {
		must(t, l.Note(note))
		_, err := s.fs.Lock(name, "other")
		var le *vfs.LockedError
		// Notes may be bounded, but what is kept is their start.
		if !errors.As(err, &le) || !strings.HasPrefix(note, le.Note) || len(le.Note) < min(len(note), 150) {
			t.Errorf("after Note(%.20q...): refusal %v", note, err)
		}
	}
	// Waiting: refused after the wait, with the note, and taken as soon
	// as the holder lets go.
	must(t, l.Note("busy"))
	start := time.Now()
	_, err = vfs.Lock(context.Background(), s.fs, name, "waiter", 50*time.Millisecond)
	wantLocked(t, "Lock with a wait", err, "busy")
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("refused after %v, before the wait was over", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = vfs.Lock(ctx, s.fs, name, "waiter", time.Hour)
	wantLocked(t, "Lock with an ended context", err, "busy")
	time.AfterFunc(30*time.Millisecond, func() { l.Unlock() })
	l2, err := vfs.Lock(context.Background(), s.fs, name, "waiter", time.Minute)
	if err != nil {
		t.Fatalf("waiting Lock: %v", err)
	}
	must(t, l2.Unlock())
}

func testLockErrors(t *testing.T, s *suite) {
	_, err := s.fs.Lock(s.path("missing", "LOCK"), "x")
	wantNotExist(t, "Lock in a missing directory", err)
	must(t, s.fs.MkdirAll(s.path("d"), 0o755))
	if l, err := s.fs.Lock(s.path("d"), "x"); err == nil {
		l.Unlock()
		t.Error("Lock on a directory succeeded")
	} else if errors.Is(err, vfs.ErrLocked) {
		t.Errorf("Lock on a directory: %v, want an error other than ErrLocked", err)
	}
}

func testCheckUnlocked(t *testing.T, s *suite) {
	name := s.path("LOCK")
	must(t, vfs.CheckUnlocked(s.fs, name))
	if _, err := s.fs.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckUnlocked created the lock file: %v", err)
	}
	l, err := s.fs.Lock(name, "holding")
	must(t, err)
	wantLocked(t, "CheckUnlocked while held", vfs.CheckUnlocked(s.fs, name), "holding")
	must(t, l.Unlock())
	must(t, vfs.CheckUnlocked(s.fs, name))
	// The check did not keep the lock.
	l, err = s.fs.Lock(name, "again")
	must(t, err)
	must(t, l.Unlock())
}

func testWriteFileDurable(t *testing.T, s *suite) {
	name := s.path("f")
	must(t, vfs.WriteFileDurable(s.fs, name, []byte("old contents"), 0o600))
	must(t, vfs.WriteFileDurable(s.fs, name, []byte("new"), 0o640))
	if got := s.read(t, name); string(got) != "new" {
		t.Errorf("read %q, want %q", got, "new")
	}
	fi, err := s.fs.Stat(name)
	must(t, err)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode())
	}
	names, err := s.fs.List(s.root)
	must(t, err)
	if len(names) != 1 || names[0] != "f" {
		t.Errorf("directory holds %q, want only the file", names)
	}
	err = vfs.WriteFileDurable(s.fs, s.path("missing", "f"), []byte("x"), 0o600)
	wantNotExist(t, "WriteFileDurable in a missing directory", err)
}

func testWriteFileAtomic(t *testing.T, s *suite) {
	name := s.path("f")
	must(t, vfs.WriteFileAtomic(s.fs, name, []byte("old contents"), 0o600))
	must(t, vfs.WriteFileAtomic(s.fs, name, []byte("new"), 0o600))
	if got := s.read(t, name); string(got) != "new" {
		t.Errorf("read %q, want %q", got, "new")
	}
	names, err := s.fs.List(s.root)
	must(t, err)
	if len(names) != 1 {
		t.Errorf("directory holds %q, want only the file", names)
	}
}

func testMkdirAllDurable(t *testing.T, s *suite) {
	dir := s.path("a", "b", "c")
	must(t, vfs.MkdirAllDurable(s.fs, dir, 0o750))
	must(t, vfs.MkdirAllDurable(s.fs, dir, 0o750)) // existing: fine
	fi, err := s.fs.Stat(dir)
	must(t, err)
	if !fi.IsDir() {
		t.Errorf("%s is not a directory", dir)
	}
	s.create(t, s.path("a", "file"), nil)
	if err := vfs.MkdirAllDurable(s.fs, s.path("a", "file", "d"), 0o750); err == nil {
		t.Error("MkdirAllDurable below a file succeeded")
	}
}
