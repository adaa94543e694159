package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// maxStatusLen bounds the length of one NBD_CMD_BLOCK_STATUS request. It
// fits the 32-bit length field and is a multiple of any minimum block size.
const maxStatusLen = 1 << 30

// Extent is one run of a block status reply.
type Extent struct {
	Off, Len int64
	Flags    uint32 // meaning depends on the context: StateHole, StateZero, StateDirty
}

// Client is a connection to one NBD export in the transmission phase.
// Its methods are safe for concurrent use; requests are sent one at a time.
type Client struct {
	conn net.Conn
	br   *bufio.Reader

	// Set by the handshake, read-only afterwards.
	size                int64
	flags               uint16
	minBlock, prefBlock uint32
	maxBlock            uint32 // as advertised
	maxRequest          uint32 // read request size we use: a multiple of minBlock
	structured          bool
	contexts            map[string]uint32 // selected context name -> id
	names               map[uint32]string // id -> name
	available           []string

	closed atomic.Bool

	mu     sync.Mutex // one request in flight; guards the fields below
	cookie uint64
	err    error // sticky: the stream is out of step or the server is shutting down
	wbuf   []byte
	bounce []byte
}

// Dial connects to addr (network "unix" or "tcp") and negotiates opts.
// ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, addr string, opts Options) (*Client, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	c, err := handshake(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd: %s %s: handshake for export %q: %w", network, addr, opts.Export, err)
	}
	return c, nil
}

// NewClient negotiates opts over an established connection, which the
// Client owns from then on (it is closed if the handshake fails).
func NewClient(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if err := opts.Validate(); err != nil {
		conn.Close()
		return nil, err
	}
	c, err := handshake(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd: handshake for export %q: %w", opts.Export, err)
	}
	return c, nil
}

