package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"unicode/utf8"
)

var be = binary.BigEndian

// Bounds on what a server can make the client read or allocate.
const (
	// maxOptReplyLen bounds one option reply's payload. The largest
	// legitimate ones are a string plus a few integers.
	maxOptReplyLen = 64 << 10
	// maxOptReplies bounds the replies to one option before its final one.
	maxOptReplies = 4096
	// maxErrorChunkLen is the largest error chunk: error, 16-bit message
	// length, the message, and an offset.
	maxErrorChunkLen = 4 + 2 + math.MaxUint16 + 8
	// maxErrorChunks bounds error chunks in one reply; each is valid on its
	// own, so without a bound a server could stream them forever.
	maxErrorChunks = 64
	// maxSpans bounds the disjoint pieces a read reply may be assembled
	// from while it is incomplete; in-order replies always use one.
	maxSpans = 1024
	// maxExtentsPerReply bounds the descriptors kept from one block status
	// chunk; further ones are skipped and asked for again.
	maxExtentsPerReply = 1 << 17
)

const (
	greetingLen       = 18 // NBDMAGIC, IHAVEOPT, handshake flags
	optReplyHeaderLen = 20 // magic, option, type, length
	requestLen        = 28 // magic, flags, type, cookie, offset, length
	simpleReplyLen    = 16 // magic, error, cookie
	chunkHeaderLen    = 20 // magic, flags, type, cookie, length
)

// parseGreeting checks the server's first message and returns its
// handshake flags.
func parseGreeting(b []byte) (uint16, error) {
	if len(b) != greetingLen {
		return 0, protoErrorf("greeting length %d, want %d", len(b), greetingLen)
	}
	if m := be.Uint64(b); m != magicInit {
		return 0, protoErrorf("greeting magic %#016x, want NBDMAGIC", m)
	}
	switch m := be.Uint64(b[8:]); m {
	case magicOpt:
	case magicOldstyle:
		return 0, fmt.Errorf("server uses oldstyle negotiation: %w", ErrUnsupported)
	default:
		return 0, protoErrorf("greeting second magic %#016x, want IHAVEOPT", m)
	}
	flags := be.Uint16(b[16:])
	if flags&handshakeFixed == 0 {
		return 0, fmt.Errorf("server lacks fixed newstyle negotiation: %w", ErrUnsupported)
	}
	return flags, nil
}

