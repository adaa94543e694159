package migstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// ram starts a stream through the RAM START block list.
func ram(gpa bool, blocks ...Block) *sb {
	s := &sb{}
	if len(blocks) == 0 {
		blocks = []Block{blkRAM, blkVRAM}
	}
	return s.header().start(2).memSize(gpa, blocks...)
}

// finish closes the START section and adds an empty END and the device tail.
func finish(s *sb) []byte {
	return s.eos().footer(2).end(2).eos().footer(2).device().bytes()
}

// TestParseBackground: a background snapshot's stream (RAM START, PARTs,
// then the device tail with no RAM END) parses to the same RAM and
// skeleton as the precopy stream of the same content.
func TestParseBackground(t *testing.T) {
	page := pageOf(5)
	pre := finish(ram(false).page("pc.ram", 0, page))
	bg := ram(false).page("pc.ram", 0, page).eos().footer(2).part(2).zero("pc.ram", 4096, 0).eos().footer(2).device().bytes()
	want, err := Parse(bytes.NewReader(pre), NewFlat(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := NewFlat()
	got, err := Parse(bytes.NewReader(bg), f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Stats.Background || want.Stats.Background {
		t.Errorf("Background %v for the background stream, %v for the precopy one", got.Stats.Background, want.Stats.Background)
	}
	if !bytes.Equal(got.Skeleton, want.Skeleton) {
		t.Error("the background stream's skeleton differs from the precopy stream's")
	}
	if !bytes.Equal(f.Block(0)[:4096], page) {
		t.Error("the background stream's page is not in the image")
	}
	// A skeleton is always written with its RAM END.
	if _, err := ParseSkeleton(bg); err == nil {
		t.Error("ParseSkeleton accepted a stream with PART sections")
	}
}

func TestParseErrors(t *testing.T) {
	type tc struct {
		name  string
		build func() *sb // the mark is the offset the error must name
		kind  error
		msg   string
		opt   Options
	}
	page := pageOf(9)
	cases := []tc{
		{"bad magic", func() *sb { s := (&sb{}).at(); s.be32(0x51455645).be32(3); return s }, ErrMalformed, "file magic", Options{}},
		{"version 2", func() *sb { s := (&sb{}).be32(fileMagic).at(); s.be32(2); return s }, ErrMalformed, "file version 2", Options{}},
		{"no configuration", func() *sb { s := (&sb{}).magic().at(); s.start(2); return s }, ErrMalformed, "want 0x07 (CONFIGURATION)", Options{}},
		{"empty machine name", func() *sb { s := (&sb{}).magic().u8(secConfig).at(); s.be32(0); return s }, ErrMalformed, "machine name length 0", Options{}},
		{"huge machine name", func() *sb { s := (&sb{}).magic().u8(secConfig).at(); s.be32(1 << 30); return s }, ErrMalformed, "machine name length", Options{}},
		{"target-page-bits subsection", func() *sb {
			s := (&sb{}).header()
			s.u8(secSubsection).at().str("configuration/target-page-bits").be32(1).be32(12)
			return s
		}, ErrUnsupported, `configuration subsection "configuration/target-page-bits"`, Options{}},
		{"capabilities version 2", func() *sb {
			s := (&sb{}).header().u8(secSubsection).str(subCaps).at()
			s.be32(2)
			return s
		}, ErrUnsupported, "version 2", Options{}},
		{"unknown capability", func() *sb {
			s := (&sb{}).header().sub(subCaps, 1).be32(1).at()
			s.str("postcopy-ram")
			return s
		}, ErrUnsupported, `migration capability "postcopy-ram"`, Options{}},
		{"too many capabilities", func() *sb {
			s := (&sb{}).header().sub(subCaps, 1).at()
			s.be32(1000)
			return s
		}, ErrMalformed, "capability count 1000", Options{}},
		{"repeated uuid", func() *sb {
			s := (&sb{}).header().sub(subUUID, 1).raw(make([]byte, 16)).u8(secSubsection).at()
			s.str(subUUID).be32(1).raw(make([]byte, 16))
			return s
		}, ErrMalformed, "repeated", Options{}},
		{"unknown section type", func() *sb { s := (&sb{}).header().at(); s.u8(0x09); return s }, ErrMalformed, "section type 0x09", Options{}},
		{"COMMAND section", func() *sb { s := (&sb{}).header().at(); s.u8(secCommand).be32(1); return s }, ErrUnsupported, "COMMAND section", Options{}},
		{"block iterable", func() *sb {
			s := (&sb{}).header().u8(secStart).be32(1).at()
			s.str("block").be32(0).be32(1)
			return s
		}, ErrUnsupported, `iterable section "block"`, Options{}},
		{"dirty-bitmap after ram", func() *sb {
			s := ram(false).eos().footer(2).u8(secStart).be32(3).at()
			s.str("dirty-bitmap").be32(0).be32(1)
			return s
		}, ErrUnsupported, `iterable section "dirty-bitmap"`, Options{}},
		{"second RAM START", func() *sb { s := ram(false).eos().footer(2).at(); s.start(3); return s }, ErrMalformed, "second RAM START", Options{}},
		{"RAM version 5", func() *sb {
			s := (&sb{}).header().u8(secStart).be32(2).str("ram").be32(0).at()
			s.be32(5)
			return s
		}, ErrMalformed, "RAM section version 5, want 4", Options{}},
		{"PART before START", func() *sb { s := (&sb{}).header().at(); s.part(2); return s }, ErrMalformed, "PART section (id 2) before RAM START", Options{}},
		{"PART of another section", func() *sb { s := ram(false).eos().footer(2).u8(secPart).at(); s.be32(7); return s }, ErrMalformed, "PART section id 7, RAM section is 2", Options{}},
		{"END of another section", func() *sb { s := ram(false).eos().footer(2).u8(secEnd).at(); s.be32(3); return s }, ErrMalformed, "END section id 3", Options{}},
		{"FULL before START", func() *sb { s := (&sb{}).header().at(); s.device(); return s }, ErrMalformed, "device section (FULL) before RAM START", Options{}},
		{"EOF before END", func() *sb { s := ram(false).eos().footer(2).at(); s.u8(secEOF); return s }, ErrMalformed, "(EOF) before RAM END", Options{}},
		{"XBZRLE", func() *sb { s := ram(false).at(); s.be64(flagXBZRLE).str("pc.ram"); return s }, ErrUnsupported, "RAM record flags 0x40 (XBZRLE)", Options{}},
		{"XBZRLE continue", func() *sb {
			s := ram(false).page("pc.ram", 0, page).at()
			s.be64(flagXBZRLE | flagContinue)
			return s
		}, ErrUnsupported, "RAM record flags 0x60 (XBZRLE)", Options{}},
		{"HOOK", func() *sb { s := ram(false).at(); s.be64(flagHook); return s }, ErrUnsupported, "flags 0x80 (HOOK", Options{}},
		{"COMPRESS_PAGE", func() *sb { s := ram(false).at(); s.be64(flagCompressPage).str("pc.ram"); return s }, ErrUnsupported, "flags 0x100 (COMPRESS_PAGE)", Options{}},
		{"multifd flush", func() *sb { s := ram(false).at(); s.be64(flagMultifdFlush); return s }, ErrUnsupported, "MULTIFD_FLUSH", Options{}},
		{"obsolete FULL flag", func() *sb { s := ram(false).at(); s.be64(flagFull); return s }, ErrMalformed, "flags 0x1 (unknown", Options{}},
		{"PAGE|ZERO", func() *sb { s := ram(false).at(); s.be64(flagPage | flagZero).str("pc.ram"); return s }, ErrMalformed, "flags 0xa (unknown", Options{}},
		{"flag 0x400", func() *sb { s := ram(false).at(); s.be64(0x400); return s }, ErrMalformed, "flags 0x400 (unknown", Options{}},
		{"page beyond block", func() *sb {
			s := ram(false).at()
			s.page("0000:00:02.0/vga.vram", 2*PageSize, page)
			return s
		}, ErrMalformed, `page offset 0x2000 beyond RAM block "0000:00:02.0/vga.vram" (length 0x2000)`, Options{}},
		{"page offset with the top bit set", func() *sb { s := ram(false).at(); s.page("pc.ram", -1<<48, page); return s }, ErrMalformed, "page offset 0xffff000000000000 beyond", Options{}},
		{"page far beyond block", func() *sb { s := ram(false).at(); s.zero("pc.ram", 1<<50, 0); return s }, ErrMalformed, "beyond RAM block", Options{}},
		{"unknown block", func() *sb { s := ram(false).be64(flagPage).at(); s.str("pc.rom").raw(page); return s }, ErrMalformed, `unknown RAM block "pc.rom"`, Options{}},
		{"CONTINUE first", func() *sb { s := ram(false).at(); s.page("", 0, page); return s }, ErrMalformed, "CONTINUE record with no previous block", Options{}},
		{"page before block list", func() *sb { s := (&sb{}).header().start(2).at(); s.page("pc.ram", 0, page); return s }, ErrMalformed, "before the block list", Options{}},
		{"START without block list", func() *sb { s := (&sb{}).header().start(2).at(); s.eos(); return s }, ErrMalformed, "without a block list", Options{}},
		{"second MEM_SIZE", func() *sb { s := ram(false).at(); s.memSize(false, blkRAM); return s }, ErrMalformed, "MEM_SIZE record outside", Options{}},
		{"MEM_SIZE in PART", func() *sb { s := ram(false).eos().footer(2).part(2).at(); s.memSize(false, blkRAM); return s }, ErrMalformed, "MEM_SIZE record outside", Options{}},
		{"footer marker", func() *sb { s := ram(false).eos().at(); s.u8(0x7F).be32(2); return s }, ErrMalformed, "section footer marker 0x7f", Options{}},
		{"footer section id", func() *sb { s := ram(false).eos().u8(secFooter).at(); s.be32(3); return s }, ErrMalformed, "footer section id 3, want 2", Options{}},
		{"END footer section id", func() *sb {
			s := ram(false).eos().footer(2).end(2).eos().u8(secFooter).at()
			s.be32(0)
			return s
		}, ErrMalformed, "footer section id 0, want 2", Options{}},
		{"block length not a page multiple", func() *sb {
			s := (&sb{}).header().start(2).be64(2*PageSize | flagMemSize).str("pc.ram").at()
			s.be64(PageSize + 1)
			return s
		}, ErrMalformed, `RAM block "pc.ram" length 0x1001`, Options{}},
		{"block length zero", func() *sb {
			s := (&sb{}).header().start(2).be64(PageSize | flagMemSize).str("pc.ram").at()
			s.be64(0)
			return s
		}, ErrMalformed, "length 0x0", Options{}},
		{"blocks exceed MEM_SIZE", func() *sb {
			s := (&sb{}).header().start(2).be64(PageSize | flagMemSize).str("pc.ram").at()
			s.be64(2 * PageSize)
			return s
		}, ErrMalformed, "0x1000 left of MEM_SIZE", Options{}},
		{"empty block id", func() *sb {
			s := (&sb{}).header().start(2).be64(PageSize | flagMemSize).at()
			s.str("").be64(PageSize)
			return s
		}, ErrMalformed, "empty RAM block id", Options{}},
		{"duplicate block", func() *sb {
			s := (&sb{}).header().start(2).be64(2*PageSize | flagMemSize).str("a").be64(PageSize).at()
			s.str("a").be64(PageSize)
			return s
		}, ErrMalformed, `RAM block "a" listed twice`, Options{}},
		{"MEM_SIZE above 1 TiB", func() *sb { s := (&sb{}).header().start(2).at(); s.be64(1<<41 | flagMemSize); return s }, ErrUnsupported, "exceeds the 1024 GiB limit", Options{}},
		{"too many blocks", func() *sb {
			s := (&sb{}).header().start(2).be64((MaxBlocks+1)*PageSize | flagMemSize)
			for i := range MaxBlocks {
				s.str(fmt.Sprint(i)).be64(PageSize)
			}
			s.at().str("last").be64(PageSize)
			return s
		}, ErrUnsupported, "more than 1024 RAM blocks", Options{}},
		{"no device state", func() *sb { s := ram(false).eos().footer(2).end(2).eos().footer(2).at(); return s }, ErrMalformed, "no device state after RAM END", Options{}},
		{"device state not FULL", func() *sb {
			s := ram(false).eos().footer(2).end(2).eos().footer(2).at()
			s.u8(secEOF).raw(testDevice)
			return s
		}, ErrMalformed, "device state starts with section type 0x00 (EOF)", Options{}},
		{"device state too large", func() *sb { s := ram(false).eos().footer(2).end(2).eos().footer(2).at(); s.device(); return s }, ErrUnsupported, "device state larger than the 100-byte limit", Options{MaxDeviceState: 100}},
		{"device state without VMDESCRIPTION", func() *sb {
			s := ram(false).eos().footer(2).end(2).eos().footer(2).device()
			s.Truncate(s.Len() - 1)
			s.at()
			return s
		}, ErrMalformed, "VMDESCRIPTION", Options{}},
		{"truncated in a page", func() *sb {
			s := ram(false).be64(flagPage).str("pc.ram").raw(page[:100]).at()
			return s
		}, ErrMalformed, "truncated stream: PAGE data needs 4096 bytes, 100 left", Options{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.build()
			b := s.bytes()
			_, err := Parse(bytes.NewReader(b), newRecorder(), c.opt)
			if !errors.Is(err, c.kind) {
				t.Fatalf("error %v, want %v", err, c.kind)
			}
			other := ErrUnsupported
			if c.kind == ErrUnsupported {
				other = ErrMalformed
			}
			if errors.Is(err, other) {
				t.Errorf("error %v also matches %v", err, other)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FormatError", err)
			}
			if fe.Offset != s.mark {
				t.Errorf("error at offset %d, want %d: %v", fe.Offset, s.mark, err)
			}
			want := fmt.Sprintf("migstream: offset %d: ", s.mark)
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q, want prefix %q and %q", err, want, c.msg)
			}
		})
	}
}

// TestParseErrorMessage pins the message format callers see.
func TestParseErrorMessage(t *testing.T) {
	s := (&sb{}).header().start(2)
	s.be64(uint64(PageSize) | flagMemSize).str("pc.ram").be64(PageSize).be64(flagXBZRLE)
	_, err := Parse(bytes.NewReader(s.bytes()), nil, Options{})
	const want = "migstream: offset 66: RAM record flags 0x40 (XBZRLE): unsupported"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

func TestParseHandlerAndReadErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		name string
		h    Handler
	}{
		{"Blocks", failing{blocks: boom}},
		{"Page", failing{page: boom}},
		{"Zero", failing{zero: boom}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(bytes.NewReader(smallStream()), c.h, Options{})
			if !errors.Is(err, boom) || errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "handler "+c.name) {
				t.Fatalf("error %v, want the handler's", err)
			}
		})
	}
	t.Run("reader", func(t *testing.T) {
		b := smallStream()
		r := io.MultiReader(bytes.NewReader(b[:100]), iotest.ErrReader(boom))
		_, err := Parse(r, nil, Options{})
		if !errors.Is(err, boom) || errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "offset 100") {
			t.Fatalf("error %v, want the reader's at offset 100", err)
		}
	})
}

