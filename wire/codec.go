package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/drsync/drsync/internal/bufpool"
)

// HeaderSize is the length of the frame header.
const HeaderSize = 12

// MaxWirePayload bounds the payload length in a header: a raw payload, or a
// compressed one with its 4-byte length prefix.
const MaxWirePayload = MaxPayload + 4

const (
	flagCompressed = 1 << 0
	flagOpen       = 1 << 1 // EpochBegin only: EpochBegin.Open
	knownFlags     = flagCompressed | flagOpen
)

// Compressing less than this is not worth the zstd call.
const minCompress = 128

// A frame carrying at least sampleFrom bytes of data is compressed only if
// sampleSlices slices of sampleSlice bytes, spread over its data and
// compressed each on its own, save at least a sixteenth: random data (an
// encrypted disk, compressed files) costs at most a quarter of a
// whole-frame attempt (a sixteenth at 1 MiB) and goes out without being
// copied into the frame. The margin under the whole frame's eighth keeps
// data that compresses somewhat from being sent raw on a sample's say-so.
const (
	sampleFrom   = 256 << 10
	sampleSlices = 4
	sampleSlice  = 16 << 10
)

// Below this much data a frame goes out in one Write (one copy); above it
// the data is written from the caller's slice without copying.
const splitWrite = 64 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// carriesData reports whether frames of type t may be compressed.
func carriesData(t Type) bool {
	return t == TypeDiskExtent || t == TypeMemRun || t == TypeDeviceState
}

// Compression selects how an Encoder compresses data frames.
type Compression uint8

const (
	CompressNone    Compression = iota // never compress
	CompressFast                       // zstd SpeedFastest
	CompressDefault                    // zstd SpeedDefault
	CompressBetter                     // zstd SpeedBetterCompression
	numCompression
)

var compressionNames = [numCompression]string{"none", "fast", "default", "better"}

func (c Compression) String() string {
	if c < numCompression {
		return compressionNames[c]
	}
	return fmt.Sprintf("Compression(%d)", uint8(c))
}

// Validate reports whether c is one of the defined levels.
func (c Compression) Validate() error {
	if c >= numCompression {
		return fmt.Errorf("wire: unknown compression %d", uint8(c))
	}
	return nil
}

// MarshalText returns the level's name: none, fast, default or better.
func (c Compression) MarshalText() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return []byte(c.String()), nil
}

// UnmarshalText parses a level's name, as written by MarshalText.
func (c *Compression) UnmarshalText(b []byte) error {
	for i, name := range compressionNames {
		if string(b) == name {
			*c = Compression(i)
			return nil
		}
	}
	return fmt.Errorf("wire: unknown compression %q (want none, fast, default or better)", b)
}

func (c Compression) zstdLevel() zstd.EncoderLevel {
	switch c {
	case CompressFast:
		return zstd.SpeedFastest
	case CompressBetter:
		return zstd.SpeedBetterCompression
	}
	return zstd.SpeedDefault
}

// EncoderOptions configure an Encoder. The zero value sends everything
// uncompressed.
type EncoderOptions struct {
	Compression Compression
	// Clock, if set, times compression: Stats.CompressTime sums the time
	// spent in it, which is what the CPU side of the choice of level
	// weighs. Nil: not measured.
	Clock func() time.Time
}

// Validate reports whether the options are usable.
func (o EncoderOptions) Validate() error {
	return o.Compression.Validate()
}

// DecoderOptions configure a Decoder. The bounds are protocol constants.
type DecoderOptions struct {
	// Borrow makes a decoded frame's data (DataOf) share the Decoder's
	// buffer, valid only until the next Decode, instead of a copy of its
	// own: for a reader that is done with each frame before it reads the
	// next, as the receiver is once an item is in its journal. It saves
	// a copy and a fresh allocation of every item's bytes.
	Borrow bool
}

// Validate reports whether the options are usable.
func (o DecoderOptions) Validate() error { return nil }

// Counts are the frame and byte counters of a stream, or of one frame type.
type Counts struct {
	Frames     uint64 // frames encoded or decoded
	Compressed uint64 // of which were sent compressed
	RawBytes   uint64 // header + payload bytes before compression
	WireBytes  uint64 // header + payload bytes on the wire
	DataBytes  uint64 // bytes of DiskExtent, MemRun and DeviceState data carried
}