// appendOption encodes an option request.
func appendOption(b []byte, opt uint32, data []byte) []byte {
	b = be.AppendUint64(b, magicOpt)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// goData encodes the payload of NBD_OPT_GO: the export and the info types
// we ask for.
func goData(export string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// metaContextData encodes the payload of NBD_OPT_{LIST,SET}_META_CONTEXT.
func metaContextData(export string, queries []string) []byte {
	b := be.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// readOptReply reads one reply to option opt.
func readOptReply(r io.Reader, opt uint32) (typ uint32, data []byte, err error) {
	var h [optReplyHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading option reply header: %w", err)
	}
	if m := be.Uint64(h[:]); m != magicOptReply {
		return 0, nil, protoErrorf("option reply magic %#016x, want %#016x", m, uint64(magicOptReply))
	}
	if o := be.Uint32(h[8:]); o != opt {
		return 0, nil, protoErrorf("option reply is for %s, want %s", optName(o), optName(opt))
	}
	typ = be.Uint32(h[12:])
	n := be.Uint32(h[16:])
	if n > maxOptReplyLen {
		return 0, nil, protoErrorf("%s reply length %d exceeds %d", optName(opt), n, maxOptReplyLen)
	}
	data = make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, fmt.Errorf("reading %s reply payload: %w", optName(opt), noEOF(err))
	}
	return typ, data, nil
}

// readOptReplies reads the replies to opt up to the final one. Replies
// before it are handed to fn; a final error reply becomes an *OptionError.
func readOptReplies(r io.Reader, opt uint32, fn func(typ uint32, data []byte) error) error {
	for i := 0; ; i++ {
		if i > maxOptReplies {
			return protoErrorf("more than %d replies to %s", maxOptReplies, optName(opt))
		}
		typ, data, err := readOptReply(r, opt)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if len(data) != 0 {
				return protoErrorf("NBD_REP_ACK to %s carries %d bytes, want 0", optName(opt), len(data))
			}
			return nil
		case typ&repErrBit != 0:
			return &OptionError{Option: opt, Reply: typ, Message: sanitizeMessage(data)}
		}
		if err := fn(typ, data); err != nil {
			return err
		}
	}
}

// exportInfo gathers the NBD_REP_INFO replies to NBD_OPT_GO.
type exportInfo struct {
	size       uint64
	flags      uint16
	haveExport bool

	minBlock, prefBlock, maxBlock uint32
	haveBlock                     bool
}

// parse decodes one NBD_REP_INFO payload. Info types we did not ask for
// and do not use are skipped, as the protocol allows.
func (in *exportInfo) parse(data []byte) error {
	if len(data) < 2 {
		return protoErrorf("NBD_REP_INFO length %d, want at least 2", len(data))
	}
	switch t := be.Uint16(data); t {
	case infoExport:
		if len(data) != 12 {
			return protoErrorf("NBD_INFO_EXPORT length %d, want 12", len(data))
		}
		in.size = be.Uint64(data[2:])
		in.flags = be.Uint16(data[10:])
		in.haveExport = true
		if in.size > math.MaxInt64 {
			return protoErrorf("NBD_INFO_EXPORT size %d exceeds %d", in.size, int64(math.MaxInt64))
		}
		if in.flags&FlagHasFlags == 0 {
			return protoErrorf("NBD_INFO_EXPORT transmission flags %#04x lack NBD_FLAG_HAS_FLAGS", in.flags)
		}
	case infoBlockSize:
		if len(data) != 14 {
			return protoErrorf("NBD_INFO_BLOCK_SIZE length %d, want 14", len(data))
		}
		in.minBlock = be.Uint32(data[2:])
		in.prefBlock = be.Uint32(data[6:])
		in.maxBlock = be.Uint32(data[10:])
		in.haveBlock = true
		return validateBlockSizes(in.minBlock, in.prefBlock, in.maxBlock)
	}
	return nil
}

func validateBlockSizes(minB, pref, maxB uint32) error {
	if minB == 0 || minB > 64<<10 || bits.OnesCount32(minB) != 1 {
		return protoErrorf("NBD_INFO_BLOCK_SIZE minimum %d, want a power of 2 in [1, 65536]", minB)
	}
	if pref < minB || bits.OnesCount32(pref) != 1 {
		return protoErrorf("NBD_INFO_BLOCK_SIZE preferred %d, want a power of 2 >= minimum %d", pref, minB)
	}
	if maxB < minB || (maxB != math.MaxUint32 && maxB%minB != 0) {
		return protoErrorf("NBD_INFO_BLOCK_SIZE maximum %d, want a multiple of minimum %d", maxB, minB)
	}
	return nil
}

// parseMetaContext decodes an NBD_REP_META_CONTEXT payload.
func parseMetaContext(data []byte) (id uint32, name string, err error) {
	if len(data) < 4 {
		return 0, "", protoErrorf("NBD_REP_META_CONTEXT length %d, want at least 4", len(data))
	}
	nb := data[4:]
	switch {
	case len(nb) == 0:
		return 0, "", protoErrorf("NBD_REP_META_CONTEXT name is empty")
	case len(nb) > maxString:
		return 0, "", protoErrorf("NBD_REP_META_CONTEXT name length %d exceeds %d", len(nb), maxString)
	case !utf8.Valid(nb):
		return 0, "", protoErrorf("NBD_REP_META_CONTEXT name is not UTF-8")
	}
	return be.Uint32(data), string(nb), nil
}

// appendRequest encodes a transmission request header.
func appendRequest(b []byte, flags, typ uint16, cookie, off uint64, length uint32) []byte {
	b = be.AppendUint32(b, magicRequest)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, length)
}

