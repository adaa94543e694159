// Package rbdstore is a replica.Store on Ceph RBD: each disk and RAM block
// of a VM's replica is an RBD image, the manifest, block tables, device
// state and journal are whole RADOS objects (rbd.Pool.WriteObject replaces
// one atomically), and each retained recovery point is one RBD snapshot
// per image. It owns those names and the journal's object layout; the
// staging rules (replica.Stage), the manifest and the journal recovery
// rule (replica/recovery) are the file store's, reused.
//
// It must not know cgo or librbd: it works on the rbd.Pool and rbd.Image
// interfaces, so it builds without the ceph tag (rbd.Connect is what needs
// it) and tests wrap the pool with rbd/rbdfault.
//
// # Names
//
// Everything of VM vm is named P+vm+"."+X, P being Store.Prefix:
//
//	X                    kind        content
//	lock                 image 4 KiB its exclusive lock is the replica's lock;
//	                                 metadata drsync.holder says who holds it
//	manifest             object      the committed manifest (JSON, replica.Manifest)
//	disk-N, ram-N        image       a target's bytes; snapshot eE = epoch E
//	disk-N.bht.E         object      the target's whole block table, written at epoch E
//	disk-N.bht.p.E       object      the entries of that table changed since, as of
//	                                 epoch E (blockhash.Patch; tables.go)
//	devstate-E.bin       object      the device-state blob of epoch E
//	point.E              object      the manifest of recovery point E
//	takenover            object      the takeover mark (JSON)
//	hot                  object      RAM runs written in the last epochs (hot.go)
//	journal              object      journal header: the staged EpochBegin
//	journal.NONCE.K      object      chunk K of the staged items
//	commit               object      the commit record
//
// # Journal
//
// Each journal object is an 8-byte magic, the staging's nonce (a random
// uint64 drawn at Begin, which keeps apart the chunks of an epoch staged
// again), then wire frames (wire.Encoder, uncompressed):
//
//	header  "DRSJHDR1" | nonce u64 BE | EpochBegin frame
//	chunk K "DRSJCHK1" | nonce u64 BE | item frames ...
//	commit  "DRSJCMT1" | nonce u64 BE | chunks u64 BE | EpochCommit frame
//
// Items are buffered into a chunk and written as one object at Sync (or
// at 4 MiB), so a chunk is there whole or not at all. An item's location
// is its chunk and index (K<<32 | index).
//
// # Commit and recovery
//
// Commit computes the new block tables (the committed images under the
// staged items), checks them against the sender's states, and writes the
// commit object naming the nonce and the chunk count: from then on the
// epoch is committed. Apply writes device state, grows or creates images,
// writes data, zeros and page references, flushes, snapshots every image
// as eE if recovery points are kept, writes the tables (each one the
// epoch changed: a patch of the entries changed since its whole table,
// or the whole table once that patch would hold an eighth of them; the
// manifest's table_base and table_patch name which) and point.E, then
// replaces manifest — the one atomic step that moves the replica to E —
// and removes commit, header and chunks in that order. Every step is
// idempotent, so Open replays a committed journal (header, all chunks and
// a commit of the same nonce and count) with the rule of replica/recovery,
// keeps an uncommitted one for the sender to resume, and removes one of
// an epoch already applied. Chunks a crash left behind with no header
// naming their nonce are garbage, never read.
//
// # Recovery points
//
// Apply snapshots the images and writes point.E when KeepPoints > 0, and
// for every epoch of a consistency group's cut whatever KeepPoints says:
// another member may commit that cut only after this replica has moved
// on. Pruning then keeps the KeepPoints newest and, from the oldest epoch
// the group's newest complete point needs (replica.GroupKeepFrom, read
// from the store's own replicas), every point; a store that cannot tell
// prunes nothing. A store opened with replica.KeepInherited (status,
// verify, a takeover) that finishes an interrupted apply keeps by the rule
// the committed manifest records, as the file store does.
//
// # Lock
//
// Open takes the exclusive lock of the lock image (rbd.Image.Acquire):
// a live holder refuses it (replica.ErrLocked with its note); a dead one's
// lock is broken once its watch expires, and it is blocklisted so it can
// write nothing more. Data images are not locked: only the lock's holder
// writes them.
//
// # Limits
//
// A block table is one object, so a target's table must fit the OSDs'
// largest object (osd_max_object_size, 128 MiB: 16 M blocks). Space is
// not reserved before the commit record as on files (RBD is thin): a pool
// that fills while an epoch is applied leaves it committed but unapplied,
// which the next Open replays once space is freed.
package rbdstore