func (c *Counts) add(compressed bool, raw, wire, data int) {
	c.Frames++
	if compressed {
		c.Compressed++
	}
	c.RawBytes += uint64(raw)
	c.WireBytes += uint64(wire)
	c.DataBytes += uint64(data)
}

// kindSlots is the length of Stats.ByKind: one slot per frame type, indexed
// by Type, slot 0 unused.
const kindSlots = int(typeLast) + 1

// Stats are the totals of a stream and their breakdown by frame type.
type Stats struct {
	Counts
	ByKind [kindSlots]Counts
	// CompressTime is the time spent compressing (EncoderOptions.Clock).
	CompressTime time.Duration
	// SampledRaw counts frames sent uncompressed because samples of
	// their data did not compress (Encoder only).
	SampledRaw uint64
}

// Kind returns the counters of frames of type t.
func (s *Stats) Kind(t Type) Counts {
	if int(t) < len(s.ByKind) {
		return s.ByKind[t]
	}
	return Counts{}
}

func (s *Stats) add(t Type, compressed bool, raw, wire, data int) {
	s.Counts.add(compressed, raw, wire, data)
	s.ByKind[t].add(compressed, raw, wire, data)
}

// EncoderStats are an Encoder's counters.
type EncoderStats = Stats

// DecoderStats are a Decoder's counters.
type DecoderStats = Stats

// Encoder writes frames to a stream. It is not safe for concurrent use: a
// stream carries one frame after another, so callers serialise anyway. It
// reuses its buffers between frames.
type Encoder struct {
	w      io.Writer
	comp   Compression
	clock  func() time.Time
	buf    []byte // header + raw payload of small frames (large ones borrow from frameBufs)
	err    error  // sticky: the stream is broken
	optErr error  // invalid options, survives Reset
	stats  Stats
}

// NewEncoder returns an Encoder writing to w. If opts is invalid, every
// Encode returns the validation error; call opts.Validate first to report
// it earlier.
func NewEncoder(w io.Writer, opts EncoderOptions) *Encoder {
	e := &Encoder{w: w, comp: opts.Compression, clock: opts.Clock}
	if err := opts.Validate(); err != nil {
		e.comp, e.optErr = CompressNone, err
	}
	return e
}

// Reset makes e write to w as if new, keeping its buffers and compressors
// but not its error or counters. The compression level is kept.
func (e *Encoder) Reset(w io.Writer) {
	e.w, e.err, e.stats = w, nil, Stats{}
}

// SetCompression changes the compression of the frames encoded from now on.
// The decoder needs no notice: each frame says whether it is compressed.
func (e *Encoder) SetCompression(c Compression) error {
	if err := c.Validate(); err != nil {
		return err
	}
	e.comp = c
	return nil
}

// Compression returns the current compression level.
func (e *Encoder) Compression() Compression { return e.comp }

// Stats returns the counters of the frames written so far.
func (e *Encoder) Stats() EncoderStats { return e.stats }