// replyHeader is the header of a simple reply or of a structured chunk.
type replyHeader struct {
	structured bool
	cookie     uint64
	errno      uint32 // simple replies only
	flags      uint16 // structured only
	typ        uint16 // structured only
	length     uint32 // structured only: payload length
}

// readReplyHeader reads the header of the next reply message.
func readReplyHeader(r io.Reader) (replyHeader, error) {
	var b [chunkHeaderLen]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return replyHeader{}, fmt.Errorf("reading reply header: %w", err)
	}
	switch m := be.Uint32(b[:]); m {
	case magicSimple:
		if _, err := io.ReadFull(r, b[4:simpleReplyLen]); err != nil {
			return replyHeader{}, fmt.Errorf("reading simple reply header: %w", noEOF(err))
		}
		return replyHeader{errno: be.Uint32(b[4:]), cookie: be.Uint64(b[8:])}, nil
	case magicStructured:
		if _, err := io.ReadFull(r, b[4:chunkHeaderLen]); err != nil {
			return replyHeader{}, fmt.Errorf("reading structured reply header: %w", noEOF(err))
		}
		return replyHeader{
			structured: true,
			flags:      be.Uint16(b[4:]),
			typ:        be.Uint16(b[6:]),
			cookie:     be.Uint64(b[8:]),
			length:     be.Uint32(b[16:]),
		}, nil
	case magicExtended:
		return replyHeader{}, protoErrorf("extended-header reply, which was not negotiated")
	default:
		return replyHeader{}, protoErrorf("reply magic %#08x", m)
	}
}

// replyHandler consumes the messages answering one request. The methods
// must read exactly the payload the header announces, so that the stream
// stays in step for the next message, or return a protocol error.
type replyHandler interface {
	command() uint16
	simple(r io.Reader, h replyHeader, structured bool) error
	chunk(r io.Reader, h replyHeader) error
	result() error
}

// receiveReply reads the reply to the request with the given cookie.
// Replies are consumed one message at a time so that a future pipelined
// client can route each message by cookie instead.
func receiveReply(r io.Reader, structured bool, cookie uint64, rh replyHandler) error {
	for chunks := 0; ; chunks++ {
		h, err := readReplyHeader(r)
		if err != nil {
			return err
		}
		if h.cookie != cookie {
			return protoErrorf("reply cookie %#x, want %#x", h.cookie, cookie)
		}
		if !h.structured {
			if chunks > 0 {
				return protoErrorf("simple reply after structured chunks for cookie %#x", cookie)
			}
			return rh.simple(r, h, structured)
		}
		if !structured {
			return protoErrorf("structured reply chunk, which was not negotiated")
		}
		if err := rh.chunk(r, h); err != nil {
			return err
		}
		if h.flags&replyFlagDone != 0 {
			return rh.result()
		}
	}
}

// errorChunk handles the chunk types every reply may contain: error chunks
// (including unknown types with the error bit set, which the protocol says
// to treat as errors) and the final NONE chunk. It reports handled=false
// for other types. count bounds the error chunks of one reply; an error
// chunk's offset must lie within [off, off+length).
func errorChunk(r io.Reader, h replyHeader, cmd uint16, off, length uint64, count *int) (se *ServerError, handled bool, err error) {
	if h.typ == chunkNone {
		if h.length != 0 {
			return nil, true, protoErrorf("NBD_REPLY_TYPE_NONE length %d, want 0", h.length)
		}
		if h.flags&replyFlagDone == 0 {
			return nil, true, protoErrorf("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")
		}
		return nil, true, nil
	}
	if h.typ&chunkErrBit == 0 {
		return nil, false, nil
	}
	if *count++; *count > maxErrorChunks {
		return nil, true, protoErrorf("more than %d error chunks in one reply", maxErrorChunks)
	}
	se, err = readErrorChunk(r, h, cmd)
	if err != nil {
		return nil, true, err
	}
	if se.Offset >= 0 {
		if o := uint64(se.Offset); o < off || o-off >= length {
			return nil, true, protoErrorf("NBD_REPLY_TYPE_ERROR_OFFSET offset %d outside request [%d, %d)", o, off, off+length)
		}
	}
	return se, true, nil
}

