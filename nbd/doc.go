// Package nbd is a client for the Network Block Device protocol, enough to
// read an export and query its metadata contexts.
//
// # What it owns
//
// The client side of the protocol: the fixed-newstyle handshake (structured
// replies, metadata context selection, NBD_OPT_GO with block size
// constraints), NBD_CMD_READ, NBD_CMD_BLOCK_STATUS and NBD_CMD_DISC. It
// works over any net.Conn; in practice a unix socket served by qemu-nbd or
// by QEMU's built-in NBD server.
//
// # What it must not know
//
// Disk image formats, how exports come to exist, replicas or the
// replication wire protocol. Callers give it an address, an export name and
// context names, and get bytes and extents back.
//
// # Robustness
//
// Every reply is parsed by functions over bytes or an io.Reader that bound
// each length before reading it: the server cannot make the client
// allocate more than the request asked for (plus small fixed amounts), nor
// keep it reading one reply forever. Violations are errors matching
// ErrProtocol that name the offending field, and leave the Client unusable.
// Errors the server reports for a command are *ServerError and leave it
// usable. Requests go one at a time; replies are consumed message by
// message and matched by cookie, so pipelining can be added later.
//
// # Messages parsed (all integers big-endian)
//
// Server greeting:
//
//	+----------------+----------------+-------+
//	| "NBDMAGIC" (8) | "IHAVEOPT" (8) | hf(2) |   hf: handshake flags
//	+----------------+----------------+-------+
//
// Option request (client) and option reply (server):
//
//	+----------------+--------+--------+--------------+
//	| "IHAVEOPT" (8) | opt(4) | len(4) | data (len)   |
//	+----------------+--------+--------+--------------+
//	+----------------+--------+--------+--------+--------------+
//	| 0x3e889045565a9| opt(4) | type(4)| len(4) | data (len)   |
//	+----------------+--------+--------+--------+--------------+
//
// Reply data by type: NBD_REP_INFO starts with a 2-byte info type;
//
//	NBD_INFO_EXPORT     | type=0 (2) | size (8) | transmission flags (2) |
//	NBD_INFO_BLOCK_SIZE | type=3 (2) | min (4) | preferred (4) | max (4)  |
//	NBD_REP_META_CONTEXT| context id (4) | name (len-4)                   |
//	NBD_REP_ERR_*       | message (len)                                  |
//
// Transmission request (28 bytes):
//
//	+---------------+----------+---------+-----------+-----------+--------+
//	| 0x25609513(4) | flags(2) | type(2) | cookie(8) | offset(8) | len(4) |
//	+---------------+----------+---------+-----------+-----------+--------+
//
// Simple reply (16 bytes, then len bytes of data for a successful read):
//
//	+---------------+----------+-----------+
//	| 0x67446698(4) | error(4) | cookie(8) |
//	+---------------+----------+-----------+
//
// Structured reply chunk (20-byte header, then len bytes of payload):
//
//	+---------------+----------+---------+-----------+--------+---------+
//	| 0x668e33ef(4) | flags(2) | type(2) | cookie(8) | len(4) | payload |
//	+---------------+----------+---------+-----------+--------+---------+
//	flags bit 0: NBD_REPLY_FLAG_DONE, set on the last chunk of a reply
//
// Chunk payloads by type:
//
//	NONE         (0)      | (empty, DONE must be set)                      |
//	OFFSET_DATA  (1)      | offset (8) | data (len-8, at least 1)          |
//	OFFSET_HOLE  (2)      | offset (8) | hole size (4, nonzero)            |
//	BLOCK_STATUS (5)      | context id (4) | { length (4) | flags (4) }... |
//	ERROR        (0x8001) | error (4) | msglen (2) | message | ...       |
//	ERROR_OFFSET (0x8002) | error (4) | msglen (2) | message | offset (8)|
//
// Content chunks of one read must lie inside the request and not overlap,
// and together cover it unless an error chunk was sent. Block status
// descriptors are consecutive from the request offset; a server may
// describe less than the requested length, and BlockStatus asks again for
// the rest.
package nbd
