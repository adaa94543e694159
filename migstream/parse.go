package migstream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
)

// Handler receives RAM content as the stream is parsed. A page may arrive
// several times (later passes re-send dirtied pages); the last record wins.
// data is only valid during the call.
type Handler interface {
	// Blocks is called once, from the RAM START section's MEM_SIZE record.
	// The handler may keep the slice but must not modify it.
	Blocks(blocks []Block) error
	// Page delivers one page: block indexes the Blocks slice, off is the
	// byte offset in the block, len(data) == PageSize.
	Page(block int, off int64, data []byte) error
	// Zero reports a page whose every byte is fill.
	Zero(block int, off int64, fill byte) error
}

// Options tune Parse. The zero value is ready to use.
type Options struct {
	// MaxDeviceState bounds the verbatim device tail (everything after the
	// RAM END section); 0 means DefaultMaxDeviceState.
	MaxDeviceState int64
}

// Stats counts what Parse saw.
type Stats struct {
	Pages, ZeroPages int64 // records seen (all passes)
	Sections         int   // RAM sections (START+PARTs+END)
	StreamBytes      int64
	// Background: the RAM sections ended with no RAM END, the device
	// state following the last PART (a background snapshot's stream).
	Background bool
}

// Result is what Parse returns for a complete stream.
type Result struct {
	Blocks []Block
	// Skeleton is a device-only stream: the stream's header and
	// configuration, the RAM block list with no page records, and the
	// device state. See the package documentation and ParseSkeleton.
	Skeleton []byte
	Stats    Stats
}

// Parse reads a whole stream from r (until EOF) and calls h for every RAM
// record, in stream order. A nil h only checks the stream. Errors from h
// are returned wrapped, with the offset of the record.
func Parse(r io.Reader, h Handler, o Options) (*Result, error) {
	p := newParser(r, h, o)
	defer p.release()
	if err := p.run(); err != nil {
		return nil, err
	}
	skel, err := p.sk.MarshalBinary()
	if err != nil {
		return nil, err // a parsed block list always encodes; kept for safety
	}
	return &Result{Blocks: slices.Clone(p.sk.Blocks), Skeleton: skel, Stats: p.stats}, nil
}

// readBufSize is large enough that a page record never straddles a refill
// in the common case and refills are big sequential reads.
const readBufSize = 1 << 20

// reader tracks the stream offset and hands out slices of the bufio
// buffer, so page data is copied only once (into the handler).
type reader struct {
	br  *bufio.Reader
	off int64
	// While recording, consumed bytes are appended to rec: the header and
	// configuration are kept verbatim this way.
	recording bool
	rec       []byte
}

// take consumes the next n bytes (n <= readBufSize) and returns them; the
// slice is valid until the next call.
func (r *reader) take(n int, what string) ([]byte, error) {
	b, err := r.br.Peek(n)
	if len(b) < n {
		return nil, r.fail(err, len(b), n, what)
	}
	if r.recording {
		r.rec = append(r.rec, b...)
	}
	// Discard of buffered bytes never reads, so b stays valid.
	r.br.Discard(n)
	r.off += int64(n)
	return b, nil
}

// fail describes a read of n bytes that found only got: a truncation
// (ErrMalformed) at EOF, else the reader's error.
func (r *reader) fail(err error, got, n int, what string) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return malformed(r.off+int64(got), "truncated stream: %s needs %d bytes, %d left", what, n, got)
	}
	return fmt.Errorf("migstream: offset %d: reading %s: %w", r.off+int64(got), what, err)
}

