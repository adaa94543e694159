// Package blockhash owns the per-block content table that both peers keep of
// each replicated target (a disk or a RAM block): one xxhash64 per block of a
// fixed block size. The sender uses its copy to find what changed since the
// replica's committed epoch; the receiver keeps its copy next to the replica
// image so that every committed epoch has a cheap content digest that the
// sender can predict and that `drsync verify` can recompute.
//
// It must not know about the wire protocol, journals or files beyond the
// byte layout below.
//
// Table file layout (all integers big-endian), updated in place entry by
// entry, which is why it carries no checksum of its own: the manifest
// records the table's Digest, and verify recomputes it.
//
//	0        8           12          20          28
//	+--------+-----------+-----------+-----------+------------------------+
//	| "DRBHT1\x00\x00" | blockSize | size u64  | count u64 | count x hash u64 ...
//	|  magic (8)       |  u32      |           |           |
//	+--------+-----------+-----------+-----------+------------------------+
//
// count = ceil(size / blockSize). The last block may be short; its hash is
// over its actual bytes.
//
// A patch (Patch) is some entries of a table, for a store that writes the
// whole table now and then and, in between, the entries that changed
// since. Its layout, checksummed since it is written whole:
//
//	0                  8           12          20           24
//	+------------------+-----------+-----------+------------+
//	| "DRBHP1\x00\x00"  | blockSize | size u64  | nruns u32  |
//	+------------------+-----------+-----------+------------+
//	nruns × +-----------+-----------+------------------+
//	        | first u64 | count u32 | count × hash u64 |
//	        +-----------+-----------+------------------+
//	+-----------------------------------+
//	| xxhash64 of every byte before u64 |
//	+-----------------------------------+
//
// Runs are ascending and do not overlap; each holds at least one entry,
// all within the target's count.
//
// The digest of a table is xxhash64 over blockSize, size and every hash in
// order. A state identity (StateID) folds the digests of all targets of a
// replica, with the epoch number, into one value the peers compare during
// the handshake.
package blockhash