// readErrorChunk decodes the payload of an error chunk.
func readErrorChunk(r io.Reader, h replyHeader, cmd uint16) (*ServerError, error) {
	name := chunkName(h.typ)
	fixed := uint32(6) // error, message length
	if h.typ == chunkErrorOffset {
		fixed += 8
	}
	if h.length < fixed {
		return nil, protoErrorf("%s length %d, want at least %d", name, h.length, fixed)
	}
	if h.length > maxErrorChunkLen {
		return nil, protoErrorf("%s length %d exceeds %d", name, h.length, maxErrorChunkLen)
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, fmt.Errorf("reading %s payload: %w", name, noEOF(err))
	}
	errno := be.Uint32(p)
	msgLen := uint32(be.Uint16(p[4:]))
	if msgLen > h.length-fixed {
		return nil, protoErrorf("%s message length %d exceeds chunk length %d", name, msgLen, h.length)
	}
	if errno == 0 {
		return nil, protoErrorf("%s error value is 0", name)
	}
	se := &ServerError{Command: cmd, Errno: errno, Message: sanitizeMessage(p[6 : 6+msgLen]), Offset: -1}
	if h.typ == chunkErrorOffset {
		if msgLen != h.length-fixed {
			return nil, protoErrorf("%s length %d, want %d for a %d-byte message", name, h.length, fixed+msgLen, msgLen)
		}
		off := be.Uint64(p[6+msgLen:])
		if off > math.MaxInt64 {
			return nil, protoErrorf("%s offset %d exceeds %d", name, off, int64(math.MaxInt64))
		}
		se.Offset = int64(off)
	}
	return se, nil
}

// readReply assembles the reply to one NBD_CMD_READ of len(buf) bytes at off.
type readReply struct {
	off  uint64
	buf  []byte
	cov  coverage
	err  *ServerError
	errs int
}

func (*readReply) command() uint16 { return cmdRead }

func (s *readReply) simple(r io.Reader, h replyHeader, structured bool) error {
	if structured {
		return protoErrorf("simple reply to NBD_CMD_READ after structured replies were negotiated")
	}
	if h.errno != 0 {
		// The protocol forbids a payload after an error.
		return &ServerError{Command: cmdRead, Errno: h.errno, Offset: -1}
	}
	if _, err := io.ReadFull(r, s.buf); err != nil {
		return fmt.Errorf("reading %d bytes of data: %w", len(s.buf), noEOF(err))
	}
	return nil
}

func (s *readReply) chunk(r io.Reader, h replyHeader) error {
	switch h.typ {
	case chunkOffsetData:
		if h.length < 9 {
			return protoErrorf("NBD_REPLY_TYPE_OFFSET_DATA length %d, want at least 9", h.length)
		}
		var ob [8]byte
		if _, err := io.ReadFull(r, ob[:]); err != nil {
			return fmt.Errorf("reading NBD_REPLY_TYPE_OFFSET_DATA offset: %w", noEOF(err))
		}
		rel, err := s.place("NBD_REPLY_TYPE_OFFSET_DATA", be.Uint64(ob[:]), uint64(h.length-8))
		if err != nil {
			return err
		}
		// Data goes straight into the caller's buffer: no copy, and its size
		// was bounded by the request, not by the server.
		if _, err := io.ReadFull(r, s.buf[rel:rel+uint64(h.length-8)]); err != nil {
			return fmt.Errorf("reading NBD_REPLY_TYPE_OFFSET_DATA data: %w", noEOF(err))
		}
		return nil
	case chunkOffsetHole:
		if h.length != 12 {
			return protoErrorf("NBD_REPLY_TYPE_OFFSET_HOLE length %d, want 12", h.length)
		}
		var p [12]byte
		if _, err := io.ReadFull(r, p[:]); err != nil {
			return fmt.Errorf("reading NBD_REPLY_TYPE_OFFSET_HOLE payload: %w", noEOF(err))
		}
		n := uint64(be.Uint32(p[8:]))
		if n == 0 {
			return protoErrorf("NBD_REPLY_TYPE_OFFSET_HOLE hole size is 0")
		}
		rel, err := s.place("NBD_REPLY_TYPE_OFFSET_HOLE", be.Uint64(p[:]), n)
		if err != nil {
			return err
		}
		clear(s.buf[rel : rel+n])
		return nil
	}
	se, handled, err := errorChunk(r, h, cmdRead, s.off, uint64(len(s.buf)), &s.errs)
	if err != nil {
		return err
	}
	if !handled {
		return protoErrorf("unexpected %s chunk in reply to NBD_CMD_READ", chunkName(h.typ))
	}
	if s.err == nil {
		s.err = se
	}
	return nil
}