type failing struct{ blocks, page, zero error }

func (f failing) Blocks([]Block) error          { return f.blocks }
func (f failing) Page(int, int64, []byte) error { return f.page }
func (f failing) Zero(int, int64, byte) error   { return f.zero }

// TestTruncation cuts a small stream at every byte: each cut must be an
// ErrMalformed, never a panic or a success.
func TestTruncation(t *testing.T) {
	b := smallStream()
	for n := range len(b) {
		readers := []io.Reader{bytes.NewReader(b[:n])}
		// Short reads too, where the structure is dense (not every byte:
		// that is quadratic in the stream size).
		if n < 200 || n > len(b)-400 || n%97 == 0 {
			readers = append(readers, iotest.OneByteReader(bytes.NewReader(b[:n])))
		}
		for _, r := range readers {
			_, err := Parse(r, newRecorder(), Options{})
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("cut at %d of %d: error %v, want ErrMalformed", n, len(b), err)
			}
		}
	}
	if _, err := Parse(iotest.OneByteReader(bytes.NewReader(b)), nil, Options{}); err != nil {
		t.Fatalf("whole stream, one byte per read: %v", err)
	}
}

// TestMultiPass checks that later records win, CONTINUE follows the
// previous record's block (also across sections), and Flat and the stats
// agree with what was sent.
func TestMultiPass(t *testing.T) {
	a, b, c, d, e, f := pageOf(0xA), pageOf(0xB), pageOf(0xC), pageOf(0xD), pageOf(0xE), pageOf(0xF)
	s := ram(false)
	// pass 1: data, data, zero, data
	s.page("pc.ram", 0, a).page("", PageSize, b).zero("", 2*PageSize, 0).page("", 4*PageSize, f).eos().footer(2)
	// pass 2: zero after data, data after zero, data twice; the first
	// record continues pc.ram from the previous section.
	s.part(2).zero("", 0, 0).page("", 2*PageSize, c).page("", PageSize, d).eos().footer(2)
	// pass 3: a filled page, another block by id, CONTINUE within it, a
	// data page that turns all-zero, back to pc.ram by id.
	s.part(2).zero("", 3*PageSize, 0x55).page(blkVRAM.ID, PageSize, e).zero("", 0, 0x77).
		page("pc.ram", 4*PageSize, make([]byte, PageSize)).eos().footer(2)
	// END: a filled page overwritten by zero in the same section.
	s.end(2).zero("", 5*PageSize, 0x11).zero("", 5*PageSize, 0).eos().footer(2).device()

	want := [][]byte{make([]byte, blkRAM.Length), make([]byte, blkVRAM.Length)}
	copy(want[0][PageSize:], d)
	copy(want[0][2*PageSize:], c)
	copy(want[0][3*PageSize:], bytes.Repeat([]byte{0x55}, PageSize))
	copy(want[1][0:], bytes.Repeat([]byte{0x77}, PageSize))
	copy(want[1][PageSize:], e)
	wantNZ := [][]bool{{false, true, true, true, false, false, false, false}, {true, true}}

	fl := NewFlat()
	defer fl.Close()
	res, err := Parse(bytes.NewReader(s.bytes()), fl, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(fl.Block(i), want[i]) {
			t.Errorf("block %d differs", i)
		}
		for p, nz := range wantNZ[i] {
			if fl.NonZero(i).Get(int64(p)) != nz {
				t.Errorf("block %d page %d: NonZero %v, want %v", i, p, !nz, nz)
			}
		}
	}
	wantStats := Stats{Pages: 7, ZeroPages: 6, Sections: 4, StreamBytes: int64(s.Len())}
	if res.Stats != wantStats {
		t.Errorf("stats %+v, want %+v", res.Stats, wantStats)
	}
	if !slices.Equal(res.Blocks, []Block{blkRAM, blkVRAM}) {
		t.Errorf("blocks %+v", res.Blocks)
	}

	// The recorder sees the records in stream order with resolved blocks.
	rec := newRecorder()
	if _, err := Parse(bytes.NewReader(s.bytes()), rec, Options{}); err != nil {
		t.Fatal(err)
	}
	wantOrder := []string{"P0:0", "P0:1000", "Z0:2000=0", "P0:4000", "Z0:0=0", "P0:2000", "P0:1000",
		"Z0:3000=55", "P1:1000", "Z1:0=77", "P0:4000", "Z0:5000=11", "Z0:5000=0"}
	if !slices.Equal(rec.order, wantOrder) {
		t.Errorf("records %v\nwant      %v", rec.order, wantOrder)
	}
}