func handshake(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	if err := ctx.Err(); err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.withContext(ctx, func() error { return c.negotiate(opts) }); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) negotiate(opts Options) error {
	var g [greetingLen]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	hflags, err := parseGreeting(g[:])
	if err != nil {
		return err
	}
	cflags := uint32(clientFixed)
	noZeroes := hflags&handshakeNoZero != 0
	if noZeroes {
		cflags |= clientNoZeroes
	}
	if _, err := c.conn.Write(be.AppendUint32(nil, cflags)); err != nil {
		return fmt.Errorf("sending client flags: %w", err)
	}

	// Structured replies make read replies self-describing (holes, errors
	// with messages) and are required for metadata contexts.
	switch err := c.option(optStructuredReply, nil, nil); {
	case err == nil:
		c.structured = true
	case errors.Is(err, ErrUnsupported):
	default:
		return c.abortOn(err)
	}
	if !c.structured && (len(opts.MetaContexts) > 0 || opts.ListMetaContexts) {
		return c.abortOn(fmt.Errorf("metadata contexts need structured replies: %w", ErrUnsupported))
	}

	if opts.ListMetaContexts {
		err := c.option(optListMetaContext, metaContextData(opts.Export, nil), func(typ uint32, data []byte) error {
			if typ != repMetaContext {
				return protoErrorf("unexpected %s reply to NBD_OPT_LIST_META_CONTEXT", repName(typ))
			}
			_, name, err := parseMetaContext(data)
			c.available = append(c.available, name)
			return err
		})
		if err != nil {
			return c.abortOn(err)
		}
	}

	if len(opts.MetaContexts) > 0 {
		c.contexts = make(map[string]uint32)
		c.names = make(map[uint32]string)
		err := c.option(optSetMetaContext, metaContextData(opts.Export, opts.MetaContexts), func(typ uint32, data []byte) error {
			if typ != repMetaContext {
				return protoErrorf("unexpected %s reply to NBD_OPT_SET_META_CONTEXT", repName(typ))
			}
			id, name, err := parseMetaContext(data)
			if err != nil {
				return err
			}
			if other, dup := c.names[id]; dup {
				return protoErrorf("NBD_REP_META_CONTEXT id %d given to both %q and %q", id, other, name)
			}
			if _, dup := c.contexts[name]; dup {
				return protoErrorf("NBD_REP_META_CONTEXT %q selected twice", name)
			}
			c.names[id], c.contexts[name] = name, id
			return nil
		})
		if err != nil {
			return c.abortOn(err)
		}
		for _, m := range opts.MetaContexts {
			if _, ok := c.contexts[m]; !ok {
				return c.abortOn(fmt.Errorf("context %q not selected by server: %w", m, ErrMetaContextUnavailable))
			}
		}
	}

	var info exportInfo
	// Asking for block sizes also tells the server we honour them.
	err = c.option(optGo, goData(opts.Export, infoBlockSize), func(typ uint32, data []byte) error {
		if typ != repInfo {
			return protoErrorf("unexpected %s reply to NBD_OPT_GO", repName(typ))
		}
		return info.parse(data)
	})
	switch {
	case errors.Is(err, ErrUnsupported):
		// A server predating NBD_OPT_GO; it may drop us on a bad name.
		err = c.exportName(opts.Export, noZeroes, &info)
	case err == nil && !info.haveExport:
		err = protoErrorf("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
	}
	if err != nil {
		return c.abortOn(err)
	}
	c.setExport(&info)
	return nil
}

// option sends one option and reads its replies; fn receives the ones
// before the final reply, and nil means none are expected.
func (c *Client) option(opt uint32, data []byte, fn func(typ uint32, data []byte) error) error {
	if _, err := c.conn.Write(appendOption(nil, opt, data)); err != nil {
		return fmt.Errorf("sending %s: %w", optName(opt), err)
	}
	if fn == nil {
		fn = func(typ uint32, _ []byte) error {
			return protoErrorf("unexpected %s reply to %s", repName(typ), optName(opt))
		}
	}
	return readOptReplies(c.br, opt, fn)
}

// exportName enters transmission with the legacy NBD_OPT_EXPORT_NAME.
func (c *Client) exportName(export string, noZeroes bool, info *exportInfo) error {
	if _, err := c.conn.Write(appendOption(nil, optExportName, []byte(export))); err != nil {
		return fmt.Errorf("sending NBD_OPT_EXPORT_NAME: %w", err)
	}
	n := 10
	if !noZeroes {
		n += exportNamePadLen
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		return fmt.Errorf("reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	data := be.AppendUint16(nil, infoExport)
	return info.parse(append(data, b[:10]...))
}

// abortOn ends negotiation politely when the stream is still in step.
func (c *Client) abortOn(err error) error {
	var oe *OptionError
	if errors.As(err, &oe) || errors.Is(err, ErrMetaContextUnavailable) || errors.Is(err, ErrUnsupported) {
		// Best effort; the protocol lets us drop the connection without
		// waiting for the reply.
		c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.conn.Write(appendOption(nil, optAbort, nil))
	}
	return err
}

func (c *Client) setExport(info *exportInfo) {
	c.size = int64(info.size)
	c.flags = info.flags
	c.minBlock, c.prefBlock, c.maxBlock = 1, 4096, defaultMaxBlock
	if info.haveBlock {
		c.minBlock, c.prefBlock, c.maxBlock = info.minBlock, info.prefBlock, info.maxBlock
	}
	// defaultMaxBlock is a multiple of every valid minimum, so this stays >= minBlock.
	c.maxRequest = min(c.maxBlock, defaultMaxBlock)
	c.maxRequest -= c.maxRequest % c.minBlock
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.size }

// Flags are the export's transmission flags (FlagReadOnly, ...).
func (c *Client) Flags() uint16 { return c.flags }

// BlockSizes are the server's minimum, preferred and maximum block sizes
// (protocol defaults when it did not advertise them).
func (c *Client) BlockSizes() (minimum, preferred, maximum uint32) {
	return c.minBlock, c.prefBlock, c.maxBlock
}

// StructuredReplies reports whether structured replies were negotiated.
func (c *Client) StructuredReplies() bool { return c.structured }

// MetaContexts returns the selected metadata contexts, sorted.
func (c *Client) MetaContexts() []string {
	out := make([]string, 0, len(c.contexts))
	for n := range c.contexts {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// AvailableMetaContexts returns the contexts the server listed when
// Options.ListMetaContexts was set.
func (c *Client) AvailableMetaContexts() []string { return slices.Clone(c.available) }

// ReadAt reads len(p) bytes at off, following io.ReaderAt: a read reaching
// past the end of the export returns the bytes before it and io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt bounded by ctx. Interrupting a request leaves
// the connection unusable.
func (c *Client) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if c.closed.Load() {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= c.size {
		return 0, io.EOF
	}
	want := p
	if rem := c.size - off; int64(len(p)) > rem {
		want = p[:rem]
	}
	var n int
	err := c.do(ctx, func() error {
		for n < len(want) {
			k, err := c.readSpan(want[n:], uint64(off)+uint64(n))
			n += k
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("nbd: read %d bytes at offset %d: %w", len(want), off, err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readSpan issues one read request for the start of dst (at export offset
// off) and returns how many bytes of dst it filled. Requests are widened
// to the minimum block size and capped at maxRequest.
func (c *Client) readSpan(dst []byte, off uint64) (int, error) {
	mb := uint64(c.minBlock)
	start := off - off%mb
	end := min(start+uint64(c.maxRequest), roundUp(off+uint64(len(dst)), mb), uint64(c.size))
	n := min(end, off+uint64(len(dst))) - off
	buf := dst[:n]
	if start != off || end != off+n {
		if cap(c.bounce) < int(end-start) {
			c.bounce = make([]byte, end-start)
		}
		buf = c.bounce[:end-start]
	}
	rr := &readReply{off: start, buf: buf}
	if err := c.roundTrip(cmdRead, start, uint32(end-start), rr); err != nil {
		return 0, err
	}
	if start != off || end != off+n {
		copy(dst[:n], buf[off-start:])
	}
	return int(n), nil
}

// BlockStatus describes [off, off+length) in metadata context name, which
// must have been selected in Options.MetaContexts. The extents are sorted,
// contiguous, cover the range exactly, and adjacent extents with equal
// flags are merged. Servers may describe less than asked per request; this
// keeps asking until the range is covered, so callers should bound length
// (a fragmented bitmap yields one extent per granule).
func (c *Client) BlockStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	id, ok := c.contexts[name]
	if !ok {
		return nil, fmt.Errorf("nbd: block status: context %q: %w", name, ErrMetaContextUnavailable)
	}
	if off < 0 || length < 0 || off > c.size || length > c.size-off {
		return nil, fmt.Errorf("nbd: block status: range [%d, +%d) outside export of %d bytes", off, length, c.size)
	}
	var out []Extent
	if length == 0 {
		return out, nil
	}
	err := c.do(ctx, func() error {
		mb := uint64(c.minBlock)
		end := uint64(off + length)
		covered := uint64(off) // extents before this are already in out
		reqStart := uint64(off) - uint64(off)%mb
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			reqEnd := min(roundUp(end, mb), uint64(c.size), reqStart+maxStatusLen)
			sr := &statusReply{off: reqStart, length: reqEnd - reqStart, contexts: c.names, want: id}
			if err := c.roundTrip(cmdBlockStatus, reqStart, uint32(reqEnd-reqStart), sr); err != nil {
				return err
			}
			for _, e := range sr.extents {
				s, t := max(uint64(e.Off), covered), min(uint64(e.Off+e.Len), end)
				if s < t {
					out = appendExtent(out, Extent{Off: int64(s), Len: int64(t - s), Flags: e.Flags})
					covered = t
				}
			}
			// readDescriptors guarantees at least one non-empty extent.
			last := sr.extents[len(sr.extents)-1]
			lastEnd := uint64(last.Off + last.Len)
			if lastEnd >= end {
				return nil
			}
			next := lastEnd - lastEnd%mb
			if next <= reqStart {
				// Less than a block described: go on unaligned rather than
				// ask the same question again.
				next = lastEnd
			}
			reqStart = next
		}
	})
	if err != nil {
		return nil, fmt.Errorf("nbd: block status %q [%d, +%d): %w", name, off, length, err)
	}
	return out, nil
}

func appendExtent(out []Extent, e Extent) []Extent {
	if n := len(out); n > 0 && out[n-1].Flags == e.Flags && out[n-1].Off+out[n-1].Len == e.Off {
		out[n-1].Len += e.Len
		return out
	}
	return append(out, e)
}

func roundUp(x, m uint64) uint64 {
	if r := x % m; r != 0 {
		return x + m - r
	}
	return x
}

// do runs one exchange with the server under the request lock.
func (c *Client) do(ctx context.Context, fn func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if c.err != nil {
		return fmt.Errorf("connection unusable after earlier error: %w", c.err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := c.withContext(ctx, fn)
	if err == nil {
		return nil
	}
	if c.closed.Load() {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	// A server error leaves the stream in step, except ESHUTDOWN, after
	// which the protocol wants us to disconnect.
	var se *ServerError
	if !errors.As(err, &se) || se.Errno == 108 {
		c.err = err
	}
	return err
}

// roundTrip sends one request and reads its whole reply.
func (c *Client) roundTrip(typ uint16, off uint64, length uint32, rh replyHandler) error {
	c.cookie++
	c.wbuf = appendRequest(c.wbuf[:0], 0, typ, c.cookie, off, length)
	if _, err := c.conn.Write(c.wbuf); err != nil {
		return fmt.Errorf("sending %s: %w", cmdName(typ), err)
	}
	return receiveReply(c.br, c.structured, c.cookie, rh)
}

// withContext runs fn with the connection's deadline tied to ctx, so that
// cancelling ctx interrupts blocked I/O.
func (c *Client) withContext(ctx context.Context, fn func() error) error {
	if ctx.Done() == nil {
		return fn()
	}
	dl, hasDL := ctx.Deadline()
	if hasDL {
		c.conn.SetDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	err := fn()
	if !stop() {
		<-fired
	}
	c.conn.SetDeadline(time.Time{})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w (%v)", cerr, err)
		}
		if hasDL && errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
		}
	}
	return err
}

// Close sends NBD_CMD_DISC when the connection is idle and healthy, then
// closes it. A request in flight is aborted rather than waited for.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.mu.TryLock() {
		if c.err == nil {
			c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			c.cookie++
			c.conn.Write(appendRequest(nil, 0, cmdDisc, c.cookie, 0, 0))
		}
		c.mu.Unlock()
	}
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("nbd: close: %w", err)
	}
	return nil
}