// Encode validates f and writes it as one frame. An invalid frame is
// reported (wrapping ErrMalformed) without writing anything, and the
// Encoder stays usable. A write error leaves a partial frame on the stream,
// so it is returned by every later call as well.
func (e *Encoder) Encode(f Frame) error {
	if e.optErr != nil {
		return e.optErr
	}
	if e.err != nil {
		return e.err
	}
	if err := Validate(f); err != nil {
		return err
	}
	t := f.Type()
	rawLen := payloadSize(f)
	if rawLen > MaxPayload {
		// Unreachable with the current bounds; kept so a change to them
		// cannot produce frames the decoder rejects.
		return &FrameError{Type: t, Detail: fmt.Sprintf("payload length %d exceeds %d", rawLen, MaxPayload), Err: ErrTooLarge}
	}

	fdata := DataOf(f)
	dataLen := len(fdata)
	compress := e.comp != CompressNone && carriesData(t) && rawLen >= minCompress
	if compress && dataLen >= sampleFrom {
		ok, err := e.worthCompressing(fdata)
		if err != nil {
			return err
		}
		if !ok {
			compress = false
			e.stats.SampledRaw++
		}
	}
	inline := compress || dataLen < splitWrite
	need := HeaderSize + rawLen
	if !inline {
		need -= dataLen
	}
	buf0 := e.buf
	if need > splitWrite {
		// Borrowed for this frame only: kept, an encoder's buffers for
		// compressing held 8 MiB or more per VM between epochs.
		buf0 = getFrameBuf(need)
		defer putFrameBuf(buf0)
	} else if cap(e.buf) < need {
		e.buf = make([]byte, 0, need)
		buf0 = e.buf
	}
	buf, data := appendPayload(buf0[:HeaderSize], f)
	if inline {
		buf = append(buf, data...)
		data = nil
	}

	if compress {
		zb, err := e.compress(buf[HeaderSize:])
		if err != nil {
			return err
		}
		if zb != nil {
			defer putFrameBuf(zb)
			setHeader(zb, t, flagCompressed)
			if err := e.write(zb, nil); err != nil {
				return err
			}
			e.stats.add(t, true, HeaderSize+rawLen, len(zb), dataLen)
			return nil
		}
	}
	var flags byte
	if b, ok := f.(*EpochBegin); ok && b.Open {
		flags = flagOpen
	}
	setHeader(buf, t, flags, data)
	if err := e.write(buf, data); err != nil {
		return err
	}
	e.stats.add(t, false, HeaderSize+rawLen, HeaderSize+rawLen, dataLen)
	return nil
}

// compress returns header space + rawLen + zstd frame of raw, or nil when
// compression does not pay: the compressed payload must save at least an
// eighth, otherwise the receiver's decompression time is wasted.
func (e *Encoder) compress(raw []byte) ([]byte, error) {
	z, err := zstdEncoder(e.comp)
	if err != nil {
		return nil, err
	}
	zb := getFrameBuf(HeaderSize + 4 + zstdBound(len(raw)))[:HeaderSize+4]
	binary.BigEndian.PutUint32(zb[HeaderSize:], uint32(len(raw)))
	defer e.timeCompression()()
	zb = z.EncodeAll(raw, zb)
	if len(zb)-HeaderSize >= len(raw)*7/8 {
		putFrameBuf(zb)
		return nil, nil
	}
	return zb, nil
}

// worthCompressing compresses the sample slices of data and reports
// whether they saved at least a sixteenth.
func (e *Encoder) worthCompressing(data []byte) (bool, error) {
	z, err := zstdEncoder(e.comp)
	if err != nil {
		return false, err
	}
	defer e.timeCompression()()
	zb := getFrameBuf(zstdBound(sampleSlice))
	defer putFrameBuf(zb)
	in, out := 0, 0
	step := (len(data) - sampleSlice) / (sampleSlices - 1)
	for i := range sampleSlices {
		slice := data[i*step : i*step+sampleSlice]
		zb = z.EncodeAll(slice, zb[:0])
		in, out = in+len(slice), out+len(zb)
	}
	return out < in-in/16, nil
}

// zstdBound is the most a zstd frame of n bytes of input can take
// (incompressible input grows by about 1/256): a buffer of this capacity
// is never outgrown by EncodeAll, so a pooled one goes back to its pool.
func zstdBound(n int) int { return n + n>>8 + 128 }

// timeCompression starts timing compression for Stats.CompressTime, if
// the Encoder has a clock; calling the function it returns stops it.
func (e *Encoder) timeCompression() func() {
	if e.clock == nil {
		return func() {}
	}
	t0 := e.clock()
	return func() { e.stats.CompressTime += e.clock().Sub(t0) }
}

// zstdEncoders holds one zstd encoder per level for the whole process,
// made on first use. EncodeAll is safe for concurrent use and keeps one
// block encoder (and its history) per CPU, so a sender of many VMs holds
// as many histories as it can compress at once, not one per VM between
// epochs. A 1 MiB window and the lower-memory mode: page data, already
// deduplicated a page at a time, has few long matches; output and speed
// measured the same as with the defaults' 8 MiB window on a 4 MiB payload
// of half-random pages, with 0.4 MiB of encoder instead of 7.5.
var zstdEncoders struct {
	mu  sync.Mutex
	enc [numCompression]*zstd.Encoder
}

