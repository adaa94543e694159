package migstream

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync"
	"testing"
)

// benchRAMPages makes a synthetic stream of about 256 MiB: three of four
// pages carry data, the fourth is a ZERO record.
const benchRAMPages = 87 << 10

// patternRAM generates block content on the fly so the benchmark does not
// hold a RAM image besides the stream: page i is zero when i%4 == 3, else
// non-repeating data.
type patternRAM struct{}

func (patternRAM) ReadAt(p []byte, off int64) (int, error) {
	for i := 0; i < len(p); i += PageSize {
		pg := p[i : i+PageSize]
		n := (off + int64(i)) / PageSize
		if n%4 == 3 {
			clear(pg)
			continue
		}
		for j := 0; j < PageSize; j += 8 {
			binary.LittleEndian.PutUint64(pg[j:], uint64(n)<<32|uint64(j)*0x9E3779B97F4A7C15)
		}
	}
	return len(p), nil
}

var benchStream = sync.OnceValues(func() ([]byte, error) {
	var s sb
	s.header().start(2).memSize(false, Block{ID: "pc.ram", Length: benchRAMPages * PageSize}).
		eos().footer(2).end(2).eos().footer(2).device()
	sk, err := ParseSkeleton(s.Bytes())
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = WriteStream(&b, sk, []io.ReaderAt{patternRAM{}})
	return b.Bytes(), err
})

func loadBenchStream(b *testing.B) []byte {
	s, err := benchStream()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(s)))
	b.ReportAllocs()
	b.ResetTimer()
	return s
}

// onlyReader hides bytes.Reader's WriterTo, so io.Copy really copies.
type onlyReader struct{ io.Reader }

// BenchmarkCopy is the baseline: io.Copy of the same bytes to io.Discard.
func BenchmarkCopy(b *testing.B) {
	s := loadBenchStream(b)
	for b.Loop() {
		if _, err := io.Copy(io.Discard, onlyReader{bytes.NewReader(s)}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	b.Run("nop", func(b *testing.B) {
		s := loadBenchStream(b)
		for b.Loop() {
			if _, err := Parse(onlyReader{bytes.NewReader(s)}, nil, Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Flat maps fresh memory every parse, so page faults are included, as
	// for the first parse of a real guest.
	b.Run("flat", func(b *testing.B) {
		s := loadBenchStream(b)
		for b.Loop() {
			fl := NewFlat()
			if _, err := Parse(onlyReader{bytes.NewReader(s)}, fl, Options{}); err != nil {
				b.Fatal(err)
			}
			fl.Close()
		}
	})
}

func BenchmarkWriteStream(b *testing.B) {
	s, err := benchStream()
	if err != nil {
		b.Fatal(err)
	}
	fl := NewFlat()
	defer fl.Close()
	res, err := Parse(bytes.NewReader(s), fl, Options{})
	if err != nil {
		b.Fatal(err)
	}
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(s)))
	b.ResetTimer()
	for b.Loop() {
		if err := WriteStream(io.Discard, sk, []io.ReaderAt{fl.ReaderAt(0)}); err != nil {
			b.Fatal(err)
		}
	}
}
