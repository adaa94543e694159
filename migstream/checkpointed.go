package migstream

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
)

// migCmdEnableCOLO is QEMU's MIG_CMD_ENABLE_COLO (savevm.c, enum
// qemu_vm_cmd): a COMMAND section with no data that a source with the
// x-colo capability sends before RAM START.
const migCmdEnableCOLO = 8

// Checkpointed reads a stream that goes on after its first complete pass:
// QEMU's COLO ("x-colo") migration. The first pass is a normal stream with
// one ENABLE_COLO command before RAM START; QEMU then waits for the
// receiving side and, at each checkpoint, sends only the RAM dirtied since
// the previous one as a RAM END section followed by an EOF byte. Between
// them come COLO messages and device-state buffers, which the caller reads
// from Reader. RAM records arrive at the same Handler throughout, and
// CONTINUE carries over from one part to the next as in QEMU's loader.
//
// Not safe for concurrent use; Close returns the read buffer.
type Checkpointed struct {
	p *parser
}

// NewCheckpointed reads from r, calling h for every RAM record.
func NewCheckpointed(r io.Reader, h Handler, o Options) *Checkpointed {
	p := newParser(r, h, o)
	p.colo = true
	return &Checkpointed{p: p}
}

// Full parses the first pass, up to the end of its VMDESCRIPTION, and
// reads nothing past it. The device tail has no length of its own: it
// ends where the bytes received so far end with the EOF marker and a
// VMDESCRIPTION (valid JSON) of exactly the right length. That test
// cannot be fooled by later bytes because a COLO source sends nothing
// after the first pass until the receiving side answers.
func (c *Checkpointed) Full() (*Result, error) {
	p := c.p
	if err := p.header(); err != nil {
		return nil, err
	}
	for !p.ended {
		if err := p.section(); err != nil {
			return nil, err
		}
	}
	if !p.coloEnabled {
		return nil, malformed(p.r.off, "stream without the ENABLE_COLO command (source lacks x-colo)")
	}
	if err := p.openTail(); err != nil {
		return nil, err
	}
	p.stats.StreamBytes = p.r.off
	skel, err := p.sk.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return &Result{Blocks: slices.Clone(p.sk.Blocks), Skeleton: skel, Stats: p.stats}, nil
}

// Checkpoint parses the RAM part of one checkpoint (QEMU's
// qemu_savevm_live_state: the RAM END section and an EOF byte) and
// returns what it held.
func (c *Checkpointed) Checkpoint() (Stats, error) {
	p := c.p
	if !p.ended {
		return Stats{}, fmt.Errorf("migstream: Checkpoint before the first pass was parsed")
	}
	before := p.stats
	r := &p.r
	off := r.off
	t, err := r.u8("checkpoint section type")
	if err != nil {
		return Stats{}, err
	}
	if t != secEnd {
		return Stats{}, malformed(off, "checkpoint section type 0x%02x (%s), want 0x%02x (END)", t, sectionName(t), secEnd)
	}
	sidOff := r.off
	sid, err := r.be32("section id")
	if err != nil {
		return Stats{}, err
	}
	if sid != p.sk.RAM.ID {
		return Stats{}, malformed(sidOff, "END section id %d, RAM section is %d", sid, p.sk.RAM.ID)
	}
	if err := p.records(false); err != nil {
		return Stats{}, err
	}
	if err := p.footer(sid); err != nil {
		return Stats{}, err
	}
	eofOff := r.off
	e, err := r.u8("checkpoint EOF marker")
	if err != nil {
		return Stats{}, err
	}
	if e != secEOF {
		return Stats{}, malformed(eofOff, "after the checkpoint's RAM: section type 0x%02x (%s), want 0x00 (EOF)", e, sectionName(e))
	}
	p.stats.StreamBytes = r.off
	return Stats{
		Pages:       p.stats.Pages - before.Pages,
		ZeroPages:   p.stats.ZeroPages - before.ZeroPages,
		Sections:    p.stats.Sections - before.Sections,
		StreamBytes: r.off - off,
	}, nil
}

// Reader reads the stream's next bytes (COLO messages, device buffers)
// through the parser's buffer, keeping the offsets in errors right.
func (c *Checkpointed) Reader() io.Reader { return (*offsetReader)(&c.p.r) }

// Offset is the number of stream bytes consumed so far.
func (c *Checkpointed) Offset() int64 { return c.p.r.off }

// Close returns the read buffer; c must not be used afterwards.
func (c *Checkpointed) Close() {
	if c.p.r.br != nil {
		c.p.release()
	}
}

type offsetReader reader

func (o *offsetReader) Read(b []byte) (int, error) {
	n, err := o.br.Read(b)
	o.off += int64(n)
	return n, err
}

// command reads a COMMAND section (0x08, be16 command, be16 length,
// data). Only ENABLE_COLO, once and before RAM START, is accepted, and only
// by a Checkpointed parser.
func (p *parser) command(off int64) error {
	if !p.colo {
		return unsupported(off, "COMMAND section (postcopy, return path or COLO)")
	}
	b, err := p.r.take(4, "command header")
	if err != nil {
		return err
	}
	cmd, n := binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
	if cmd != migCmdEnableCOLO {
		return unsupported(off, "COMMAND %d (only ENABLE_COLO, %d, is handled)", cmd, migCmdEnableCOLO)
	}
	if n != 0 || p.started || p.coloEnabled {
		return malformed(off, "ENABLE_COLO command with %d data bytes, after RAM START or repeated", n)
	}
	p.coloEnabled = true
	return nil
}

// openTail reads the device tail of a stream that does not end after it
// (see Checkpointed.Full): chunk by chunk, as the bytes arrive, until they
// end with EOF and a complete VMDESCRIPTION.
func (p *parser) openTail() error {
	r := &p.r
	off := r.off
	var buf bytes.Buffer
	chunk := make([]byte, 64<<10)
	for {
		n, err := r.br.Read(chunk)
		buf.Write(chunk[:n])
		if int64(buf.Len()) > p.opt.MaxDeviceState {
			return unsupported(off, "device state larger than the %d-byte limit", p.opt.MaxDeviceState)
		}
		tail := buf.Bytes()
		if n > 0 && tail[len(tail)-1] == '}' {
			if d := vmdescStart(tail); d > 0 && json.Valid(tail[d:]) {
				if tail[0] != secFull {
					return malformed(off, "device state starts with section type 0x%02x (%s), want 0x%02x (FULL)", tail[0], sectionName(tail[0]), secFull)
				}
				r.off += int64(len(tail))
				p.sk.device = bytes.Clone(tail)
				p.sk.vmdesc = d
				return nil
			}
		}
		if err != nil {
			return r.fail(err, buf.Len(), buf.Len()+1, "device state up to a complete VMDESCRIPTION")
		}
	}
}
