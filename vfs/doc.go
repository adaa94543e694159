// Package vfs is the file-system seam of drsync. The replica on the
// receiver and the sender's persistent state do all their file I/O through
// FS and File, never through package os, so that tests can substitute an
// in-memory file system, inject failures and simulate power loss.
//
// The package owns only the interface and the implementation on the real
// OS (Default). It knows nothing about replicas, journals, epochs or the
// wire protocol: anything that needs to know what a file means belongs to
// the package that writes it.
//
// # Durability
//
// Code written against FS must assume the durability model of a POSIX
// file system after power loss, which is what memfs.NewStrict enforces:
//
//   - Data written to a file is durable only once File.Sync returns nil.
//     Until then a crash may lose it, wholly or in part.
//   - Creating, renaming or removing a directory entry is durable only
//     once SyncDir of the directory holding it returns nil. A new file
//     whose data is synced but whose directory is not may vanish; a rename
//     into a synced directory from an unsynced one may leave the file
//     under both names.
//   - Rename replaces its target atomically: after a crash the target
//     holds either the old or the new file, never a mix.
//
// The usual pattern for replacing a file atomically is therefore: write a
// temporary file, Sync it, Close it, Rename it over the target, SyncDir the
// directory.
//
// # Sparse files
//
// Disk images are large and mostly unwritten. Truncate grows a file without
// allocating space, PunchHole gives space back and Allocate reserves it so
// that later writes cannot fail with ENOSPC. None of them changes what the
// file reads as outside the punched range, and neither PunchHole nor
// Allocate changes the size.
//
// # Errors
//
// Errors are *os.PathError (or *os.LinkError for Rename) wrapping their
// cause, so errors.Is(err, fs.ErrNotExist) and errors.Is(err,
// syscall.ENOSPC) work on every implementation.
package vfs
