// Package wire defines the drsync protocol: its frames, their byte layouts,
// the codec that reads and writes them, protocol versioning, and the fields
// of the handshake.
//
// The package knows nothing about files, replicas, QUIC or QEMU. It turns
// frames into bytes on an io.Writer and bytes from an io.Reader into frames,
// and checks each frame on its own. Whether a frame is acceptable at a point
// of the conversation (order, known targets, offsets within a target) is
// decided by the protocol state machines of the sender and receiver.
//
// # Versioning
//
// The sender opens with Hello, offering the range of versions
// [min, max] it speaks. The receiver answers with Welcome carrying the
// highest version in both ranges, or with an Error of code ErrVersion if the
// ranges do not meet. This is version 4; versions 1 to 3 are still spoken. A frame
// type not listed below is malformed; later versions may add types, which a
// peer only sends after negotiating a version that has them. Version 2 adds
// the optional group section of EpochBegin: a sender sends it only on a
// version 2 connection, and a receiver refuses it on a version 1 one.
// Version 3 adds target kind 3, a blob (vmspec.KindBlob: a small document
// such as a libvirt domain's definition, carried by DiskExtent and ZeroRun
// as a disk's data is); a sender names one only on a version 3 connection,
// and a receiver refuses an EpochBegin naming one on an older one.
// Version 4 adds open epochs: an EpochBegin with header flag bit 1 set
// begins an epoch its sender is still planning, so that the first items go
// on the wire while the rest are read and hashed. Its items and bytes count
// what was planned when it began (a lower bound), the receiver bounds the
// epoch by its targets' blocks instead, and EpochCommit's item count is
// the epoch's. An open epoch's plan cannot be identified by items not yet
// planned, so its plan field is OpenPlanID of the items before startSeq,
// and a receiver staging an open epoch reports OpenPlanID of its durable
// items as Welcome's stagedPlan: a sender, the one that began the epoch or
// a restarted one, resumes it only if those are its own plan's first
// items. A resume repeats the flag. A sender sends the flag only on a
// version 4 connection (where it opens every epoch), and a receiver
// refuses it on an older one.
//
// # Frame header
//
// Every frame is a 12-byte header followed by a payload. Integers are big
// endian throughout.
//
//	 0        1        2        3        4                                 8
//	+--------+--------+--------+--------+--------+--------+--------+--------+
//	|  type  | flags  |  reserved (0)   |        length (u32)               |
//	+--------+--------+--------+--------+--------+--------+--------+--------+
//	|        crc32c (u32)               |  payload (length bytes) ...
//	+--------+--------+--------+--------+----------------------------------
//	 8                                  12
//
// type is one of the Type constants. flags bit 0 means the payload is
// compressed; bit 1, on EpochBegin only, that the epoch is open (version
// ≥ 4, see Versioning); the other bits must be 0, as must reserved. length counts the
// payload bytes as sent. crc32c is CRC-32 with the Castagnoli polynomial over
// header bytes 0 to 7 followed by the payload as sent.
//
// # Compression
//
// Only frames that carry data (DiskExtent, MemRun, DeviceState) may be
// compressed; the flag on any other type is malformed. A compressed payload
// is
//
//	+--------------+-------------------------------+
//	| rawLen (u32) | one zstd frame                |
//	+--------------+-------------------------------+
//
// and the zstd frame must expand to exactly rawLen bytes, which are the
// payload described below. The Encoder compresses a data frame only when
// that saves at least an eighth: compressed size + 4 < raw size * 7/8.
// A frame carrying 256 KiB or more is first judged by four 16 KiB samples
// spread over its data, and tried whole only if they save a sixteenth.
// Otherwise, or with CompressNone, the frame is sent as is. Which frames
// are compressed is the Encoder's choice alone: the decoder reads the
// flag, so the policy can change without a protocol version. Zero-filled
// ranges should not be sent as data at all but as ZeroRun.
//
// # Bounds
//
//	raw payload                    ≤ MaxPayload (8 MiB), also after decompression
//	length in the header           ≤ MaxPayload + 4 if compressed, else ≤ MaxPayload
//	data of one frame              ≤ MaxData (4 MiB)
//	VM name                        1..vmspec.MaxVMNameLen (64) bytes, see vmspec.ValidVMName
//	target name                    1..vmspec.MaxTargetNameLen (128) bytes, see vmspec.ValidTargetName
//	targets in an epoch            ≤ MaxTargets (256)
//	Error message                  ≤ MaxMessage (4096) bytes of UTF-8
//	pages in a PageRef             1..MaxRefsCount (1 Mi)
//	target block size              power of two in [MinBlockSize, MaxBlockSize]
//
// # Payloads
//
// Field types: u8, u16, u32 and u64 are unsigned big-endian integers; i64 is
// a signed one. str8 is a u8 length then that many bytes, str16 a u16 length
// then bytes, bytes32 a u32 length then bytes. A time is an i64 of
// nanoseconds since the Unix epoch, with 0 standing for the zero time (so
// the epoch instant itself decodes as the zero time); decoded times are UTC
// without a monotonic reading, and times outside the years 1678 to 2261
// cannot be encoded. A payload must be consumed exactly: bytes left over
// after the last field make the frame malformed.
//
// Hello (1), sender to receiver, opens the connection:
//
//	+------------+----------------+----------------+---------+
//	| "DRSYNC01" | minVersion u16 | maxVersion u16 | vm str8 |
//	+------------+----------------+----------------+---------+
//	   8 bytes
//
// Welcome (2), receiver to sender, the negotiated version and the replica's
// position:
//
//	+-------------+---------------+------------------+-------------+
//	| version u16 | committed u64 | committedCut i64 | stateID u64 |
//	+-------------+---------------+------------------+-------------+
//	+-----------------+----------------+-------------------+
//	| stagedEpoch u64 | stagedPlan u64 | stagedDurable u64 |
//	+-----------------+----------------+-------------------+
//
// EpochBegin (3) opens an epoch and lists its targets:
//
//	+-----------+---------+----------+-----------+-----------+--------------+
//	| epoch u64 | cut i64 | plan u64 | items u64 | bytes u64 | startSeq u64 |
//	+-----------+---------+----------+-----------+-----------+--------------+
//	+--------------+------------------------------------+
//	| ntargets u16 | ntargets × target                  |
//	+--------------+------------------------------------+
//
//	target:
//	+--------+---------+-----------+----------+---------------+
//	| id u16 | kind u8 | name str8 | size u64 | blockSize u32 |
//	+--------+---------+-----------+----------+---------------+
//
// kind is 1 for a disk, 2 for a RAM block, 3 for a blob (version ≥ 3).
//
// then, only for an epoch cut by a consistency group's coordinated cut
// (version ≥ 2; present exactly when bytes follow the last target), the
// group section, vmspec.GroupCut:
//
//	+------------+---------+-------------+-------------------------+
//	| group str8 | cut u64 | nmembers u8 | nmembers × member str8  |
//	+------------+---------+-------------+-------------------------+
//
// DiskExtent (4), whole blocks of a disk, and MemRun (5), whole pages of RAM:
//
//	+---------+------------+------------+---------------+
//	| seq u64 | target u16 | offset u64 | data bytes32  |   DiskExtent
//	+---------+------------+------------+---------------+
//	+---------+------------+------------+---------------+
//	| seq u64 | target u16 | page u64   | data bytes32  |   MemRun
//	+---------+------------+------------+---------------+
//
// ZeroRun (6), a range reading as zeros:
//
//	+---------+------------+------------+------------+
//	| seq u64 | target u16 | offset u64 | length u64 |
//	+---------+------------+------------+------------+
//
// PageRef (7), pages whose content the replica already holds elsewhere:
//
//	+---------+------------+----------+-----------+-----------+
//	| seq u64 | target u16 | page u64 | count u32 | source u8 |
//	+---------+------------+----------+-----------+-----------+
//	+---------------+---------------+
//	| srcTarget u16 | srcOffset u64 |
//	+---------------+---------------+
//
// DeviceState (8), a chunk of the device-state blob:
//
//	+---------+------------+-----------+--------------+
//	| seq u64 | offset u64 | total u64 | data bytes32 |
//	+---------+------------+-----------+--------------+
//
// EpochCommit (9) closes an epoch:
//
//	+-----------+-----------+------------+-------+-------------------------------+
//	| epoch u64 | items u64 | digest u64 | n u16 | n × (target u16 | digest u64) |
//	+-----------+-----------+------------+-------+-------------------------------+
//
// Ack (10), the receiver's durable progress:
//
//	+-----------+-------------+--------------------+
//	| epoch u64 | durable u64 | committed u8 (0/1) |
//	+-----------+-------------+--------------------+
//
// Error (11), sent before closing the connection:
//
//	+----------+---------------+
//	| code u16 | message str16 |
//	+----------+---------------+
//
// TableRequest (12), sender to receiver between epochs, has an empty
// payload. A sender that has no record of what the replica holds (its
// state was lost) asks for the replica's block tables rather than sending
// every block. The receiver answers with Table (13) frames, each a run of
// one target's block hashes, then TableEnd (14):
//
//	+---------+-----------+----------+---------------+-----------------+-------------+------------------+
//	| kind u8 | name str8 | size u64 | blockSize u32 | firstBlock u64  | count u32   | count x hash u64 |
//	+---------+-----------+----------+---------------+-----------------+-------------+------------------+
//
//	+-----------+-------------+
//	| epoch u64 | stateID u64 |
//	+-----------+-------------+
//
// The sender recomputes the state identity from the tables and uses them
// only if it equals TableEnd's and the Welcome's.
//
// # Field rules
//
// Encode refuses, and Decode reports as malformed, a frame breaking any of
// these (see Validate):
//
//   - Hello: 1 ≤ minVersion ≤ maxVersion; vm a valid VM name.
//   - Welcome: version ≥ 1.
//   - EpochBegin: epoch ≥ 1; startSeq ≤ items; at most MaxTargets targets
//     with distinct ids; each of kind Disk or RAM, with a valid name, size
//     > 0, and a block size that is a power of two in [512, 4 MiB], equal to
//     vmspec.PageSize for RAM. A group section: a valid group name, cut ≥
//     1, 1..vmspec.MaxGroupMembers members (checked before allocating),
//     valid VM names, sorted and unique; that the VM of the connection is
//     among them is checked by the receiver (EpochBegin.ValidateGroupFor).
//   - DiskExtent: 1..MaxData bytes of data; offset + length fits in u64.
//   - MemRun: data a non-empty multiple of vmspec.PageSize, at most MaxData; the
//     byte offset of the run's end fits in u64.
//   - ZeroRun: length > 0; offset + length fits in u64.
//   - PageRef: count in 1..MaxRefsCount; source RefDisk or RefPage; the ends
//     of both ranges fit in u64.
//   - DeviceState: at most MaxData bytes; offset + length ≤ total.
//   - EpochCommit: epoch ≥ 1; at most MaxTargets states with distinct
//     targets.
//   - Ack: committed is 0 or 1.
//   - Error: message at most MaxMessage bytes of valid UTF-8.
//   - Table: kind Disk or RAM, a valid target name, size > 0, block size a
//     power of two in [512, 4 MiB], 1 to MaxTableHashes hashes, all inside
//     the target's blocks.
//
// # Errors
//
// Every problem with the bytes or the fields of a frame is a *FrameError
// wrapping ErrMalformed; a CRC mismatch also wraps ErrChecksum, an exceeded
// length bound ErrTooLarge. A stream that ends between frames yields io.EOF,
// one that ends inside a frame io.ErrUnexpectedEOF.
package wire