func zstdEncoder(c Compression) (*zstd.Encoder, error) {
	zstdEncoders.mu.Lock()
	defer zstdEncoders.mu.Unlock()
	if z := zstdEncoders.enc[c]; z != nil {
		return z, nil
	}
	z, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(c.zstdLevel()),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithWindowSize(1<<20),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("wire: creating zstd encoder: %w", err)
	}
	zstdEncoders.enc[c] = z
	return z, nil
}

// frameBufs holds the buffers of large frames between uses, shared by
// every Encoder of the process: only frames being encoded hold one, of the
// smallest class that fits the frame, and two per class stay idle at most
// (an encoder's raw and compressed payload; more at once are allocated,
// and left to the collector). Its largest fits any frame with the largest
// data, compressed or not (zstd's worst case adds well under 64 KiB to
// 4 MiB).
var frameBufs = bufpool.New(HeaderSize+4+MaxData+64<<10, 2)

// getFrameBuf returns an empty buffer of capacity at least n.
func getFrameBuf(n int) []byte { return frameBufs.Get(n)[:0] }

func putFrameBuf(b []byte) { frameBufs.Put(b) }

// setHeader fills b[:HeaderSize] for a payload made of b[HeaderSize:]
// followed by the extra slices.
func setHeader(b []byte, t Type, flags byte, extra ...[]byte) {
	n := len(b) - HeaderSize
	for _, x := range extra {
		n += len(x)
	}
	b[0] = byte(t)
	b[1] = flags
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:8], uint32(n))
	crc := crc32.Update(0, castagnoli, b[:8])
	crc = crc32.Update(crc, castagnoli, b[HeaderSize:])
	for _, x := range extra {
		crc = crc32.Update(crc, castagnoli, x)
	}
	binary.BigEndian.PutUint32(b[8:12], crc)
}

func (e *Encoder) write(b, data []byte) error {
	if _, err := e.w.Write(b); err != nil {
		e.err = fmt.Errorf("wire: writing frame: %w", err)
		return e.err
	}
	if len(data) > 0 {
		if _, err := e.w.Write(data); err != nil {
			e.err = fmt.Errorf("wire: writing frame data: %w", err)
			return e.err
		}
	}
	return nil
}

// Decoder reads frames from a stream. It is not safe for concurrent use.
type Decoder struct {
	r      io.Reader
	borrow bool
	hdr    [HeaderSize]byte
	buf    []byte // wire payload, reused
	raw    []byte // decompressed payload, reused
	zdec   *zstd.Decoder
	err    error // sticky: after a bad frame the stream cannot be trusted
	optErr error // invalid options, survives Reset
	stats  Stats
}

// NewDecoder returns a Decoder reading from r. If opts is invalid, every
// Decode returns the validation error.
func NewDecoder(r io.Reader, opts DecoderOptions) *Decoder {
	d := &Decoder{r: r, borrow: opts.Borrow}
	d.optErr = opts.Validate()
	return d
}

// Reset makes d read from r as if new, keeping its buffers and decompressor
// but not its error or counters.
func (d *Decoder) Reset(r io.Reader) {
	d.r, d.err, d.stats = r, nil, Stats{}
}

// Stats returns the counters of the frames read so far.
func (d *Decoder) Stats() DecoderStats { return d.stats }

// Decode reads the next frame. It returns io.EOF if the stream ends cleanly
// before a frame, an error wrapping io.ErrUnexpectedEOF if it ends inside
// one, and an error wrapping ErrMalformed (and, where it applies,
// ErrChecksum or ErrTooLarge) for bytes that are not a valid frame. The
// returned frame owns its memory, but for its data with
// DecoderOptions.Borrow. After an error the Decoder is finished:
// later calls return the same error.
func (d *Decoder) Decode() (Frame, error) {
	if d.optErr != nil {
		return nil, d.optErr
	}
	if d.err != nil {
		return nil, d.err
	}
	f, err := d.decode()
	if err != nil {
		d.err = err
		return nil, err
	}
	return f, nil
}

