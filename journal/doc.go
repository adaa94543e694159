// Package journal owns the write-ahead journal file in which a receiver
// stages one epoch before applying it to the replica images.
//
// A journal record is a wire frame (see package wire): the frame header's
// length and CRC-32C are what make a torn or corrupt tail detectable, and
// the frame decoder's bounds are what keep a corrupt journal from making
// recovery allocate without limit. The journal of an epoch holds, in order:
// its EpochBegin, its items, and, once every item is durable, its
// EpochCommit. The commit record is written and synced only after all items
// are synced, so a journal whose commit record is readable holds the whole
// epoch.
//
// File layout:
//
//	+----------------+------------+----------+-----------+--------+------------------ - -
//	| "DRJRNL02" (8) | version    | vmLen u8 | vm name   | crc32c | frame | frame | ...
//	|                | u16 BE     |          | (vmLen)   | u32 BE |       (wire frames)
//	+----------------+------------+----------+-----------+--------+------------------ - -
//
// version is the wire protocol version of the frames (wire.Version when
// written). Journals of the first format ("DRJRNL01", no version field)
// are still read, as protocol version 1. A journal of a version this build
// does not read is refused with ErrVersion (which matches ErrCorrupt), never
// decoded as if it were its own. The header CRC covers everything before
// it. Scanning stops at the
// first frame that is torn or fails its checksum; everything before it is
// the valid prefix, and the writer truncates the file there before
// appending again.
//
// The package must not know what frames mean (that is the replica's staging
// logic) nor where journals live.
package journal
