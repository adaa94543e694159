package migstream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Skeleton is a parsed device-only stream: everything of a migration
// stream except RAM content. It comes from Parse (as Result.Skeleton
// bytes) through ParseSkeleton, which keeps the header, configuration and
// device state verbatim.
type Skeleton struct {
	// Blocks is the RAM block list. WriteStream and Bytes announce it as
	// given, so a caller may drop blocks the destination should keep as it
	// initialised them; QEMU checks each listed length against its own.
	Blocks []Block

	Machine      string   // machine type from the configuration, e.g. "pc-i440fx-7.2"
	Capabilities []string // from "configuration/capabilities" (only x-ignore-shared in 7.2)
	UUID         []byte   // 16 bytes from "configuration/uuid", nil if absent
	RAM          SectionHeader

	ignoreShared bool   // block list entries carry a GPA
	capsSpan     [2]int // the capabilities subsection in header, if any
	header       []byte // magic, version and CONFIGURATION section, verbatim
	device       []byte // everything after the RAM END footer, verbatim
	vmdesc       int    // offset of the VMDESCRIPTION JSON in device
}

// IgnoreShared reports whether the source had the x-ignore-shared
// capability, which adds a GPA to every block list entry.
func (s *Skeleton) IgnoreShared() bool { return s.ignoreShared }

// WithoutIgnoreShared returns the skeleton as a source without the
// x-ignore-shared capability would have sent it: no capabilities
// subsection in the configuration, no GPAs in the block list. The device
// state is the same either way; a destination then loads it without the
// capability, with RAM from elsewhere (-mem-path).
func (s *Skeleton) WithoutIgnoreShared() *Skeleton {
	c := *s
	if !s.ignoreShared {
		return &c
	}
	c.header = slices.Concat(s.header[:s.capsSpan[0]], s.header[s.capsSpan[1]:])
	c.capsSpan = [2]int{}
	c.ignoreShared, c.Capabilities = false, nil
	c.Blocks = slices.Clone(s.Blocks)
	for i := range c.Blocks {
		c.Blocks[i].GPA, c.Blocks[i].HasGPA = 0, false
	}
	return &c
}

// DeviceState is the verbatim device tail: FULL sections, EOF marker and
// VMDESCRIPTION. The caller must not modify it.
func (s *Skeleton) DeviceState() []byte { return s.device }

// VMDescription is the JSON that ends the device tail: page size and the
// vmstate layout of every device section. The caller must not modify it.
func (s *Skeleton) VMDescription() []byte { return s.device[s.vmdesc:] }

// MarshalBinary encodes the skeleton: a stream with the block list and no
// page records, loadable by a destination whose RAM already holds the
// content (-mem-path). It fails only for a Skeleton not made by
// ParseSkeleton, or one whose Blocks were made invalid.
func (s *Skeleton) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	if err := WriteStream(&b, s, nil); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ParseSkeleton checks a skeleton and returns its block list and verbatim
// parts. Page records and PART sections are errors (ErrMalformed).
func ParseSkeleton(b []byte) (*Skeleton, error) {
	p := newParser(bytes.NewReader(b), nil, Options{MaxDeviceState: int64(len(b)) + 1})
	p.skeleton = true
	defer p.release()
	if err := p.run(); err != nil {
		return nil, err
	}
	sk := p.sk
	sk.Blocks = slices.Clone(sk.Blocks)
	sk.header = slices.Clone(sk.header)
	sk.device = slices.Clone(sk.device)
	return &sk, nil
}

// writeChunk is how much of a block WriteStream reads at a time.
const writeChunk = 1 << 20

// WriteStream writes a full, loadable stream: the skeleton's header and
// configuration, RAM START with the block list, then for every block whose
// content is given (ram[i] != nil, Length bytes) one record per page (ZERO
// with fill 0 for all-zero pages, PAGE otherwise), EOS, footer, RAM END
// (EOS, footer), device tail. Blocks with nil content (and blocks past the
// end of ram) are listed but get no records: QEMU keeps what the
// destination initialised. Block GPAs are written exactly when the
// skeleton's configuration has x-ignore-shared; then give no content for
// shared blocks, as QEMU refuses pages of ignored blocks.
func WriteStream(w io.Writer, sk *Skeleton, ram []io.ReaderAt) error {
	if err := sk.check(len(ram)); err != nil {
		return err
	}
	e := encoder{w: bufio.NewWriterSize(w, writeChunk)}
	e.write(sk.header)
	e.u8(secStart)
	e.be32(sk.RAM.ID)
	e.counted(ramIDStr)
	e.be32(sk.RAM.Instance)
	e.be32(sk.RAM.Version)
	var total int64
	for _, b := range sk.Blocks {
		total += b.Length
	}
	e.be64(uint64(total) | flagMemSize)
	for _, b := range sk.Blocks {
		e.counted(b.ID)
		e.be64(uint64(b.Length))
		if sk.ignoreShared {
			e.be64(b.GPA)
		}
	}
	if len(ram) > 0 {
		if err := writePages(&e, sk.Blocks, ram); err != nil {
			return err
		}
	}
	e.be64(flagEOS)
	e.footer(sk.RAM.ID)
	e.u8(secEnd)
	e.be32(sk.RAM.ID)
	e.be64(flagEOS)
	e.footer(sk.RAM.ID)
	e.write(sk.device)
	if e.err != nil {
		return fmt.Errorf("migstream: writing stream: %w", e.err)
	}
	if err := e.w.Flush(); err != nil {
		return fmt.Errorf("migstream: writing stream: %w", err)
	}
	return nil
}

