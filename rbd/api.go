package rbd

// Pool is an open RADOS pool (an I/O context): its RBD images and its
// plain RADOS objects. Implementations are safe for concurrent use.
type Pool interface {
	// Name is the pool's name.
	Name() string
	// CreateImage creates an image of size bytes with the cluster's
	// default features (layering and exclusive-lock are needed: clones
	// and Acquire).
	CreateImage(name string, size uint64) error
	RemoveImage(name string) error
	ListImages() ([]string, error)
	// OpenImage opens an image at its head (snap "") or read-only at a
	// snapshot.
	OpenImage(name, snap string) (Image, error)
	// Clone makes child a copy-on-write clone of parent@snap, which must
	// be protected.
	Clone(parent, snap, child string) error
	// WriteObject replaces a RADOS object's content whole: atomically,
	// readers see the old content or the new one.
	WriteObject(oid string, data []byte) error
	ReadObject(oid string) ([]byte, error)
	RemoveObject(oid string) error
	Close()
}

// Image is an open RBD image (or a snapshot of one, read-only).
type Image interface {
	Name() string
	Size() (uint64, error)
	Resize(size uint64) error
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// WriteZeroes makes n bytes at off read as zeros, deallocating
	// whole objects where it can.
	WriteZeroes(off, n uint64) error
	// Flush makes every completed write durable.
	Flush() error

	CreateSnap(name string) error
	RemoveSnap(name string) error
	Snaps() ([]Snap, error)
	ProtectSnap(name string) error
	UnprotectSnap(name string) error
	RollbackSnap(name string) error

	// Acquire takes the image's exclusive lock and keeps it until
	// Release or Close: another live client's Acquire fails with
	// ErrLocked; a dead client's lock (its watch expired) is broken and
	// the dead client blocklisted, so it can never write again.
	Acquire() error
	Release() error
	// Owners lists the clients holding the exclusive lock.
	Owners() ([]string, error)
	// BreakLock breaks owner's exclusive lock (and blocklists it).
	BreakLock(owner string) error

	// Metadata reads and sets the image's key/value metadata.
	Metadata(key string) (string, error)
	SetMetadata(key, value string) error

	Close() error
}
