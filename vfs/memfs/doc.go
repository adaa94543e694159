// Package memfs is an in-memory vfs.FS for deterministic tests, above all
// crash tests.
//
// # Durability model
//
// A strict FS (NewStrict) keeps two states. For every file it tracks the
// current contents and the durable contents, the latter as of the file's
// last Sync. For every directory it tracks the current entries and the
// durable entries, the latter as of the directory's last SyncDir (or Sync
// on a handle opened on the directory). Crash returns a new FS built from
// the durable state alone, which is what a machine would find after power
// loss, and retires the old FS: it and its open files fail every operation
// with ErrCrashed from then on.
//
// The model is deliberately pessimistic: nothing unsynced survives, even
// though a real file system often keeps some of it. A node durable under
// two names (renamed out of an unsynced directory into a synced one)
// comes back as two independent files.
//
// A lax FS (New) treats every change as durable at once, so Crash only
// invalidates open handles. Use it where durability is not under test.
//
// # Storage
//
// Files are stored sparsely in chunks of ChunkSize bytes; unwritten ranges
// cost nothing and read as zeros, so a test can use a 1 GiB image with a
// few MiB written. Synced and current contents share unchanged chunks.
// Allocate reserves chunks without changing contents or size. With
// SetCapacity the total of allocated chunks is bounded and writes beyond it
// fail with an error wrapping syscall.ENOSPC.
//
// # Locks
//
// Lock keeps a table of held locks and their holders' notes, by file, so
// that it behaves as flock does on the real file system: a second Lock of
// the same file fails with a *vfs.LockedError, whichever layer (errorfs,
// say) it comes through. Locks are process state and do not survive Crash.
//
// An FS and its files are safe for concurrent use.
package memfs
