package migstream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// randBytes is n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// sb builds streams field by field, valid or not. mark remembers the
// offset of the field a test expects an error at.
type sb struct {
	bytes.Buffer
	mark int64
}

func (s *sb) at() *sb { s.mark = int64(s.Len()); return s }

func (s *sb) u8(v byte) *sb { s.WriteByte(v); return s }

func (s *sb) be32(v uint32) *sb { s.Write(binary.BigEndian.AppendUint32(nil, v)); return s }

func (s *sb) be64(v uint64) *sb { s.Write(binary.BigEndian.AppendUint64(nil, v)); return s }

func (s *sb) str(v string) *sb { s.u8(byte(len(v))); s.WriteString(v); return s }

func (s *sb) raw(b []byte) *sb { s.Write(b); return s }

// magic writes the file header without a configuration.
func (s *sb) magic() *sb { return s.be32(fileMagic).be32(fileVersion) }

// header writes the file header and a configuration with no subsections.
func (s *sb) header() *sb { return s.magic().u8(secConfig).be32(13).raw([]byte("pc-i440fx-7.2")) }

func (s *sb) sub(name string, version uint32) *sb { return s.u8(secSubsection).str(name).be32(version) }

// caps writes a configuration/capabilities subsection.
func (s *sb) caps(names ...string) *sb {
	s.sub(subCaps, 1).be32(uint32(len(names)))
	for _, n := range names {
		s.str(n)
	}
	return s
}

func (s *sb) start(sid uint32) *sb {
	return s.u8(secStart).be32(sid).str("ram").be32(0).be32(ramVersion)
}

func (s *sb) part(sid uint32) *sb { return s.u8(secPart).be32(sid) }
func (s *sb) end(sid uint32) *sb  { return s.u8(secEnd).be32(sid) }

// memSize writes a MEM_SIZE record with the blocks (GPAs when gpa).
func (s *sb) memSize(gpa bool, blocks ...Block) *sb {
	var total int64
	for _, b := range blocks {
		total += b.Length
	}
	s.be64(uint64(total) | flagMemSize)
	for _, b := range blocks {
		s.str(b.ID).be64(uint64(b.Length))
		if gpa {
			s.be64(b.GPA)
		}
	}
	return s
}

// page writes a PAGE record; an empty id sets CONTINUE.
func (s *sb) page(id string, off int64, data []byte) *sb {
	return s.rec(flagPage, id, off).raw(data)
}

// zero writes a ZERO record; an empty id sets CONTINUE.
func (s *sb) zero(id string, off int64, fill byte) *sb {
	return s.rec(flagZero, id, off).u8(fill)
}

func (s *sb) rec(flag uint64, id string, off int64) *sb {
	if id == "" {
		return s.be64(uint64(off) | flag | flagContinue)
	}
	return s.be64(uint64(off) | flag).str(id)
}

func (s *sb) eos() *sb              { return s.be64(flagEOS) }
func (s *sb) footer(sid uint32) *sb { return s.u8(secFooter).be32(sid) }
func (s *sb) device() *sb           { return s.raw(testDevice) }
func (s *sb) bytes() []byte         { return bytes.Clone(s.Bytes()) }

// testDevice is a small device tail shaped like QEMU's: one FULL section,
// the EOF marker and a VMDESCRIPTION.
var testDevice = func() []byte {
	var s sb
	s.u8(secFull).be32(3).str("timer").be32(0).be32(2).raw(make([]byte, 24)).footer(3)
	s.u8(secFull).be32(4).str("globalstate").be32(0).be32(1).be32(7).raw([]byte("paused\x00")).footer(4)
	desc := `{"page_size": 4096, "devices": [{"name": "timer"}, {"name": "globalstate"}]}`
	s.u8(secEOF).u8(secVMDesc).be32(uint32(len(desc))).raw([]byte(desc))
	return s.bytes()
}()

var (
	blkRAM  = Block{ID: "pc.ram", Length: 8 * PageSize}
	blkVRAM = Block{ID: "0000:00:02.0/vga.vram", Length: 2 * PageSize}
)

// pageOf is a page filled with a recognisable pattern.
func pageOf(tag byte) []byte {
	p := bytes.Repeat([]byte{tag}, PageSize)
	p[0], p[PageSize-1] = 0xA5, tag^0xFF
	return p
}

// smallStream is a valid three-section stream with a few records.
func smallStream() []byte {
	var s sb
	s.header().start(2).memSize(false, blkRAM, blkVRAM).
		page("pc.ram", 0, pageOf(1)).zero("", PageSize, 0).eos().footer(2).
		part(2).page("", 2*PageSize, pageOf(2)).page(blkVRAM.ID, PageSize, pageOf(3)).eos().footer(2).
		end(2).zero("pc.ram", 7*PageSize, 0x5A).eos().footer(2).device()
	return s.bytes()
}

// recorder is a Handler that keeps the last record of every page in
// memory, for tests and fuzzing (it never maps block-sized memory).
type recorder struct {
	blocks []Block
	calls  int
	pages  map[[2]int64][]byte // (block, off) -> data, or one fill byte
	order  []string
}

func newRecorder() *recorder { return &recorder{pages: map[[2]int64][]byte{}} }

func (r *recorder) Blocks(b []Block) error {
	r.calls++
	r.blocks = b
	return nil
}

func (r *recorder) check(i int, off int64) error {
	if r.calls != 1 || i < 0 || i >= len(r.blocks) || off < 0 || off%PageSize != 0 || off+PageSize > r.blocks[i].Length {
		return fmt.Errorf("bad record block %d off 0x%x (blocks %v, %d Blocks calls)", i, off, r.blocks, r.calls)
	}
	return nil
}

func (r *recorder) Page(i int, off int64, data []byte) error {
	if err := r.check(i, off); err != nil {
		return err
	}
	if len(data) != PageSize {
		return fmt.Errorf("page of %d bytes", len(data))
	}
	r.pages[[2]int64{int64(i), off}] = bytes.Clone(data)
	r.order = append(r.order, fmt.Sprintf("P%d:%x", i, off))
	return nil
}

func (r *recorder) Zero(i int, off int64, fill byte) error {
	if err := r.check(i, off); err != nil {
		return err
	}
	r.pages[[2]int64{int64(i), off}] = []byte{fill}
	r.order = append(r.order, fmt.Sprintf("Z%d:%x=%x", i, off, fill))
	return nil
}
