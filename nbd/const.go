package nbd

import "fmt"

// Magic numbers. All integers on the wire are big-endian.
const (
	magicInit        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454f5054 // "IHAVEOPT"
	magicOldstyle    = 0x0000420281861253
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimple      = 0x67446698
	magicStructured  = 0x668e33ef
	magicExtended    = 0x6e8a278c // extended-header replies; never negotiated here
	handshakeFixed   = 1 << 0     // server handshake flag NBD_FLAG_FIXED_NEWSTYLE
	handshakeNoZero  = 1 << 1     // server handshake flag NBD_FLAG_NO_ZEROES
	clientFixed      = 1 << 0     // client flag NBD_FLAG_C_FIXED_NEWSTYLE
	clientNoZeroes   = 1 << 1     // client flag NBD_FLAG_C_NO_ZEROES
	exportNamePadLen = 124        // zero padding after NBD_OPT_EXPORT_NAME without NO_ZEROES
)

// Option codes (NBD_OPT_*).
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types (NBD_REP_*). Errors have bit 31 set.
const (
	repAck          uint32 = 1
	repServer       uint32 = 2
	repInfo         uint32 = 3
	repMetaContext  uint32 = 4
	repErrBit       uint32 = 1 << 31
	repErrUnsup            = repErrBit | 1
	repErrPolicy           = repErrBit | 2
	repErrInvalid          = repErrBit | 3
	repErrPlatform         = repErrBit | 4
	repErrTLSReqd          = repErrBit | 5
	repErrUnknown          = repErrBit | 6
	repErrShutdown         = repErrBit | 7
	repErrBlockSize        = repErrBit | 8
	repErrTooBig           = repErrBit | 9
	repErrExtHeader        = repErrBit | 10
)

// Info types carried in NBD_REP_INFO (NBD_INFO_*) that we use; name (1)
// and description (2) are skipped if a server sends them.
const (
	infoExport    uint16 = 0
	infoBlockSize uint16 = 3
)

// Transmission flags reported by the server for the export (NBD_FLAG_*).
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Commands (NBD_CMD_*).
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Structured reply chunk flags and types (NBD_REPLY_FLAG_*, NBD_REPLY_TYPE_*).
const (
	replyFlagDone uint16 = 1 << 0

	chunkNone        uint16 = 0
	chunkOffsetData  uint16 = 1
	chunkOffsetHole  uint16 = 2
	chunkBlockStatus uint16 = 5
	chunkErrBit      uint16 = 1 << 15
	chunkError              = chunkErrBit | 1
	chunkErrorOffset        = chunkErrBit | 2
)

// Metadata contexts and their status flags.
const (
	// ContextBaseAllocation is the standard allocation context.
	ContextBaseAllocation = "base:allocation"
	// ContextDirtyBitmapPrefix prefixes QEMU's dirty-bitmap contexts; see
	// DirtyBitmapContext.
	ContextDirtyBitmapPrefix = "qemu:dirty-bitmap:"

	// StateHole (base:allocation): the extent is not allocated.
	StateHole uint32 = 1 << 0
	// StateZero (base:allocation): the extent reads as zeros.
	StateZero uint32 = 1 << 1
	// StateDirty (qemu:dirty-bitmap:*): the extent is dirty in the bitmap.
	StateDirty uint32 = 1 << 0
)

// DirtyBitmapContext is the metadata context name under which QEMU exports
// the dirty bitmap called bitmap.
func DirtyBitmapContext(bitmap string) string { return ContextDirtyBitmapPrefix + bitmap }

// Protocol limits.
const (
	// maxString is the longest string (export name, context name, message)
	// the protocol allows.
	maxString = 4096
	// defaultMaxBlock is the request payload limit assumed when the server
	// does not advertise one, and the ceiling we apply if it advertises more.
	defaultMaxBlock = 32 << 20
)

func optName(o uint32) string {
	switch o {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	case optExtendedHeaders:
		return "NBD_OPT_EXTENDED_HEADERS"
	}
	return fmt.Sprintf("NBD_OPT_%d", o)
}

func repName(r uint32) string {
	switch r {
	case repAck:
		return "NBD_REP_ACK"
	case repServer:
		return "NBD_REP_SERVER"
	case repInfo:
		return "NBD_REP_INFO"
	case repMetaContext:
		return "NBD_REP_META_CONTEXT"
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBlockSize:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	case repErrExtHeader:
		return "NBD_REP_ERR_EXT_HEADER_REQD"
	}
	if r&repErrBit != 0 {
		return fmt.Sprintf("NBD_REP_ERR_%d", r&^repErrBit)
	}
	return fmt.Sprintf("NBD_REP_%d", r)
}

func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdWrite:
		return "NBD_CMD_WRITE"
	case cmdDisc:
		return "NBD_CMD_DISC"
	case cmdFlush:
		return "NBD_CMD_FLUSH"
	case cmdTrim:
		return "NBD_CMD_TRIM"
	case cmdCache:
		return "NBD_CMD_CACHE"
	case cmdWriteZeroes:
		return "NBD_CMD_WRITE_ZEROES"
	case cmdBlockStatus:
		return "NBD_CMD_BLOCK_STATUS"
	}
	return fmt.Sprintf("NBD_CMD_%d", c)
}

func chunkName(t uint16) string {
	switch t {
	case chunkNone:
		return "NBD_REPLY_TYPE_NONE"
	case chunkOffsetData:
		return "NBD_REPLY_TYPE_OFFSET_DATA"
	case chunkOffsetHole:
		return "NBD_REPLY_TYPE_OFFSET_HOLE"
	case chunkBlockStatus:
		return "NBD_REPLY_TYPE_BLOCK_STATUS"
	case chunkError:
		return "NBD_REPLY_TYPE_ERROR"
	case chunkErrorOffset:
		return "NBD_REPLY_TYPE_ERROR_OFFSET"
	}
	return fmt.Sprintf("NBD_REPLY_TYPE_%d", t)
}
