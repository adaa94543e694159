package migstream

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/drsync/drsync/vfs/memfs"
)

// fuzzSeeds are small valid streams and skeletons plus a few mutations.
// They stay small (one PAGE record) because the fuzzer minimises every new
// interesting input and that is slow for big ones.
func fuzzSeeds(t testing.TB) [][]byte {
	var s sb
	s.header().start(2).memSize(false, blkRAM, blkVRAM).
		page("pc.ram", 0, pageOf(1)).zero("", PageSize, 0).eos().footer(2).
		part(2).zero("", 2*PageSize, 7).zero(blkVRAM.ID, PageSize, 0).eos().footer(2).
		end(2).zero("pc.ram", 7*PageSize, 0x5A).eos().footer(2).device()
	small := s.bytes()
	_, gpaSkel := skeletonFor(t, true, []Block{blkRAM, blkVRAM})
	res, err := Parse(bytes.NewReader(small), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var bg sb // a background snapshot's layout: no RAM END
	bg.header().start(2).memSize(false, blkRAM, blkVRAM).
		page("pc.ram", 0, pageOf(1)).eos().footer(2).
		part(2).zero("", 2*PageSize, 7).eos().footer(2).device()
	seeds := [][]byte{small, gpaSkel, res.Skeleton, bg.bytes()}
	for _, off := range []int{0, 9, 27, 44, 52, 60, 80, 4170, 4200, len(small) - 5} {
		m := bytes.Clone(small)
		m[off] ^= 0x20
		seeds = append(seeds, m, small[:off])
	}
	return seeds
}

// image is what Flat and Spool share: a Handler whose blocks read back.
type image interface {
	Handler
	Flush() error
	ReaderAt(i int) io.ReaderAt
	NonZero(i int) *Bitmap
	Close() error
}

// fuzzHandler records every record and, when the blocks are small, also
// fills a Flat and a Spool so that each can be compared with the records.
type fuzzHandler struct {
	*recorder
	images []image
}

func (f *fuzzHandler) Blocks(b []Block) error {
	var total int64
	for _, x := range b {
		total += x.Length
	}
	if total <= 16<<20 {
		f.images = []image{NewFlat(), NewSpool(memfs.New(), "/", "fuzz")}
		for _, im := range f.images {
			if err := im.Blocks(b); err != nil {
				return err
			}
		}
	}
	return f.recorder.Blocks(b)
}

func (f *fuzzHandler) Page(i int, off int64, data []byte) error {
	for _, im := range f.images {
		if err := im.Page(i, off, data); err != nil {
			return err
		}
	}
	return f.recorder.Page(i, off, data)
}

func (f *fuzzHandler) Zero(i int, off int64, fill byte) error {
	for _, im := range f.images {
		if err := im.Zero(i, off, fill); err != nil {
			return err
		}
	}
	return f.recorder.Zero(i, off, fill)
}

func (f *fuzzHandler) close() {
	for _, im := range f.images {
		im.Close()
	}
}

// FuzzParse: arbitrary bytes never panic, fail only with the package's
// sentinels, and a successful parse is self-consistent.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h := &fuzzHandler{recorder: newRecorder()}
		defer h.close()
		res, err := Parse(bytes.NewReader(b), h, Options{MaxDeviceState: 1 << 20})
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		if h.calls != 1 || !slices.Equal(h.blocks, res.Blocks) {
			t.Fatalf("Blocks called %d times", h.calls)
		}
		if res.Stats.StreamBytes != int64(len(b)) || res.Stats.Pages+res.Stats.ZeroPages != int64(len(h.order)) {
			t.Fatalf("stats %+v for %d bytes, %d records", res.Stats, len(b), len(h.order))
		}
		sk, err := ParseSkeleton(res.Skeleton)
		if err != nil {
			t.Fatalf("skeleton of a parsed stream: %v", err)
		}
		if !slices.Equal(sk.Blocks, res.Blocks) {
			t.Fatal("skeleton blocks differ")
		}
		// Each image holds exactly the last record of every page.
		for _, im := range h.images {
			if err := im.Flush(); err != nil {
				t.Fatalf("%T: %v", im, err)
			}
			pg := make([]byte, PageSize)
			for key, last := range h.pages {
				if _, err := im.ReaderAt(int(key[0])).ReadAt(pg, key[1]); err != nil {
					t.Fatalf("%T: page %v: %v", im, key, err)
				}
				want := last
				if len(last) == 1 {
					want = bytes.Repeat(last, PageSize)
				}
				if !bytes.Equal(pg, want) || im.NonZero(int(key[0])).Get(key[1]/PageSize) == isZero(want) {
					t.Fatalf("%T: page %v differs from the last record", im, key)
				}
			}
		}
	})
}

// FuzzParseSkeleton: arbitrary bytes never panic; an accepted skeleton
// re-encodes to one that parses to the same parts.
func FuzzParseSkeleton(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sk, err := ParseSkeleton(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		enc, err := sk.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a parsed skeleton: %v", err)
		}
		sk2, err := ParseSkeleton(enc)
		if err != nil {
			t.Fatalf("re-encoded skeleton: %v", err)
		}
		if !slices.Equal(sk.Blocks, sk2.Blocks) || sk.RAM != sk2.RAM || !bytes.Equal(sk.header, sk2.header) ||
			!bytes.Equal(sk.device, sk2.device) || sk.Machine != sk2.Machine || !bytes.Equal(sk.UUID, sk2.UUID) {
			t.Fatal("re-encoded skeleton differs")
		}
	})
}
