package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// Byte builders for server messages, shared by the fake server, the
// malformed-reply tables and the fuzz seeds.

func optReplyBytes(opt, typ uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func infoExportBytes(size uint64, flags uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

func infoBlockBytes(minB, pref, maxB uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, minB)
	b = binary.BigEndian.AppendUint32(b, pref)
	return binary.BigEndian.AppendUint32(b, maxB)
}

func metaContextBytes(id uint32, name string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, id), name...)
}

func chunkBytes(flags, typ uint16, cookie uint64, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicStructured)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func simpleBytes(errno uint32, cookie uint64, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return append(b, data...)
}

func dataPayload(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func holePayload(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

func errPayload(errno uint32, msg string, off ...uint64) []byte {
	b := binary.BigEndian.AppendUint32(nil, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	for _, o := range off {
		b = binary.BigEndian.AppendUint64(b, o)
	}
	return b
}

// statusPayload encodes a context id followed by (length, flags) pairs.
func statusPayload(id uint32, pairs ...uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, id)
	for _, p := range pairs {
		b = binary.BigEndian.AppendUint32(b, p)
	}
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

type fakeRequest struct {
	flags, typ uint16
	cookie     uint64
	off        uint64
	length     uint32
}

type desc struct{ length, flags uint32 }

// fakeServer is a scriptable NBD server for one connection. Zero values
// give a well-behaved server with structured replies.
type fakeServer struct {
	data         []byte
	export       string
	flags        uint16    // transmission flags; HAS_FLAGS is always added
	noStructured bool      // answer NBD_OPT_STRUCTURED_REPLY with ERR_UNSUP
	noGo         bool      // answer NBD_OPT_GO with ERR_UNSUP
	contexts     []string  // offered metadata contexts; id of contexts[i] is 100+i
	block        [3]uint32 // block size info; zero means not sent
	chunkSize    int       // split structured reads into chunks of this size (0: one chunk)
	reverse      bool      // send read chunks last first
	// status describes [off, off+length) in context name; nil: one extent, flags 0.
	status func(name string, off, length uint64) []desc
	// onOption may replace the reply to an option; handled=false keeps the default.
	onOption func(opt uint32, data []byte) (reply []byte, handled bool)
	// onRequest may replace the reply to a request.
	onRequest func(r fakeRequest) (reply []byte, handled bool)

	done chan struct{} // closed when serve returns

	mu       sync.Mutex
	requests []fakeRequest
}

func (s *fakeServer) recorded() []fakeRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

func (s *fakeServer) serve(conn net.Conn) error {
	be := binary.BigEndian
	g := be.AppendUint64(nil, magicInit)
	g = be.AppendUint64(g, magicOpt)
	g = be.AppendUint16(g, handshakeFixed|handshakeNoZero)
	if _, err := conn.Write(g); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(conn, cf[:]); err != nil {
		return err
	}
	structured := false
	selected := map[uint32]string{}
	for {
		var h [16]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return err
		}
		if be.Uint64(h[:]) != magicOpt {
			return errors.New("fake: bad option magic")
		}
		opt, n := be.Uint32(h[8:]), be.Uint32(h[12:])
		if n > 1<<20 {
			return errors.New("fake: option too long")
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(conn, data); err != nil {
			return err
		}
		if s.onOption != nil {
			if reply, ok := s.onOption(opt, data); ok {
				if _, err := conn.Write(reply); err != nil {
					return err
				}
				if opt == optGo || opt == optExportName {
					break
				}
				continue
			}
		}
		var out []byte
		transmit := false
		switch opt {
		case optStructuredReply:
			if s.noStructured {
				out = optReplyBytes(opt, repErrUnsup, nil)
			} else {
				structured = true
				out = optReplyBytes(opt, repAck, nil)
			}
		case optListMetaContext, optSetMetaContext:
			queries := parseQueries(data)
			for i, c := range s.contexts {
				if opt == optListMetaContext {
					out = append(out, optReplyBytes(opt, repMetaContext, metaContextBytes(0, c))...)
				} else if slices.Contains(queries, c) {
					selected[uint32(100+i)] = c
					out = append(out, optReplyBytes(opt, repMetaContext, metaContextBytes(uint32(100+i), c))...)
				}
			}
			out = append(out, optReplyBytes(opt, repAck, nil)...)
		case optGo:
			if s.noGo {
				out = optReplyBytes(opt, repErrUnsup, nil)
				break
			}
			nl := be.Uint32(data)
			if name := string(data[4 : 4+nl]); name != s.export {
				out = optReplyBytes(opt, repErrUnknown, []byte("no export named "+name))
				break
			}
			out = optReplyBytes(opt, repInfo, infoExportBytes(uint64(len(s.data)), s.flags|FlagHasFlags))
			if s.block != [3]uint32{} {
				out = append(out, optReplyBytes(opt, repInfo, infoBlockBytes(s.block[0], s.block[1], s.block[2]))...)
			}
			out = append(out, optReplyBytes(opt, repAck, nil)...)
			transmit = true
		case optExportName:
			out = be.AppendUint64(nil, uint64(len(s.data)))
			out = be.AppendUint16(out, s.flags|FlagHasFlags)
			transmit = true
		case optAbort:
			conn.Write(optReplyBytes(opt, repAck, nil))
			return nil
		default:
			out = optReplyBytes(opt, repErrUnsup, nil)
		}
		if _, err := conn.Write(out); err != nil {
			return err
		}
		if transmit {
			break
		}
	}
	return s.transmit(conn, structured, selected)
}

func parseQueries(data []byte) []string {
	be := binary.BigEndian
	nl := be.Uint32(data)
	p := data[4+nl:]
	n := be.Uint32(p)
	p = p[4:]
	var out []string
	for range n {
		l := be.Uint32(p)
		out = append(out, string(p[4:4+l]))
		p = p[4+l:]
	}
	return out
}

func (s *fakeServer) transmit(conn net.Conn, structured bool, selected map[uint32]string) error {
	be := binary.BigEndian
	for {
		var h [requestLen]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return err
		}
		if be.Uint32(h[:]) != magicRequest {
			return errors.New("fake: bad request magic")
		}
		r := fakeRequest{flags: be.Uint16(h[4:]), typ: be.Uint16(h[6:]), cookie: be.Uint64(h[8:]), off: be.Uint64(h[16:]), length: be.Uint32(h[24:])}
		s.mu.Lock()
		s.requests = append(s.requests, r)
		s.mu.Unlock()
		if r.typ == cmdDisc {
			return nil
		}
		if s.onRequest != nil {
			if reply, ok := s.onRequest(r); ok {
				if _, err := conn.Write(reply); err != nil {
					return err
				}
				continue
			}
		}
		var out []byte
		switch r.typ {
		case cmdRead:
			out = s.readReply(r, structured)
		case cmdBlockStatus:
			ids := make([]uint32, 0, len(selected))
			for id := range selected {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for i, id := range ids {
				var pairs []uint32
				for _, d := range s.describe(selected[id], r.off, uint64(r.length)) {
					pairs = append(pairs, d.length, d.flags)
				}
				var fl uint16
				if i == len(ids)-1 {
					fl = replyFlagDone
				}
				out = append(out, chunkBytes(fl, chunkBlockStatus, r.cookie, statusPayload(id, pairs...))...)
			}
		default:
			out = chunkBytes(replyFlagDone, chunkError, r.cookie, errPayload(22, "unsupported"))
		}
		if _, err := conn.Write(out); err != nil {
			return err
		}
	}
}

func (s *fakeServer) describe(name string, off, length uint64) []desc {
	if s.status != nil {
		return s.status(name, off, length)
	}
	return []desc{{uint32(length), 0}}
}

func (s *fakeServer) readReply(r fakeRequest, structured bool) []byte {
	end := r.off + uint64(r.length)
	if end > uint64(len(s.data)) {
		if !structured {
			return simpleBytes(22, r.cookie, nil)
		}
		return chunkBytes(replyFlagDone, chunkError, r.cookie, errPayload(22, "read beyond end"))
	}
	if !structured {
		return simpleBytes(0, r.cookie, s.data[r.off:end])
	}
	step := uint64(s.chunkSize)
	if step == 0 {
		step = uint64(r.length)
	}
	var chunks [][]byte
	for o := r.off; o < end; o += step {
		e := min(o+step, end)
		if isZero(s.data[o:e]) {
			chunks = append(chunks, chunkBytes(0, chunkOffsetHole, r.cookie, holePayload(o, uint32(e-o))))
		} else {
			chunks = append(chunks, chunkBytes(0, chunkOffsetData, r.cookie, dataPayload(o, s.data[o:e])))
		}
	}
	if s.reverse {
		slices.Reverse(chunks)
	}
	chunks = append(chunks, chunkBytes(replyFlagDone, chunkNone, r.cookie, nil))
	return cat(chunks...)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// connectFake runs s on one end of a pipe and negotiates opts on the other.
func connectFake(t *testing.T, s *fakeServer, opts Options) (*Client, error) {
	t.Helper()
	cli, srv := net.Pipe()
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		s.serve(srv)
		srv.Close()
	}()
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-s.done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return NewClient(ctx, cli, opts)
}

func mustConnectFake(t *testing.T, s *fakeServer, opts Options) *Client {
	t.Helper()
	c, err := connectFake(t, s, opts)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func binary64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// netPipe returns both ends of a pipe, closed when the test ends.
func netPipe(t *testing.T) (client, server net.Conn) {
	client, server = net.Pipe()
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}
