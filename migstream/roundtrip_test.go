package migstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// randomImage is a block image mixing random pages, zero pages, pages with
// one non-zero byte and repeated-byte pages.
func randomImage(r *rand.Rand, pages int) []byte {
	img := make([]byte, pages*PageSize)
	for p := range pages {
		pg := img[p*PageSize : (p+1)*PageSize]
		switch r.IntN(5) {
		case 0, 1:
			copy(pg, randBytes(r.Uint64(), PageSize))
		case 2:
			pg[r.IntN(PageSize)] = byte(r.IntN(255) + 1)
		case 3:
			for i := range pg {
				pg[i] = 0x33
			}
		}
	}
	return img
}

// skeletonFor parses a stream announcing blocks and returns its skeleton.
func skeletonFor(t testing.TB, gpa bool, blocks []Block) (*Skeleton, []byte) {
	t.Helper()
	s := &sb{}
	s.header()
	if gpa {
		s.caps(capIgnoreShared)
	}
	s.u8(secStart).be32(5).str("ram").be32(1).be32(ramVersion).memSize(gpa, blocks...)
	s.eos().footer(5).end(5).eos().footer(5).device()
	res, err := Parse(bytes.NewReader(s.bytes()), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.Skeleton, s.Bytes()) {
		t.Fatal("skeleton of a page-less stream differs from the stream")
	}
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatal(err)
	}
	return sk, res.Skeleton
}

func TestRoundTrip(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			gpa := seed%3 == 0
			nb := 1 + r.IntN(5)
			blocks := make([]Block, nb)
			images := make([][]byte, nb)
			ram := make([]io.ReaderAt, nb)
			for i := range blocks {
				pages := 1 + r.IntN(40)
				blocks[i] = Block{ID: fmt.Sprintf("blk%d/%s", i, strings.Repeat("x", r.IntN(200))), Length: int64(pages * PageSize)}
				if gpa {
					blocks[i].GPA, blocks[i].HasGPA = r.Uint64()&^0xfff, true
				}
				// Some blocks have no content: listed, no records.
				if r.IntN(4) > 0 {
					images[i] = randomImage(r, pages)
					ram[i] = bytes.NewReader(images[i])
				}
			}
			// Sometimes fewer contents than blocks: the rest count as nil.
			if r.IntN(3) == 0 && images[nb-1] == nil {
				ram = ram[:nb-1]
			}
			sk, skel := skeletonFor(t, gpa, blocks)

			var stream bytes.Buffer
			if err := WriteStream(&stream, sk, ram); err != nil {
				t.Fatal(err)
			}
			fl := NewFlat()
			defer fl.Close()
			res, err := Parse(bytes.NewReader(stream.Bytes()), fl, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Blocks, blocks) || !bytes.Equal(res.Skeleton, skel) {
				t.Fatalf("blocks %v or skeleton changed", res.Blocks)
			}
			var pages, zeros, size int64 = 0, 0, int64(len(skel))
			for i, b := range blocks {
				img := images[i]
				if img == nil {
					img = make([]byte, b.Length)
				} else {
					size += 1 + int64(len(b.ID)) // the id goes out once: CONTINUE after that
				}
				if !bytes.Equal(fl.Block(i), img) {
					t.Errorf("block %d differs after the round trip", i)
				}
				for p := range b.Pages() {
					nz := !isZero(img[p*PageSize : (p+1)*PageSize])
					if fl.NonZero(i).Get(p) != nz {
						t.Errorf("block %d page %d: NonZero %v", i, p, !nz)
					}
					if images[i] != nil {
						if nz {
							pages++
							size += 8 + PageSize
						} else {
							zeros++
							size += 8 + 1
						}
					}
				}
			}
			want := Stats{Pages: pages, ZeroPages: zeros, Sections: 2, StreamBytes: size}
			if res.Stats != want || int64(stream.Len()) != size {
				t.Errorf("stats %+v (stream %d bytes), want %+v", res.Stats, stream.Len(), want)
			}
		})
	}
}

// TestWriteStreamFromFlat is the path drsync takes: parse into Flat, then
// write the images back; the result must parse to the same images.
func TestWriteStreamFromFlat(t *testing.T) {
	fl := NewFlat()
	defer fl.Close()
	res, err := Parse(bytes.NewReader(smallStream()), fl, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatal(err)
	}
	ram := []io.ReaderAt{bytes.NewReader(fl.Block(0)), bytes.NewReader(fl.Block(1))}
	var out bytes.Buffer
	if err := WriteStream(&out, sk, ram); err != nil {
		t.Fatal(err)
	}
	fl2 := NewFlat()
	defer fl2.Close()
	if _, err := Parse(&out, fl2, Options{}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if !bytes.Equal(fl.Block(i), fl2.Block(i)) {
			t.Errorf("block %d differs", i)
		}
	}
}

