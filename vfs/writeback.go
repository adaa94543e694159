package vfs

// StartWriteback asks that f's dirty data start going to disk now, so that
// a later Sync finds little left to write: a writer that fills a large file
// between syncs calls it every few megabytes (pebble's bytes-per-sync).
// It is a hint. It never makes anything durable, and files that cannot
// take it (memfs, errorfs's wrappers) ignore it, so its only error is the
// kernel's, which the next Sync reports again if it matters.
func StartWriteback(f File) error {
	if w, ok := f.(interface{ StartWriteback() error }); ok {
		return w.StartWriteback()
	}
	return nil
}