// place checks that content [o, o+n) lies within the request and overlaps
// nothing received before, and returns its offset in buf.
func (s *readReply) place(name string, o, n uint64) (uint64, error) {
	size := uint64(len(s.buf))
	if o < s.off || o-s.off > size || n > size-(o-s.off) {
		return 0, protoErrorf("%s [%d, +%d) outside request [%d, %d)", name, o, n, s.off, s.off+size)
	}
	rel := o - s.off
	if err := s.cov.add(rel, rel+n); err != nil {
		return 0, fmt.Errorf("%s at offset %d: %w", name, o, err)
	}
	return rel, nil
}

func (s *readReply) result() error {
	if s.err != nil {
		return s.err
	}
	if s.cov.total != uint64(len(s.buf)) {
		return protoErrorf("NBD_CMD_READ reply covers %d of %d bytes", s.cov.total, len(s.buf))
	}
	return nil
}

// coverage tracks which bytes of a read have arrived, to reject
// overlapping chunks and detect missing ones.
type coverage struct {
	spans [][2]uint64 // sorted, disjoint, non-adjacent [start, end)
	total uint64
}

func (c *coverage) add(start, end uint64) error {
	// First span starting at or after start.
	i := sort.Search(len(c.spans), func(i int) bool { return c.spans[i][0] >= start })
	if i > 0 && c.spans[i-1][1] > start {
		return protoErrorf("content [%d, %d) overlaps earlier content [%d, %d)", start, end, c.spans[i-1][0], c.spans[i-1][1])
	}
	if i < len(c.spans) && c.spans[i][0] < end {
		return protoErrorf("content [%d, %d) overlaps earlier content [%d, %d)", start, end, c.spans[i][0], c.spans[i][1])
	}
	c.total += end - start
	joinPrev := i > 0 && c.spans[i-1][1] == start
	joinNext := i < len(c.spans) && c.spans[i][0] == end
	switch {
	case joinPrev && joinNext:
		c.spans[i-1][1] = c.spans[i][1]
		c.spans = append(c.spans[:i], c.spans[i+1:]...)
	case joinPrev:
		c.spans[i-1][1] = end
	case joinNext:
		c.spans[i][0] = start
	default:
		if len(c.spans) >= maxSpans {
			return protoErrorf("read reply split into more than %d disjoint pieces", maxSpans)
		}
		c.spans = append(c.spans, [2]uint64{})
		copy(c.spans[i+1:], c.spans[i:])
		c.spans[i] = [2]uint64{start, end}
	}
	return nil
}

// statusReply collects the reply to one NBD_CMD_BLOCK_STATUS covering
// [off, off+length), keeping the extents of context want.
type statusReply struct {
	off, length uint64
	contexts    map[uint32]string // every context the server selected
	want        uint32
	seen        map[uint32]bool
	extents     []Extent
	err         *ServerError
	errs        int
}

func (*statusReply) command() uint16 { return cmdBlockStatus }