func TestConfigurationSubsections(t *testing.T) {
	uuid := []byte("0123456789abcdef")
	s := (&sb{}).header().caps(capIgnoreShared).sub(subUUID, 1).raw(uuid)
	gpaRAM, gpaVRAM := blkRAM, blkVRAM
	gpaRAM.GPA, gpaRAM.HasGPA = 0, true
	gpaVRAM.GPA, gpaVRAM.HasGPA = 0xfd000000, true
	s.start(2).memSize(true, gpaRAM, gpaVRAM).page(blkVRAM.ID, 0, pageOf(1)).eos().footer(2).end(2).eos().footer(2).device()
	rec := newRecorder()
	res, err := Parse(bytes.NewReader(s.bytes()), rec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Blocks, []Block{gpaRAM, gpaVRAM}) || !slices.Equal(rec.blocks, res.Blocks) {
		t.Fatalf("blocks %+v", res.Blocks)
	}
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatal(err)
	}
	if !sk.IgnoreShared() || !slices.Equal(sk.Capabilities, []string{capIgnoreShared}) || !bytes.Equal(sk.UUID, uuid) || sk.Machine != "pc-i440fx-7.2" {
		t.Errorf("skeleton configuration %q %q %q", sk.Machine, sk.Capabilities, sk.UUID)
	}
	if !slices.Equal(sk.Blocks, res.Blocks) {
		t.Errorf("skeleton blocks %+v", sk.Blocks)
	}
	// The configuration is kept verbatim, subsections and all.
	cfgLen := 8 + 1 + 4 + 13 + (2 + len(subCaps) + 8 + 1 + len(capIgnoreShared)) + (2 + len(subUUID) + 4 + 16)
	if !bytes.Equal(res.Skeleton[:cfgLen], s.Bytes()[:cfgLen]) {
		t.Error("configuration not kept verbatim")
	}

	// Without x-ignore-shared it is the skeleton of the same stream cut
	// without the capability.
	plain, err := sk.WithoutIgnoreShared().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	s2 := (&sb{}).header().sub(subUUID, 1).raw(uuid)
	s2.start(2).memSize(false, blkRAM, blkVRAM).page(blkVRAM.ID, 0, pageOf(1)).eos().footer(2).end(2).eos().footer(2).device()
	res2, err := Parse(bytes.NewReader(s2.bytes()), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain, res2.Skeleton) {
		t.Error("the skeleton without x-ignore-shared differs from one cut without it")
	}
	if sk2, err := ParseSkeleton(plain); err != nil || sk2.IgnoreShared() || !bytes.Equal(sk2.UUID, uuid) {
		t.Errorf("the skeleton without x-ignore-shared: %v", err)
	}
}

