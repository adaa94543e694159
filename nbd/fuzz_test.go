package nbd

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

// The fuzz targets drive the reply parsers with arbitrary server bytes.
// Besides not panicking, a successful parse must satisfy the invariants
// the client relies on.

// FuzzParseStructuredChunk parses the reply to a read of n bytes at off.
func FuzzParseStructuredChunk(f *testing.F) {
	const c = 1
	f.Add(uint64(4096), uint16(16), chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(4096, make([]byte, 16))))
	f.Add(uint64(0), uint16(16), cat(
		chunkBytes(0, chunkOffsetHole, c, holePayload(8, 8)),
		chunkBytes(0, chunkOffsetData, c, dataPayload(0, []byte("abcdefgh"))),
		chunkBytes(replyFlagDone, chunkNone, c, nil)))
	f.Add(uint64(0), uint16(16), cat(
		chunkBytes(0, chunkErrorOffset, c, errPayload(5, "io", 3)),
		chunkBytes(replyFlagDone, chunkError, c, errPayload(5, "again"))))
	f.Add(uint64(0), uint16(16), cat(
		chunkBytes(0, chunkOffsetData, c, dataPayload(0, make([]byte, 9))),
		chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(4, make([]byte, 9)))))
	f.Add(uint64(1<<62), uint16(1), simpleBytes(0, c, []byte{7}))
	f.Add(uint64(0), uint16(100), chunkBytes(replyFlagDone, 0x8000|9, c, errPayload(1, "x")))
	f.Fuzz(func(t *testing.T, off uint64, n uint16, stream []byte) {
		off %= 1 << 62
		for _, structured := range []bool{true, false} {
			rr := &readReply{off: off, buf: make([]byte, n)}
			err := receiveReply(bytes.NewReader(stream), structured, c, rr)
			if err == nil && structured && rr.cov.total != uint64(n) {
				t.Fatalf("success with %d of %d bytes covered", rr.cov.total, n)
			}
			var se *ServerError
			if errors.As(err, &se) && se.Offset >= 0 && (uint64(se.Offset) < off || uint64(se.Offset) >= off+uint64(n)) {
				t.Fatalf("error offset %d outside request [%d, +%d)", se.Offset, off, n)
			}
		}
	})
}

// FuzzParseBlockStatusChunk parses the reply to a block status request
// with two contexts selected, keeping context 1.
func FuzzParseBlockStatusChunk(f *testing.F) {
	const c = 1
	f.Add(uint64(0), uint32(8192), cat(
		chunkBytes(0, chunkBlockStatus, c, statusPayload(2, 8192, 1)),
		chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(1, 4096, 0, 4096, 3))))
	f.Add(uint64(512), uint32(100), chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(1, 1000, 3)))
	f.Add(uint64(0), uint32(100), chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(1, 50, 0, 0, 0)))
	f.Add(uint64(0), uint32(100), chunkBytes(replyFlagDone, chunkErrorOffset, c, errPayload(22, "no", 5)))
	f.Add(uint64(0), uint32(100), simpleBytes(22, c, nil))
	f.Fuzz(func(t *testing.T, off uint64, n uint32, stream []byte) {
		off %= 1 << 62
		if n == 0 {
			n = 1
		}
		sr := &statusReply{off: off, length: uint64(n), contexts: map[uint32]string{1: "a:b", 2: "c:d"}, want: 1}
		if err := receiveReply(bytes.NewReader(stream), true, c, sr); err != nil {
			return
		}
		if len(sr.extents) == 0 || len(sr.extents) > maxExtentsPerReply {
			t.Fatalf("success with %d extents", len(sr.extents))
		}
		pos := int64(off)
		for _, e := range sr.extents {
			if e.Off != pos || e.Len <= 0 || e.Off+e.Len > int64(off)+int64(n) {
				t.Fatalf("extent %+v breaks tiling of [%d, +%d) at %d", e, off, n, pos)
			}
			pos += e.Len
		}
	})
}

// FuzzParseOptionReply parses the replies to NBD_OPT_GO or
// NBD_OPT_SET_META_CONTEXT as the handshake does.
func FuzzParseOptionReply(f *testing.F) {
	f.Add(false, cat(
		optReplyBytes(optGo, repInfo, infoExportBytes(1<<30, FlagHasFlags|FlagReadOnly)),
		optReplyBytes(optGo, repInfo, infoBlockBytes(1, 4096, 32<<20)),
		optReplyBytes(optGo, repAck, nil)))
	f.Add(false, optReplyBytes(optGo, repErrUnknown, []byte("no such export")))
	f.Add(false, optReplyBytes(optGo, repInfo, []byte{0, 9, 1}))
	f.Add(true, cat(
		optReplyBytes(optSetMetaContext, repMetaContext, metaContextBytes(0, ContextBaseAllocation)),
		optReplyBytes(optSetMetaContext, repMetaContext, metaContextBytes(1, DirtyBitmapContext("b0"))),
		optReplyBytes(optSetMetaContext, repAck, nil)))
	f.Add(true, optReplyBytes(optSetMetaContext, repMetaContext, []byte{0, 0, 0, 1, 0xff}))
	f.Fuzz(func(t *testing.T, meta bool, stream []byte) {
		r := bytes.NewReader(stream)
		if meta {
			names := map[uint32]string{}
			err := readOptReplies(r, optSetMetaContext, func(typ uint32, data []byte) error {
				id, name, err := parseMetaContext(data)
				if err == nil {
					if name == "" || len(name) > maxString {
						t.Fatalf("accepted context name of %d bytes", len(name))
					}
					names[id] = name
				}
				return err
			})
			var oe *OptionError
			if errors.As(err, &oe) && len(oe.Message) > 3*maxString {
				t.Fatalf("message of %d bytes", len(oe.Message))
			}
			return
		}
		var info exportInfo
		err := readOptReplies(r, optGo, func(typ uint32, data []byte) error { return info.parse(data) })
		if err != nil {
			return
		}
		if info.haveExport && (info.size > math.MaxInt64 || info.flags&FlagHasFlags == 0) {
			t.Fatalf("accepted export info %+v", info)
		}
		if info.haveBlock && validateBlockSizes(info.minBlock, info.prefBlock, info.maxBlock) != nil {
			t.Fatalf("accepted block sizes %+v", info)
		}
	})
}

// FuzzParseGreeting checks the first server message.
func FuzzParseGreeting(f *testing.F) {
	f.Add(cat(binary64(magicInit), binary64(magicOpt), []byte{0, 3}))
	f.Add(cat(binary64(magicInit), binary64(magicOldstyle), []byte{0, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		flags, err := parseGreeting(b)
		if err == nil && flags&handshakeFixed == 0 {
			t.Fatalf("accepted greeting without fixed newstyle: %x", b)
		}
	})
}
