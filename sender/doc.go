// Package sender owns the protected side of replication: cutting a
// snapshot of a VM from a Source, working out an epoch against what the
// replica is known to hold, and streaming it so that a broken transfer
// resumes where the receiver's durable progress ends.
//
// The decisions are pure and tested as tables or scripts: which index
// describes the replica (chooseBase); the protocol on a connection, where
// an attempt resumes and what a failure leaves of the epoch (package
// sender/protocol, which runEpoch drives); what each block becomes and
// which blocks travel as one item (package sender/blockplan, which
// scanTarget asks after reading and hashing); and what to send (BuildPlan,
// given readers). IO sits behind interfaces declared here:
// Source (image files in this package, a live guest elsewhere), Dialer (any
// reliable byte stream: QUIC in production, a pipe in tests) and Store (the
// sender's index, on a vfs.FS).
//
// Planning and sending overlap: the planner (Plan.fill) runs beside the
// epoch's first attempt and the sending loop sends each item once it is
// planned, flushing and waiting when it catches up. On a protocol 4
// connection every epoch begins open (wire.EpochBegin.Open): its item
// count comes with the commit, and a staged open epoch is resumed when
// its durable items are this plan's first ones (wire.OpenPlanID; the
// sender waits until that many are planned). An attempt never ends with
// the planner running: a failed one waits for it, so the next attempt
// resumes a complete plan. On an older connection the sender waits for
// the whole plan before EpochBegin, as it always did.
//
// With Dedup, memory pages travel as references where the replica already
// holds their bytes: a disk page of the same cut (the guest's page cache,
// FDM's observation) or another memory page. Both come from bounded
// content indexes (package pagecache, 10 MiB per GiB indexed) and every
// candidate is compared byte for byte with the snapshot before use. A
// memory source is used only if the replica reads it, at apply time, as
// the snapshot has it: a page planned as data or unchanged, never one the
// same epoch writes by reference (the receiver refuses those).
//
// It must not know about QUIC, TLS, configuration files or how the
// receiver stores a replica.
//
// The sender's index (Store) keeps per VM the committed index, what the
// replica holds, and "pending", what it will hold once the epoch in flight
// commits, written before the commit frame leaves and renamed once the
// commit is acknowledged. The committed index is the file "committed" and
// the deltas "committed.<epoch>" that follow it; pending is whole or a
// delta against it (statedelta.go draws the delta's layout): an epoch
// costs the entries it changed, not 8 bytes per page of every target.
// Layout of a whole index:
//
//	+------------+-----------+-------------+-------+-----------------------------------+-----------+
//	| "DRSNDST1" | epoch u64 | stateID u64 | n u16 | n x (keyLen u8 | key | table file) | xxh64 u64 |
//	+------------+-----------+-------------+-------+-----------------------------------+-----------+
//
// where key is "disk/NAME" or "ram/NAME", the table file is blockhash's
// layout, and the trailing xxhash64 covers everything before it.
package sender