func (s *statusReply) simple(_ io.Reader, h replyHeader, _ bool) error {
	if h.errno == 0 {
		return protoErrorf("simple reply without error to NBD_CMD_BLOCK_STATUS")
	}
	return &ServerError{Command: cmdBlockStatus, Errno: h.errno, Offset: -1}
}

func (s *statusReply) chunk(r io.Reader, h replyHeader) error {
	if h.typ == chunkBlockStatus {
		if h.length < 12 || (h.length-4)%8 != 0 {
			return protoErrorf("NBD_REPLY_TYPE_BLOCK_STATUS length %d, want 4+8n with n >= 1", h.length)
		}
		var ib [4]byte
		if _, err := io.ReadFull(r, ib[:]); err != nil {
			return fmt.Errorf("reading NBD_REPLY_TYPE_BLOCK_STATUS context id: %w", noEOF(err))
		}
		id := be.Uint32(ib[:])
		name, ok := s.contexts[id]
		if !ok {
			return protoErrorf("NBD_REPLY_TYPE_BLOCK_STATUS context id %d was not negotiated", id)
		}
		if s.seen == nil {
			s.seen = make(map[uint32]bool, len(s.contexts))
		}
		if s.seen[id] {
			return protoErrorf("second NBD_REPLY_TYPE_BLOCK_STATUS chunk for context %q", name)
		}
		s.seen[id] = true
		n := (h.length - 4) / 8
		if id != s.want {
			return discard(r, int64(n)*8, "NBD_REPLY_TYPE_BLOCK_STATUS descriptors")
		}
		ext, err := readDescriptors(r, n, s.off, s.length)
		if err != nil {
			return fmt.Errorf("context %q: %w", name, err)
		}
		s.extents = ext
		return nil
	}
	se, handled, err := errorChunk(r, h, cmdBlockStatus, s.off, s.length, &s.errs)
	if err != nil {
		return err
	}
	if !handled {
		return protoErrorf("unexpected %s chunk in reply to NBD_CMD_BLOCK_STATUS", chunkName(h.typ))
	}
	if s.err == nil {
		s.err = se
	}
	return nil
}

func (s *statusReply) result() error {
	if s.err != nil {
		return s.err
	}
	if !s.seen[s.want] {
		return protoErrorf("NBD_CMD_BLOCK_STATUS reply lacks context %q", s.contexts[s.want])
	}
	return nil
}

// readDescriptors reads n block status descriptors describing extents from
// off onwards, within [off, off+length). A final descriptor reaching past
// the end is clipped; descriptors beyond maxExtentsPerReply are skipped.
func readDescriptors(r io.Reader, n uint32, off, length uint64) ([]Extent, error) {
	const batch = 512
	keep := min(n, maxExtentsPerReply)
	out := make([]Extent, 0, min(keep, batch))
	var buf [8 * batch]byte
	pos, end := off, off+length
	for i := uint32(0); i < keep; {
		k := min(keep-i, batch)
		if _, err := io.ReadFull(r, buf[:8*k]); err != nil {
			return nil, fmt.Errorf("reading block status descriptors: %w", noEOF(err))
		}
		for j := range k {
			d := buf[8*j:]
			l, fl := uint64(be.Uint32(d)), be.Uint32(d[4:])
			if l == 0 {
				return nil, protoErrorf("block status descriptor %d has length 0", i+j)
			}
			if pos >= end {
				return nil, protoErrorf("block status descriptor %d starts at %d, past the requested end %d", i+j, pos, end)
			}
			e := min(pos+l, end)
			out = append(out, Extent{Off: int64(pos), Len: int64(e - pos), Flags: fl})
			pos = e
		}
		i += k
	}
	if err := discard(r, int64(n-keep)*8, "block status descriptors"); err != nil {
		return nil, err
	}
	return out, nil
}

func discard(r io.Reader, n int64, what string) error {
	if n == 0 {
		return nil
	}
	if _, err := io.CopyN(io.Discard, r, n); err != nil {
		return fmt.Errorf("skipping %s: %w", what, noEOF(err))
	}
	return nil
}

// noEOF turns a clean EOF in the middle of a message into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
