// Package vfs is the file-system seam of drsync. The replica on the
// receiver and the sender's persistent state do all their file I/O through
// FS and File, never through package os, so that tests can substitute an
// in-memory file system, inject failures and simulate power loss.
//
// The package owns the interface, the implementation on the real OS
// (Default), and the few file sequences every writer needs and must get
// right: replacing a file durably (WriteFileDurable), or atomically only
// (WriteFileAtomic), creating directories durably (MkdirAllDurable), and
// the exclusive lock with its holder's note (FS.Lock, Lock,
// CheckUnlocked). It knows nothing about replicas, journals, epochs or the
// wire protocol: anything that needs to know what a file means belongs to
// the package that writes it.
//
// The rule for the rest of the code base: files go through vfs. Code that
// writes state opens, syncs, renames and locks through an FS it is given,
// and uses the helpers here rather than writing the sequences by hand, so
// that one implementation is tested against crashes and injected failures
// and every FS (memfs, errorfs over either) behaves like the real one.
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
// directory. WriteFileDurable does exactly that, checks every step's error
// and names the step in its own; MkdirAllDurable syncs each directory up
// to the root so that a new directory, and what goes into it, survives.
//
// # Locks
//
// FS.Lock takes an exclusive lock on a file without waiting; the package
// function Lock waits for it up to a limit. The holder records what it is
// doing (its note: "the receiver (pid 42) is applying epoch 7"), and
// whoever is refused gets a *LockedError carrying that note, so that an
// operator is told why rather than left to guess. On the real file system
// the lock is flock (other processes, and other opens in this one, are
// excluded; it dies with the process) and the note is kept at the start
// of the lock file; memfs keeps a lock table; errorfs passes locks on to
// the FS it wraps, so tests lock for real whatever the layering.
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
