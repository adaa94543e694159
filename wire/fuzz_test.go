package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/drsync/drsync/vmspec"
)

// fuzzLevels are the compressions each decoded frame is re-encoded with.
var fuzzLevels = [...]Compression{CompressNone, CompressFast}

// FuzzDecode feeds arbitrary bytes to the decoder. It must never panic, and
// every frame it accepts must be valid and survive another encode/decode
// round unchanged, compressed or not.
func FuzzDecode(f *testing.F) {
	for _, c := range fuzzLevels {
		for _, fr := range sampleFrames(fuzzData, false) {
			b, _ := encodeAll(f, EncoderOptions{Compression: c}, fr)
			f.Add(b)
		}
	}
	f.Add([]byte{})
	fz := newFuzzCodec()
	f.Fuzz(func(t *testing.T, data []byte) { fz.check(t, data) })
}

// FuzzDecodePayload is FuzzDecode behind a correct header and CRC, which
// random mutation almost never produces, so that the fuzzer explores the
// payload parsers and the decompressor rather than the checksum test.
func FuzzDecodePayload(f *testing.F) {
	for _, c := range fuzzLevels {
		for _, fr := range sampleFrames(fuzzData, false) {
			b, _ := encodeAll(f, EncoderOptions{Compression: c}, fr)
			f.Add(b[0], b[1], b[HeaderSize:])
		}
	}
	fz := newFuzzCodec()
	f.Fuzz(func(t *testing.T, typ, flags byte, payload []byte) {
		fz.check(t, rawFrame(Type(typ), flags, payload))
	})
}

// fuzzData keeps seeds small, as the fuzzer's minimiser is quadratic in the
// input length; a page run cannot be shorter than a page.
func fuzzData(n int) []byte {
	if n%vmspec.PageSize == 0 {
		return compressible(vmspec.PageSize)
	}
	return compressible(min(n, 200))
}

// fuzzCodec holds codecs reused across executions: fresh zstd state per
// execution would make each one, and minimisation with it, needlessly slow.
type fuzzCodec struct {
	in, out *Decoder
	encs    [len(fuzzLevels)]*Encoder
	buf     bytes.Buffer
}

func newFuzzCodec() *fuzzCodec {
	// out borrows: each frame it decodes is compared before the next.
	fz := &fuzzCodec{in: NewDecoder(nil, DecoderOptions{}), out: NewDecoder(nil, DecoderOptions{Borrow: true})}
	for i, c := range fuzzLevels {
		fz.encs[i] = NewEncoder(nil, EncoderOptions{Compression: c})
	}
	return fz
}

func (fz *fuzzCodec) check(t *testing.T, data []byte) {
	fz.in.Reset(bytes.NewReader(data))
	for {
		fr, err := fz.in.Decode()
		if err != nil {
			if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if err := Validate(fr); err != nil {
			t.Fatalf("decoded an invalid frame %+v: %v", fr, err)
		}
		for _, e := range fz.encs {
			fz.buf.Reset()
			e.Reset(&fz.buf)
			if err := e.Encode(fr); err != nil {
				t.Fatalf("re-encoding %+v: %v", fr, err)
			}
			fz.out.Reset(&fz.buf)
			again, err := fz.out.Decode()
			if err != nil {
				t.Fatalf("decoding re-encoded %+v: %v", fr, err)
			}
			if !reflect.DeepEqual(fr, again) {
				t.Fatalf("round trip changed %+v into %+v", fr, again)
			}
		}
	}
}
