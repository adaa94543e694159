package replica

// CloneOptions say which epoch a takeover runs from as clones, and under
// which name.
type CloneOptions struct {
	// Epoch is the committed epoch or a retained recovery point.
	Epoch uint64
	// Name tells these clones apart from others of the same replica
	// ("failover", "drill"); Store.RemoveClones takes it.
	Name string
	// Keep selects the targets a VM writes to (its disks): they are
	// cloned. The others are read where they are; a store may snapshot
	// a RAM target Keep selects instead, so that it reads as the epoch
	// while the guest runs (a lazy takeover).
	Keep func(TargetEntry) bool
	// Replace removes clones of the same name an earlier run left (a
	// drill's, which are disposable); without it they are refused with an
	// error wrapping fs.ErrExist, since a failed-over VM may have written
	// to them.
	Replace bool
}

// Cloner is a Handle whose epochs a VM runs from as copy-on-write clones
// inside the store itself (an RBD store: a clone of each image's
// snapshot), rather than as files on the DR host that overlays are
// written over. The clones are the running VM's disks: their Location is
// opened read-write. The targets that are not cloned (RAM) are read
// through OpenTarget and are not local files.
type Cloner interface {
	Clone(o CloneOptions) (Image, error)
}

// CloneRemover is a Store that can remove a VM's clones of one name and
// whatever the store keeps for them (snapshots, their protection), so
// that a drill leaves nothing behind.
type CloneRemover interface {
	RemoveClones(vm, name string) error
}
