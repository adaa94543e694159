package vfs

import (
	"io"
	"os"
)

// File is an open file. Writes are not durable until Sync returns nil.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.WriterAt
	io.Closer
	Sync() error
	Stat() (os.FileInfo, error)
	Truncate(size int64) error
	// Allocate reserves disk space for [off, off+n) without changing what the
	// range reads as and without changing the file size, so that later writes
	// there cannot fail for lack of space. Where the file system cannot
	// reserve space the error matches errors.ErrUnsupported.
	Allocate(off, n int64) error
	// PunchHole deallocates [off, off+n); the range reads as zeros afterwards
	// and the file size is unchanged.
	PunchHole(off, n int64) error
	// Chmod sets the permission bits, whatever the umask was at creation.
	Chmod(mode os.FileMode) error
}

// FS is the file system the replica and the sender's state live on. Every
// file operation of those packages goes through it, so that tests can inject
// failures (errorfs) and crashes (memfs).
type FS interface {
	// Create creates or truncates name, opened read-write.
	Create(name string) (File, error)
	// Open opens an existing file read-only.
	Open(name string) (File, error)
	// OpenReadWrite opens an existing file read-write, or creates it.
	OpenReadWrite(name string) (File, error)
	Remove(name string) error
	// RemoveAll removes a directory tree; a missing path is not an error.
	RemoveAll(name string) error
	// Rename atomically replaces newname with oldname.
	Rename(oldname, newname string) error
	MkdirAll(dir string, perm os.FileMode) error
	Stat(name string) (os.FileInfo, error)
	// List returns the names (not paths) of the entries of dir, sorted.
	List(dir string) ([]string, error)
	// SyncDir makes creations, renames and removals in dir durable.
	SyncDir(dir string) error
	// Lock takes an exclusive lock on the file name, creating it if it
	// does not exist, without waiting: if it is held (by this process or
	// another), the error is a *LockedError carrying the holder's note.
	// note says what the holder is doing, for whoever is refused. The
	// lock is released by Unlock or when the process ends; it does not
	// survive a crash. Use the package function Lock to wait for it.
	Lock(name, note string) (Locked, error)
}

// Locked is a lock taken with FS.Lock.
type Locked interface {
	// Note replaces what the holder says it is doing. Notes are
	// informational: one that cannot be recorded is not an error worth
	// stopping for, so callers may ignore the result.
	Note(note string) error
	// Unlock releases the lock. Further calls do nothing.
	Unlock() error
}