// TestEmptyBlockList: MEM_SIZE 0 announces no blocks; QEMU accepts such
// a stream when RAM comes from elsewhere.
func TestEmptyBlockList(t *testing.T) {
	s := (&sb{}).header().start(2).be64(flagMemSize).eos().footer(2).end(2).eos().footer(2).device()
	res, err := Parse(bytes.NewReader(s.bytes()), NewFlat(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blocks) != 0 || !bytes.Equal(res.Skeleton, s.Bytes()) {
		t.Fatalf("blocks %v, skeleton equal %v", res.Blocks, bytes.Equal(res.Skeleton, s.Bytes()))
	}
}

func TestFlatHandlerMisuse(t *testing.T) {
	fl := NewFlat()
	defer fl.Close()
	if err := fl.Blocks([]Block{blkRAM}); err != nil {
		t.Fatal(err)
	}
	if err := fl.Blocks([]Block{blkRAM}); err == nil {
		t.Error("second Blocks call accepted")
	}
	for _, c := range []struct {
		i   int
		off int64
	}{{1, 0}, {-1, 0}, {0, blkRAM.Length}, {0, 1}, {0, -PageSize}} {
		if err := fl.Page(c.i, c.off, pageOf(1)); err == nil {
			t.Errorf("Page(%d, %d) accepted", c.i, c.off)
		}
		if err := fl.Zero(c.i, c.off, 1); err == nil {
			t.Errorf("Zero(%d, %d) accepted", c.i, c.off)
		}
	}
	if err := fl.Page(0, 0, make([]byte, 10)); err == nil {
		t.Error("short page accepted")
	}
	if err := NewFlat().Blocks([]Block{{ID: "x", Length: 100}}); err == nil {
		t.Error("unaligned block length mapped")
	}
}