func (r *reader) u8(what string) (byte, error) {
	b, err := r.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *reader) be32(what string) (uint32, error) {
	b, err := r.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (r *reader) be64(what string) (uint64, error) {
	b, err := r.take(8, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// counted reads a u8 length and that many bytes (QEMU's counted string).
func (r *reader) counted(what string) ([]byte, error) {
	n, err := r.u8(what + " length")
	if err != nil {
		return nil, err
	}
	return r.take(int(n), what)
}

type nopHandler struct{}

func (nopHandler) Blocks([]Block) error          { return nil }
func (nopHandler) Page(int, int64, []byte) error { return nil }
func (nopHandler) Zero(int, int64, byte) error   { return nil }

type parser struct {
	r     reader
	h     Handler
	opt   Options
	sk    Skeleton
	stats Stats

	// skeleton makes page records and PART sections errors (ParseSkeleton).
	skeleton bool
	// colo accepts the ENABLE_COLO command (Checkpointed); coloEnabled
	// says it was seen.
	colo, coloEnabled bool

	started, ended bool
	index          map[string]int // block id -> index in sk.Blocks
	last           int            // block of the previous page record, for CONTINUE
}

func newParser(r io.Reader, h Handler, o Options) *parser {
	if h == nil {
		h = nopHandler{}
	}
	if o.MaxDeviceState <= 0 {
		o.MaxDeviceState = DefaultMaxDeviceState
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	return &parser{r: reader{br: br}, h: h, opt: o, last: -1}
}

// release returns the read buffer; nothing handed out may point into it
// afterwards (page data is only lent during Handler calls).
func (p *parser) release() {
	p.r.br.Reset(nil)
	readers.Put(p.r.br)
	p.r.br = nil
}

// readers recycles the 1 MiB read buffers across parses.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

func (p *parser) run() error {
	if err := p.header(); err != nil {
		return err
	}
	for !p.ended {
		if p.backgroundTail() {
			break
		}
		if err := p.section(); err != nil {
			return err
		}
	}
	if err := p.deviceTail(); err != nil {
		return err
	}
	p.stats.StreamBytes = p.r.off
	return nil
}

// backgroundTail says whether the device tail starts here, right after a
// RAM section's footer with no RAM END: the layout of a background
// snapshot (the background-snapshot capability), whose migration thread
// writes RAM by PART sections only, then the device state it saved when
// the guest stopped. A precopy stream never has a FULL section before
// RAM END, so this accepts nothing a precopy stream could mean otherwise.
func (p *parser) backgroundTail() bool {
	if !p.started || p.skeleton {
		return false
	}
	next, _ := p.r.br.Peek(1)
	if len(next) == 1 && next[0] == secFull {
		p.ended, p.stats.Background = true, true
		return true
	}
	return false
}

// header reads the file header and the CONFIGURATION section, keeping
// their bytes verbatim for the skeleton.
func (p *parser) header() error {
	r := &p.r
	r.recording = true
	b, err := r.take(8, "file header")
	if err != nil {
		return err
	}
	if m := binary.BigEndian.Uint32(b); m != fileMagic {
		return malformed(0, "file magic 0x%08x, want 0x%08x (\"QEVM\")", m, fileMagic)
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != fileVersion {
		return malformed(4, "file version %d, want %d", v, fileVersion)
	}
	off := r.off
	t, err := r.u8("configuration section type")
	if err != nil {
		return err
	}
	if t != secConfig {
		return malformed(off, "section type 0x%02x (%s), want 0x%02x (CONFIGURATION)", t, sectionName(t), secConfig)
	}
	off = r.off
	n, err := r.be32("machine name length")
	if err != nil {
		return err
	}
	if n == 0 || n > maxMachineName {
		return malformed(off, "machine name length %d (want 1..%d)", n, maxMachineName)
	}
	name, err := r.take(int(n), "machine name")
	if err != nil {
		return err
	}
	p.sk.Machine = string(name)
	seen := map[string]bool{}
	for {
		// A configuration is always followed by a section, so EOF here is
		// a truncation like any other.
		next, err := r.br.Peek(1)
		if len(next) == 0 {
			return r.fail(err, 0, 1, "section type")
		}
		if next[0] != secSubsection {
			break
		}
		if err := p.subsection(seen); err != nil {
			return err
		}
	}
	r.recording = false
	p.sk.header = r.rec
	r.rec = nil
	return nil
}

// subsection reads one configuration subsection: 0x05, counted name, be32
// version, then the fields of that subsection.
func (p *parser) subsection(seen map[string]bool) error {
	r := &p.r
	start := len(r.rec)
	if _, err := r.take(1, "subsection marker"); err != nil {
		return err
	}
	off := r.off
	nb, err := r.counted("configuration subsection name")
	if err != nil {
		return err
	}
	name := string(nb)
	if name != subCaps && name != subUUID {
		return unsupported(off, "configuration subsection %q", name)
	}
	if seen[name] {
		return malformed(off, "configuration subsection %q repeated", name)
	}
	seen[name] = true
	voff := r.off
	v, err := r.be32("subsection version")
	if err != nil {
		return err
	}
	if v != 1 {
		return unsupported(voff, "%s version %d", name, v)
	}
	if name == subUUID {
		u, err := r.take(16, "configuration uuid")
		if err != nil {
			return err
		}
		p.sk.UUID = slices.Clone(u)
		return nil
	}
	coff := r.off
	count, err := r.be32("capability count")
	if err != nil {
		return err
	}
	if count > maxCaps {
		return malformed(coff, "capability count %d (at most %d)", count, maxCaps)
	}
	for range count {
		off := r.off
		c, err := r.counted("capability name")
		if err != nil {
			return err
		}
		// QEMU 7.2 validates (and so sends) only x-ignore-shared; any other
		// name comes from a newer QEMU whose semantics we do not know.
		if string(c) != capIgnoreShared {
			return unsupported(off, "migration capability %q", c)
		}
		p.sk.Capabilities = append(p.sk.Capabilities, string(c))
		p.sk.ignoreShared = true
	}
	p.sk.capsSpan = [2]int{start, len(r.rec)}
	return nil
}

// section reads one section up to and including its footer.
func (p *parser) section() error {
	r := &p.r
	off := r.off
	t, err := r.u8("section type")
	if err != nil {
		return err
	}
	switch t {
	case secStart:
		return p.startSection(off)
	case secPart, secEnd:
		if p.skeleton && t == secPart {
			return malformed(off, "PART section in a skeleton")
		}
		sidOff := r.off
		sid, err := r.be32("section id")
		if err != nil {
			return err
		}
		if !p.started {
			return malformed(off, "%s section (id %d) before RAM START", sectionName(t), sid)
		}
		if sid != p.sk.RAM.ID {
			return malformed(sidOff, "%s section id %d, RAM section is %d", sectionName(t), sid, p.sk.RAM.ID)
		}
		if err := p.records(false); err != nil {
			return err
		}
		if err := p.footer(sid); err != nil {
			return err
		}
		p.ended = t == secEnd
		return nil
	case secFull:
		if !p.started {
			return malformed(off, "device section (FULL) before RAM START")
		}
		return unsupported(off, "device section (FULL) before RAM END")
	case secCommand:
		return p.command(off)
	case secEOF:
		return malformed(off, "end of sections (EOF) before RAM END")
	}
	return malformed(off, "section type 0x%02x (%s)", t, sectionName(t))
}

func (p *parser) startSection(off int64) error {
	r := &p.r
	sid, err := r.be32("section id")
	if err != nil {
		return err
	}
	idOff := r.off
	id, err := r.counted("section idstr")
	if err != nil {
		return err
	}
	if string(id) != ramIDStr {
		return unsupported(idOff, "iterable section %q (only \"ram\" is handled)", id)
	}
	if p.started {
		return malformed(off, "second RAM START section")
	}
	inst, err := r.be32("instance id")
	if err != nil {
		return err
	}
	vOff := r.off
	ver, err := r.be32("version id")
	if err != nil {
		return err
	}
	if ver != ramVersion {
		return malformed(vOff, "RAM section version %d, want %d", ver, ramVersion)
	}
	p.started = true
	p.sk.RAM = SectionHeader{ID: sid, Instance: inst, Version: ver}
	if err := p.records(true); err != nil {
		return err
	}
	return p.footer(sid)
}

func (p *parser) footer(sid uint32) error {
	off := p.r.off
	b, err := p.r.take(5, "section footer")
	if err != nil {
		return err
	}
	if b[0] != secFooter {
		return malformed(off, "section footer marker 0x%02x, want 0x%02x", b[0], secFooter)
	}
	if got := binary.BigEndian.Uint32(b[1:]); got != sid {
		return malformed(off+1, "footer section id %d, want %d", got, sid)
	}
	return nil
}

// records reads the RAM records of one section through its EOS.
func (p *parser) records(start bool) error {
	r := &p.r
	p.stats.Sections++
	for first := true; ; first = false {
		off := r.off
		v, err := r.be64("RAM record header")
		if err != nil {
			return err
		}
		flags := v & flagMask
		addr := v &^ flagMask // unsigned until checked against a block length
		switch flags &^ flagContinue {
		case flagPage, flagZero:
			if p.sk.Blocks == nil {
				return malformed(off, "RAM page record before the block list (MEM_SIZE)")
			}
			if p.skeleton {
				return malformed(off, "RAM page record in a skeleton")
			}
			bi, err := p.block(flags, off)
			if err != nil {
				return err
			}
			if addr >= uint64(p.sk.Blocks[bi].Length) {
				return malformed(off, "page offset 0x%x beyond RAM block %q (length 0x%x)", addr, p.sk.Blocks[bi].ID, p.sk.Blocks[bi].Length)
			}
			pos := int64(addr)
			if flags&flagPage != 0 {
				data, err := r.take(PageSize, "PAGE data")
				if err != nil {
					return err
				}
				p.stats.Pages++
				if err := p.h.Page(bi, pos, data); err != nil {
					return handlerErr(off, "Page", p.sk.Blocks[bi].ID, pos, err)
				}
			} else {
				fill, err := r.u8("ZERO fill byte")
				if err != nil {
					return err
				}
				p.stats.ZeroPages++
				if err := p.h.Zero(bi, pos, fill); err != nil {
					return handlerErr(off, "Zero", p.sk.Blocks[bi].ID, pos, err)
				}
			}
		case flagMemSize:
			if !start || !first {
				return malformed(off, "MEM_SIZE record outside the start of the RAM START section")
			}
			if err := p.blockList(off, addr); err != nil {
				return err
			}
		case flagEOS:
			if start && p.sk.Blocks == nil {
				return malformed(off, "RAM START section without a block list (MEM_SIZE)")
			}
			return nil
		case flagXBZRLE:
			return unsupported(off, "RAM record flags 0x%x (XBZRLE)", flags)
		case flagHook:
			return unsupported(off, "RAM record flags 0x%x (HOOK, RDMA)", flags)
		case flagCompressPage:
			return unsupported(off, "RAM record flags 0x%x (COMPRESS_PAGE)", flags)
		case flagMultifdFlush:
			return unsupported(off, "RAM record flags 0x%x (MULTIFD_FLUSH)", flags)
		default:
			return malformed(off, "RAM record flags 0x%x (unknown combination)", flags)
		}
	}
}

func handlerErr(off int64, method, id string, addr int64, err error) error {
	return fmt.Errorf("migstream: offset %d: handler %s(%q, 0x%x): %w", off, method, id, addr, err)
}

// block resolves the block a ZERO/PAGE record refers to: the previous
// record's block with CONTINUE (also across sections, as QEMU's loader
// does), else a counted idstr following the header.
func (p *parser) block(flags uint64, off int64) (int, error) {
	if flags&flagContinue != 0 {
		if p.last < 0 {
			return 0, malformed(off, "CONTINUE record with no previous block")
		}
		return p.last, nil
	}
	idOff := p.r.off
	id, err := p.r.counted("RAM block id")
	if err != nil {
		return 0, err
	}
	i, ok := p.index[string(id)] // no allocation for the lookup
	if !ok {
		return 0, malformed(idOff, "unknown RAM block %q", id)
	}
	p.last = i
	return i, nil
}

// blockList reads the MEM_SIZE block list: blocks follow until their
// lengths add up to total, as QEMU's loader counts them.
func (p *parser) blockList(off int64, total uint64) error {
	r := &p.r
	if total > MaxRAM {
		return unsupported(off, "MEM_SIZE 0x%x exceeds the %d GiB limit", total, MaxRAM>>30)
	}
	blocks := []Block{}
	p.index = map[string]int{}
	for rem := total; rem > 0; {
		idOff := r.off
		if len(blocks) == MaxBlocks {
			return unsupported(idOff, "more than %d RAM blocks", MaxBlocks)
		}
		id, err := r.counted("RAM block id")
		if err != nil {
			return err
		}
		if len(id) == 0 {
			return malformed(idOff, "empty RAM block id")
		}
		b := Block{ID: string(id)}
		if _, dup := p.index[b.ID]; dup {
			return malformed(idOff, "RAM block %q listed twice", b.ID)
		}
		lOff := r.off
		n, err := r.be64("RAM block length")
		if err != nil {
			return err
		}
		if n == 0 || n%PageSize != 0 || n > rem {
			return malformed(lOff, "RAM block %q length 0x%x (want a nonzero page multiple within the 0x%x left of MEM_SIZE)", b.ID, n, rem)
		}
		b.Length = int64(n)
		// The postcopy page-size field only follows when the source
		// advised postcopy with a COMMAND section, which is rejected
		// before RAM START; x-ignore-shared adds the GPA.
		if p.sk.ignoreShared {
			if b.GPA, err = r.be64("RAM block GPA"); err != nil {
				return err
			}
			b.HasGPA = true
		}
		p.index[b.ID] = len(blocks)
		blocks = append(blocks, b)
		rem -= n
	}
	p.sk.Blocks = blocks
	if err := p.h.Blocks(slices.Clone(blocks)); err != nil {
		return fmt.Errorf("migstream: offset %d: handler Blocks: %w", off, err)
	}
	return nil
}

// deviceTail keeps everything after the RAM END footer verbatim.
func (p *parser) deviceTail() error {
	r := &p.r
	off := r.off
	max := p.opt.MaxDeviceState
	limit := max // read one byte more than allowed to tell "too large"
	if limit < math.MaxInt64 {
		limit++
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r.br, limit))
	if err != nil {
		return fmt.Errorf("migstream: offset %d: reading device state: %w", off+n, err)
	}
	if n > max {
		return unsupported(off, "device state larger than the %d-byte limit", max)
	}
	if n == 0 {
		return malformed(off, "truncated stream: no device state after RAM END")
	}
	tail := buf.Bytes()
	if tail[0] != secFull {
		return malformed(off, "device state starts with section type 0x%02x (%s), want 0x%02x (FULL)", tail[0], sectionName(tail[0]), secFull)
	}
	d := vmdescStart(tail)
	if d < 0 {
		return malformed(off+n, "device state does not end with EOF (0x00) and a VMDESCRIPTION (0x06) of the right length: truncated stream?")
	}
	r.off += n
	p.sk.device = tail
	p.sk.vmdesc = d
	return nil
}

// vmdescStart finds the EOF marker and VMDESCRIPTION that end a device
// tail, returning the JSON's offset in tail or -1. Without decoding
// vmstate this is the one check that catches a stream cut inside the
// device sections. The JSON holds no NUL byte, so the match scanning back
// from the end is the real one.
func vmdescStart(tail []byte) int {
	for i := len(tail) - 6; i >= 1; i-- {
		if tail[i] != secEOF || tail[i+1] != secVMDesc {
			continue
		}
		if n := binary.BigEndian.Uint32(tail[i+2:]); int64(n) == int64(len(tail)-i-6) {
			j := tail[i+6:]
			if len(j) >= 2 && j[0] == '{' && j[len(j)-1] == '}' {
				return i + 6
			}
		}
	}
	return -1
}