func TestSkeletonRoundTrip(t *testing.T) {
	res, err := Parse(bytes.NewReader(smallStream()), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sk.Blocks, []Block{blkRAM, blkVRAM}) || sk.RAM != (SectionHeader{ID: 2, Version: 4}) || sk.Machine != "pc-i440fx-7.2" {
		t.Errorf("skeleton %+v", sk)
	}
	if !bytes.Equal(sk.DeviceState(), testDevice) {
		t.Error("device state not verbatim")
	}
	if !bytes.HasPrefix(sk.VMDescription(), []byte(`{"page_size"`)) {
		t.Errorf("VMDescription %q", sk.VMDescription())
	}
	again, err := sk.MarshalBinary()
	if err != nil || !bytes.Equal(again, res.Skeleton) {
		t.Fatalf("MarshalBinary: %v, equal %v", err, bytes.Equal(again, res.Skeleton))
	}
	var w bytes.Buffer
	if err := WriteStream(&w, sk, nil); err != nil || !bytes.Equal(w.Bytes(), res.Skeleton) {
		t.Fatalf("WriteStream without RAM: %v", err)
	}
	// Dropping a block from the list is allowed (QEMU keeps its own).
	sk.Blocks = sk.Blocks[:1]
	fewer, err := sk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	sk2, err := ParseSkeleton(fewer)
	if err != nil || !slices.Equal(sk2.Blocks, []Block{blkRAM}) {
		t.Fatalf("skeleton with one block: %v %+v", err, sk2)
	}
}

func TestParseSkeletonRejects(t *testing.T) {
	withPART := ram(false).eos().footer(2).part(2).eos().footer(2).end(2).eos().footer(2).device().bytes()
	for name, c := range map[string]struct {
		b   []byte
		msg string
	}{
		"page records": {smallStream(), "page record in a skeleton"},
		"PART section": {withPART, "PART section in a skeleton"},
		"empty":        {nil, "truncated"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseSkeleton(c.b)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want ErrMalformed with %q", err, c.msg)
			}
		})
	}
}

type shortReader struct{ n int }

func (s shortReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(s.n) {
		return 0, io.EOF
	}
	n := copy(p, make([]byte, s.n-int(off)))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriteStreamErrors(t *testing.T) {
	sk, _ := skeletonFor(t, false, []Block{blkRAM, blkVRAM})
	if err := WriteStream(io.Discard, &Skeleton{Blocks: sk.Blocks}, nil); err == nil {
		t.Error("hand-built skeleton without header accepted")
	}
	if err := WriteStream(io.Discard, sk, make([]io.ReaderAt, 3)); err == nil {
		t.Error("more contents than blocks accepted")
	}
	err := WriteStream(io.Discard, sk, []io.ReaderAt{shortReader{n: 3 * PageSize}})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), `"pc.ram" at 0x3000`) {
		t.Errorf("short content: %v", err)
	}
	// A ReaderAt that returns io.EOF with the last full read is fine.
	if err := WriteStream(io.Discard, sk, []io.ReaderAt{shortReader{n: int(blkRAM.Length)}}); err != nil {
		t.Errorf("EOF with a full read: %v", err)
	}
	err = WriteStream(&failWriter{n: 10}, sk, []io.ReaderAt{bytes.NewReader(randBytes(1, int(blkRAM.Length)))})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("write error: %v", err)
	}
	bad := *sk
	for _, blocks := range [][]Block{
		{{ID: "a", Length: 100}},
		{{ID: "", Length: PageSize}},
		{{ID: strings.Repeat("a", 256), Length: PageSize}},
		{{ID: "a", Length: PageSize}, {ID: "a", Length: PageSize}},
		{{ID: "a", Length: MaxRAM}, {ID: "b", Length: PageSize}},
	} {
		bad.Blocks = blocks
		if _, err := bad.MarshalBinary(); err == nil {
			t.Errorf("blocks %.60v accepted", blocks)
		}
	}
}

func TestBitmapRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int64{0, 1, 2, 63, 64, 65, 127, 128, 129, 1000} {
		for range 20 {
			b := NewBitmap(n)
			want := make([]bool, n)
			density := r.IntN(4)
			for p := range n {
				if r.IntN(4) < density {
					b.set(p)
					want[p] = true
				}
			}
			var got []bool
			var count int64
			for i, run := range b.Runs() {
				if run.Count <= 0 || run.First != int64(len(got)) {
					t.Fatalf("n=%d: run %d %+v not contiguous", n, i, run)
				}
				if off, ln := run.Bytes(); off != run.First*PageSize || ln != run.Count*PageSize {
					t.Fatalf("run bytes %d %d", off, ln)
				}
				for range run.Count {
					got = append(got, run.NonZero)
				}
				if run.NonZero {
					count += run.Count
				}
			}
			if !slices.Equal(got, want) || count != b.Count() || b.Len() != n {
				t.Fatalf("n=%d: runs %v\nwant %v", n, got, want)
			}
		}
	}
}