func (d *Decoder) decode() (Frame, error) {
	h := d.hdr[:]
	if n, err := io.ReadFull(d.r, h); err != nil {
		switch {
		case err == io.EOF:
			return nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("wire: stream ended after %d of %d header bytes: %w", n, HeaderSize, io.ErrUnexpectedEOF)
		}
		return nil, fmt.Errorf("wire: reading frame header: %w", err)
	}
	t, flags := Type(h[0]), h[1]
	length := binary.BigEndian.Uint32(h[4:8])
	switch {
	case t == 0 || t > typeLast:
		return nil, malformed(t, "unknown frame type")
	case flags&^knownFlags != 0:
		return nil, malformed(t, "unknown flags %#02x", flags&^knownFlags)
	case flags&flagCompressed != 0 && !carriesData(t):
		return nil, malformed(t, "compressed flag on a frame without data")
	case flags&flagOpen != 0 && t != TypeEpochBegin:
		return nil, malformed(t, "open flag on a frame other than EpochBegin")
	case h[2] != 0 || h[3] != 0:
		return nil, malformed(t, "reserved header bits %#04x set", binary.BigEndian.Uint16(h[2:4]))
	}
	compressed := flags&flagCompressed != 0
	limit := uint32(MaxPayload)
	if compressed {
		limit = MaxWirePayload
	}
	if length > limit {
		return nil, &FrameError{Type: t, Detail: fmt.Sprintf("payload length %d exceeds %d", length, limit), Err: ErrTooLarge}
	}

	if cap(d.buf) < int(length) {
		d.buf = make([]byte, length)
	}
	p := d.buf[:length]
	if n, err := io.ReadFull(d.r, p); err != nil {
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &FrameError{Type: t, Detail: fmt.Sprintf("stream ended after %d of %d payload bytes", n, length), Err: io.ErrUnexpectedEOF}
		}
		return nil, fmt.Errorf("wire: reading %v payload: %w", t, err)
	}
	crc := crc32.Update(0, castagnoli, h[:8])
	crc = crc32.Update(crc, castagnoli, p)
	if want := binary.BigEndian.Uint32(h[8:12]); crc != want {
		return nil, &FrameError{Type: t, Detail: fmt.Sprintf("crc32c %#08x, header says %#08x", crc, want), Err: ErrChecksum}
	}

	raw := p
	if compressed {
		var err error
		if raw, err = d.decompress(t, p); err != nil {
			return nil, err
		}
	}
	f, err := parsePayload(t, raw, d.borrow)
	if err != nil {
		return nil, err
	}
	if flags&flagOpen != 0 {
		f.(*EpochBegin).Open = true
	}
	d.stats.add(t, compressed, HeaderSize+len(raw), HeaderSize+int(length), len(DataOf(f)))
	return f, nil
}

// decompress expands a compressed payload (rawLen u32 | zstd frame). The
// output is capped at rawLen, so a payload that expands further fails after
// at most one zstd block beyond the cap instead of exhausting memory.
func (d *Decoder) decompress(t Type, p []byte) ([]byte, error) {
	if len(p) < 4 {
		return nil, malformed(t, "compressed payload of %d bytes has no length prefix", len(p))
	}
	rawLen := binary.BigEndian.Uint32(p)
	if rawLen > MaxPayload {
		return nil, &FrameError{Type: t, Detail: fmt.Sprintf("decompressed length %d exceeds %d", rawLen, MaxPayload), Err: ErrTooLarge}
	}
	if d.zdec == nil {
		z, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(MaxPayload),
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return nil, fmt.Errorf("wire: creating zstd decoder: %w", err)
		}
		d.zdec = z
	}
	if cap(d.raw) < int(rawLen) {
		d.raw = make([]byte, 0, rawLen)
	}
	out, err := d.zdec.DecodeAll(p[4:], d.raw[:0:rawLen])
	if err != nil {
		return nil, malformed(t, "decompressing %d-byte payload: %v", rawLen, err)
	}
	if len(out) != int(rawLen) {
		return nil, malformed(t, "decompressed %d bytes, header says %d", len(out), rawLen)
	}
	return out, nil
}
