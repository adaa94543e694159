// Package replica owns a VM's replica directory and the guarantee that it
// always holds exactly one committed epoch.
//
// Directory layout:
//
//	MANIFEST            committed epoch, cut time, targets and digests (JSON + "xxh64 <hex>" trailer)
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
// (decideRecovery) simply applies a committed journal again, keeps an
// uncommitted one for the sender to resume, and discards a stale one.
//
// Files are reached only through vfs.FS, which is how tests inject
// failures and power loss at every step. The package must not know about
// connections, senders or configuration.
package replica
