// Package replica owns a VM's replica directory and the guarantee that it
// always holds exactly one committed epoch.
//
// Directory layout:
//
//	MANIFEST            committed epoch, cut time, targets and digests, consistency-group tag if any, the receiver's keep_points (JSON + "xxh64 <hex>" trailer)
//	LOCK                flock held while the replica is open (writing or verifying)
//	journal             the staged epoch (package journal), absent when nothing is staged
//	disk-N.img, ram-N.img   sparse raw images, one per target
//	disk-N.bht, ram-N.bht   their block hash tables (package blockhash)
//	devstate-E.bin      the device-state blob of committed epoch E
//
// An epoch goes through three steps. Staging: each item is checked by a
// pure state machine (stage) against the manifest and appended to the
// journal. Commit: once every item is durable, the epoch digest matches and
// the predicted block tables match the sender's per-target digests, the
// space applying needs is reserved and the commit record is synced; from
// here on the epoch is committed. Apply: images, tables and the
// device-state file are written, synced, the manifest replaced atomically
// and the journal removed. Apply is idempotent, so recovery after a crash
// (package replica/recovery) simply applies a committed journal again, keeps an
// uncommitted one for the sender to resume, and discards a stale one.
//
// A new target (one the manifest does not name, so every target of a
// first epoch) is the exception to "images are written at apply": its
// image file is one no committed epoch uses, so its data and zero items
// are written into it as they are staged, beside the journal, and apply
// has nothing left to write for it (eager.go); page references between
// such images are applied as they arrive as well, unless an item staged
// after one changes what it read or wrote (early.go). The file becomes part of
// the replica only with the manifest written after the commit; a stage
// replaced or discarded empties or removes it, and after a restart the
// commit starts it empty and apply writes it from the journal.
//
// Its users (the receiver, a takeover, a runbook) reach replicas through the
// Store and Handle interfaces (store.go), not through this layout: the
// committed epoch is a typed Manifest (Disk, RAM), and an epoch to run is an
// Image whose targets are located as QEMU opens them (file names here,
// "rbd:pool/image@snap" for a store on Ceph RBD). FileStore, a directory per
// VM, is the first implementation. The interfaces are declared here rather
// than in a package of their own because their vocabulary (Manifest,
// TakeoverMark, Point, Report, the marker errors) is this package's and a
// FileStore method must return the interface type: a separate package would
// import this one and could not be imported by it. Another store lives in
// this package too, so that it shares the stage machine (stage.go) and the
// recovery rule (recovery.go); replicatest is the suite every store passes.
//
// An epoch cut by a consistency group carries its tag (vmspec.GroupCut)
// into the manifest, and so into each recovery point. Pruning points keeps
// what the group's newest complete group points need (groups.go reads the
// members' points; replica/grouppoint decides).
//
// Files are reached only through vfs.FS, which is how tests inject
// failures and power loss at every step. The package must not know about
// connections, senders or configuration.
package replica