// check rejects skeletons WriteStream could not encode so QEMU (or Parse)
// would read them back the same way.
func (s *Skeleton) check(nram int) error {
	if s == nil || len(s.header) == 0 || len(s.device) == 0 {
		return errors.New("migstream: skeleton has no header or device state (use ParseSkeleton)")
	}
	if nram > len(s.Blocks) {
		return fmt.Errorf("migstream: %d RAM contents for %d blocks", nram, len(s.Blocks))
	}
	if len(s.Blocks) > MaxBlocks {
		return fmt.Errorf("migstream: %d RAM blocks, at most %d", len(s.Blocks), MaxBlocks)
	}
	var total int64
	seen := map[string]bool{}
	for _, b := range s.Blocks {
		if b.ID == "" || len(b.ID) > 255 || seen[b.ID] {
			return fmt.Errorf("migstream: RAM block id %q empty, too long or repeated", b.ID)
		}
		seen[b.ID] = true
		if b.Length <= 0 || b.Length%PageSize != 0 {
			return fmt.Errorf("migstream: RAM block %q length %d is not a positive page multiple", b.ID, b.Length)
		}
		total += b.Length
		if total > MaxRAM {
			return fmt.Errorf("migstream: RAM blocks add up to more than %d GiB", MaxRAM>>30)
		}
	}
	return nil
}

// writePages emits one record per page of each block with content.
func writePages(e *encoder, blocks []Block, ram []io.ReaderAt) error {
	buf := make([]byte, writeChunk)
	last := -1
	for i, src := range ram {
		if src == nil {
			continue
		}
		b := blocks[i]
		for off := int64(0); off < b.Length; off += writeChunk {
			chunk := buf[:min(writeChunk, b.Length-off)]
			n, err := src.ReadAt(chunk, off)
			if n < len(chunk) {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("migstream: reading RAM block %q at 0x%x: %w", b.ID, off+int64(n), err)
			}
			for p := 0; p < len(chunk); p += PageSize {
				page := chunk[p : p+PageSize]
				hdr := uint64(off + int64(p))
				zero := isZero(page)
				if zero {
					hdr |= flagZero
				} else {
					hdr |= flagPage
				}
				// CONTINUE as QEMU's save_page_header sets it: the id is
				// sent only when the block changes.
				if last == i {
					hdr |= flagContinue
				}
				e.be64(hdr)
				if last != i {
					e.counted(b.ID)
					last = i
				}
				if zero {
					e.u8(0)
				} else {
					e.write(page)
				}
			}
			if e.err != nil {
				return fmt.Errorf("migstream: writing stream: %w", e.err)
			}
		}
	}
	return nil
}

var zeroPage [PageSize]byte

func isZero(page []byte) bool { return bytes.Equal(page, zeroPage[:]) }

// encoder writes big-endian fields; the first error sticks.
type encoder struct {
	w   *bufio.Writer
	err error
	tmp [8]byte
}

func (e *encoder) write(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) u8(v byte) {
	if e.err == nil {
		e.err = e.w.WriteByte(v)
	}
}

func (e *encoder) be32(v uint32) {
	binary.BigEndian.PutUint32(e.tmp[:4], v)
	e.write(e.tmp[:4])
}

func (e *encoder) be64(v uint64) {
	binary.BigEndian.PutUint64(e.tmp[:], v)
	e.write(e.tmp[:])
}

func (e *encoder) counted(s string) {
	e.u8(byte(len(s)))
	if e.err == nil {
		_, e.err = e.w.WriteString(s)
	}
}

func (e *encoder) footer(sid uint32) {
	e.u8(secFooter)
	e.be32(sid)
}
