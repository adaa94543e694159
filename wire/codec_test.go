package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/drsync/drsync/vmspec"
)

// compressible returns n bytes that zstd shrinks a lot but that are not one
// repeated byte.
func compressible(n int) []byte {
	words := []string{"alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot\n"}
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

// random returns n incompressible bytes.
func random(n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{7})
	_, _ = rng.Read(b)
	return b
}

var cut = time.Unix(1_750_000_000, 123_456_789).UTC()

// sampleFrames returns valid frames of every type, data frames filled by
// data. With big set, it includes frames of the maximal data size.
func sampleFrames(data func(int) []byte, big bool) []Frame {
	fs := []Frame{
		&Hello{MinVersion: 1, MaxVersion: 3, VM: "web-01"},
		&Welcome{Version: 1},
		&Welcome{Version: 1, Position: Position{
			Committed: 41, CommittedCut: cut, StateID: 0xdeadbeefcafe,
			StagedEpoch: 42, StagedPlan: math.MaxUint64, StagedDurable: 17,
		}},
		&EpochBegin{Epoch: 1},
		&EpochBegin{Epoch: 42, Cut: cut, Plan: 99, Items: 1000, Bytes: 1 << 40, StartSeq: 17, Targets: []Target{
			{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 20 << 30, BlockSize: 64 << 10},
			{ID: 1, Kind: vmspec.KindRAM, Name: "pc.ram", Size: 4 << 30, BlockSize: vmspec.PageSize},
			{ID: 7, Kind: vmspec.KindRAM, Name: "0000:00:02.0/vga.vram", Size: 16 << 20, BlockSize: vmspec.PageSize},
			{ID: 65535, Kind: vmspec.KindRAM, Name: "/rom@etc/acpi/tables", Size: 128 << 10, BlockSize: vmspec.PageSize},
		}},
		&EpochBegin{Epoch: 9, Cut: cut, Plan: 5, Items: 2, Bytes: 4096, StartSeq: 2, Open: true, Targets: []Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 4096}}},
		&EpochBegin{Epoch: 7, Cut: cut, Items: 3, Group: &vmspec.GroupCut{Group: "shop", Cut: 12, Members: []string{"app-1", "db"}}},
		&EpochBegin{Epoch: 8, Cut: cut, Targets: []Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 4096}},
			Group: &vmspec.GroupCut{Group: "g", Cut: math.MaxUint64, Members: []string{"db"}}},
		&DiskExtent{Seq: 0, Target: 0, Offset: 1 << 20, Data: data(64 << 10)},
		&DiskExtent{Seq: 1, Target: 3, Offset: 512, Data: data(1)},
		&DiskExtent{Seq: 2, Target: 3, Offset: 0, Data: data(4096)},
		&MemRun{Seq: 3, Target: 1, Page: 12345, Data: data(3 * vmspec.PageSize)},
		&ZeroRun{Seq: 4, Target: 0, Offset: 1 << 30, Length: 1 << 21},
		&PageRef{Seq: 5, Target: 1, Page: 7, Count: 3, Source: RefDisk, SrcTarget: 0, SrcOffset: 8192},
		&PageRef{Seq: 6, Target: 1, Page: 9, Count: MaxRefsCount, Source: RefPage, SrcTarget: 1, SrcOffset: 100},
		&DeviceState{Seq: 7, Offset: 0, Total: 100000, Data: data(60000)},
		&DeviceState{Seq: 8, Offset: 100000, Total: 100000},
		&EpochCommit{Epoch: 42, Items: 9, Digest: 0x1234},
		&EpochCommit{Epoch: 42, Items: 9, Digest: 0x1234, States: []TargetDigest{{0, 1}, {1, math.MaxUint64}}},
		&Ack{Epoch: 42, Durable: 9},
		&Ack{Epoch: 42, Durable: 9, Committed: true},
		&Error{Code: ErrBusy, Message: "another sender holds VM web-01 ✓"},
		&Error{Code: ErrInternal},
		&TableRequest{},
		&Table{Kind: vmspec.KindDisk, Name: "vda", Size: 1<<20 + 1, BlockSize: 64 << 10, First: 3, Hashes: []uint64{1, 2, math.MaxUint64, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}},
		&Table{Kind: vmspec.KindRAM, Name: "pc.ram", Size: 4096, BlockSize: 4096, Hashes: []uint64{42}},
		&Table{Kind: vmspec.KindBlob, Name: vmspec.BlobDomainXML, Size: vmspec.BlobSize, BlockSize: vmspec.BlobBlockSize, First: 255, Hashes: []uint64{7}},
		&TableEnd{Epoch: 9, StateID: 0xfeed},
	}
	if big {
		fs = append(fs,
			&DiskExtent{Seq: 9, Target: 0, Offset: 0, Data: data(MaxData)},
			&MemRun{Seq: 10, Target: 1, Page: 0, Data: data(MaxData)},
			&DeviceState{Seq: 11, Offset: 1, Total: MaxData + 1, Data: data(MaxData)},
		)
	}
	return fs
}

func encodeAll(t testing.TB, opts EncoderOptions, fs ...Frame) ([]byte, EncoderStats) {
	t.Helper()
	var buf bytes.Buffer
	e := NewEncoder(&buf, opts)
	for _, f := range fs {
		if err := e.Encode(f); err != nil {
			t.Fatalf("Encode(%T): %v", f, err)
		}
	}
	return buf.Bytes(), e.Stats()
}

// decodeAll decodes frames until EOF.
func decodeAll(t testing.TB, b []byte) ([]Frame, DecoderStats) {
	t.Helper()
	d := NewDecoder(bytes.NewReader(b), DecoderOptions{})
	var fs []Frame
	for {
		f, err := d.Decode()
		if err == io.EOF {
			return fs, d.Stats()
		}
		if err != nil {
			t.Fatalf("Decode after %d frames: %v", len(fs), err)
		}
		fs = append(fs, f)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, dk := range []struct {
		name string
		data func(int) []byte
	}{{"compressible", compressible}, {"random", random}} {
		for c := CompressNone; c < numCompression; c++ {
			t.Run(dk.name+"/"+c.String(), func(t *testing.T) {
				t.Parallel()
				// Maximal frames at the slow levels add time, not coverage.
				in := sampleFrames(dk.data, c <= CompressFast)
				b, es := encodeAll(t, EncoderOptions{Compression: c}, in...)
				out, ds := decodeAll(t, b)
				if len(out) != len(in) {
					t.Fatalf("decoded %d frames, want %d", len(out), len(in))
				}
				for i := range in {
					if !reflect.DeepEqual(in[i], out[i]) {
						t.Errorf("frame %d: got %+v, want %+v", i, out[i], in[i])
					}
				}
				if es.Counts != ds.Counts || es.ByKind != ds.ByKind {
					t.Errorf("decoder stats %+v != encoder stats %+v", ds.Counts, es.Counts)
				}
				if es.WireBytes != uint64(len(b)) {
					t.Errorf("WireBytes %d, wrote %d", es.WireBytes, len(b))
				}
				// Data frames of at least minCompress bytes compress when
				// the data is compressible, and never when it is random.
				want := uint64(0)
				if c != CompressNone && dk.name == "compressible" {
					for _, f := range in {
						if carriesData(f.Type()) && payloadSize(f) >= minCompress {
							want++
						}
					}
				}
				if es.Compressed != want {
					t.Errorf("%d frames compressed, want %d", es.Compressed, want)
				}
			})
		}
	}
}

func TestTimes(t *testing.T) {
	for _, tm := range []time.Time{
		{},
		time.Unix(0, 1).UTC(),
		time.Unix(0, -1).UTC(),
		cut,
		time.Unix(0, math.MinInt64).UTC(),
		time.Unix(0, math.MaxInt64).UTC(),
	} {
		in := &EpochBegin{Epoch: 1, Cut: tm}
		b, _ := encodeAll(t, EncoderOptions{}, in, &Welcome{Version: 1, Position: Position{CommittedCut: tm}})
		out, _ := decodeAll(t, b)
		if got := out[0].(*EpochBegin).Cut; got != tm {
			t.Errorf("EpochBegin cut %v round-trips to %v", tm, got)
		}
		if got := out[1].(*Welcome).Position.CommittedCut; got != tm {
			t.Errorf("Welcome cut %v round-trips to %v", tm, got)
		}
	}

	// Other locations come back as the same instant in UTC.
	local := cut.In(time.FixedZone("X", 3600))
	b, _ := encodeAll(t, EncoderOptions{}, &EpochBegin{Epoch: 1, Cut: local})
	out, _ := decodeAll(t, b)
	if got := out[0].(*EpochBegin).Cut; !got.Equal(local) || got.Location() != time.UTC {
		t.Errorf("cut %v decoded as %v", local, got)
	}

	for _, tm := range []time.Time{time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)} {
		err := NewEncoder(io.Discard, EncoderOptions{}).Encode(&EpochBegin{Epoch: 1, Cut: tm})
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("cut %v: Encode error %v, want ErrMalformed", tm, err)
		}
	}
}

func TestEncoderStats(t *testing.T) {
	ext := &DiskExtent{Seq: 1, Offset: 0, Data: compressible(1 << 20)}
	zero := &ZeroRun{Seq: 2, Offset: 1 << 20, Length: 1 << 20}
	rnd := &MemRun{Seq: 3, Target: 1, Page: 0, Data: random(16 * vmspec.PageSize)}

	var buf bytes.Buffer
	e := NewEncoder(&buf, EncoderOptions{})
	for _, f := range []Frame{ext, zero, rnd} {
		if err := e.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	s := e.Stats()
	wantRaw := uint64(3*HeaderSize + payloadSize(ext) + payloadSize(zero) + payloadSize(rnd))
	if s.Frames != 3 || s.RawBytes != wantRaw || s.WireBytes != wantRaw || s.WireBytes != uint64(buf.Len()) {
		t.Errorf("uncompressed stats %+v, want 3 frames, %d raw = wire bytes", s.Counts, wantRaw)
	}
	if s.DataBytes != 1<<20+16*vmspec.PageSize {
		t.Errorf("DataBytes %d", s.DataBytes)
	}

	// Switching compression on between frames shrinks only what pays.
	if err := e.SetCompression(CompressFast); err != nil {
		t.Fatal(err)
	}
	before := buf.Len()
	for _, f := range []Frame{ext, zero, rnd} {
		if err := e.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	s = e.Stats()
	if s.Frames != 6 || s.Compressed != 1 || s.RawBytes != 2*wantRaw || s.WireBytes != uint64(buf.Len()) {
		t.Errorf("stats after compression %+v", s.Counts)
	}
	de := s.Kind(TypeDiskExtent)
	if de.Frames != 2 || de.Compressed != 1 || de.RawBytes != uint64(2*(HeaderSize+payloadSize(ext))) {
		t.Errorf("DiskExtent stats %+v", de)
	}
	if wire := uint64(buf.Len() - before); wire > wantRaw/4 {
		t.Errorf("compressed epoch took %d wire bytes for %d raw", wire, wantRaw)
	}
	if mr := s.Kind(TypeMemRun); mr.Compressed != 0 || mr.WireBytes != mr.RawBytes {
		t.Errorf("random MemRun stats %+v: should not compress", mr)
	}
	var sum Counts
	for _, k := range s.ByKind {
		sum.Frames += k.Frames
		sum.Compressed += k.Compressed
		sum.RawBytes += k.RawBytes
		sum.WireBytes += k.WireBytes
		sum.DataBytes += k.DataBytes
	}
	if sum != s.Counts {
		t.Errorf("ByKind sums to %+v, totals %+v", sum, s.Counts)
	}
	if got := s.Kind(Type(200)); got != (Counts{}) {
		t.Errorf("Kind(200) = %+v", got)
	}

	_, ds := decodeAll(t, buf.Bytes())
	if ds != s {
		t.Errorf("decoder stats %+v != encoder stats %+v", ds, s)
	}
}

// rawFrame builds a frame with a correct CRC around any payload.
func rawFrame(typ Type, flags byte, payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	b = append(b, payload...)
	b[0], b[1] = byte(typ), flags
	binary.BigEndian.PutUint32(b[4:8], uint32(len(payload)))
	crc := crc32.Update(0, castagnoli, b[:8])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.BigEndian.PutUint32(b[8:12], crc)
	return b
}

// rawPayload serialises f without validating it.
func rawPayload(f Frame) []byte {
	b, data := appendPayload(nil, f)
	return append(b, data...)
}

func TestInvalidFields(t *testing.T) {
	targets := func(n int) []Target {
		ts := make([]Target, n)
		for i := range ts {
			ts[i] = Target{ID: uint16(i), Kind: vmspec.KindDisk, Name: "d", Size: 1, BlockSize: 512}
		}
		return ts
	}
	tgt := func(mod func(*Target)) []Target {
		ts := []Target{{ID: 1, Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 30, BlockSize: 4096}}
		mod(&ts[0])
		return ts
	}
	states := func(n int) []TargetDigest {
		s := make([]TargetDigest, n)
		for i := range s {
			s[i].Target = uint16(i)
		}
		return s
	}
	cases := []struct {
		f    Frame
		want string
	}{
		{&Hello{MinVersion: 0, MaxVersion: 1, VM: "a"}, "min version 0"},
		{&Hello{MinVersion: 2, MaxVersion: 1, VM: "a"}, "min version 2 exceeds max version 1"},
		{&Hello{MinVersion: 1, MaxVersion: 1, VM: ""}, `vm "": empty`},
		{&Hello{MinVersion: 1, MaxVersion: 1, VM: "../etc"}, `vm "../etc"`},
		{&Hello{MinVersion: 1, MaxVersion: 1, VM: "a/b"}, `vm "a/b"`},
		{&Welcome{Version: 0}, "version 0"},
		{&EpochBegin{Epoch: 0}, "epoch 0"},
		{&EpochBegin{Epoch: 1, Items: 3, StartSeq: 4}, "start seq 4 exceeds items 3"},
		{&EpochBegin{Epoch: 1, Targets: targets(MaxTargets + 1)}, "target count 257 exceeds 256"},
		{&EpochBegin{Epoch: 1, Targets: append(targets(2), targets(1)...)}, "target 2: duplicate id 0"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Kind = 0 })}, "kind 0 is neither"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Kind = 4 })}, "kind 4 is neither"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Name = "" })}, `name "": empty`},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Name = "a b" })}, "not printable"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Name = strings.Repeat("x", MaxNameLen+1) })}, "length 129 exceeds 128"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Size = 0 })}, "size 0"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.BlockSize = 0 })}, "block size 0 is not"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.BlockSize = 256 })}, "block size 256 is not"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.BlockSize = 3000 })}, "block size 3000 is not"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.BlockSize = 8 << 20 })}, "block size 8388608 is not"},
		{&EpochBegin{Epoch: 1, Targets: tgt(func(t *Target) { t.Kind = vmspec.KindRAM; t.BlockSize = 512 })}, "RAM block size 512"},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1}}, `group "g": no members`},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 0, Members: []string{"a"}}}, "group g: cut 0"},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "", Cut: 1, Members: []string{"a"}}}, "group name"},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1, Members: []string{"b", "a"}}}, "not sorted and unique"},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1, Members: []string{"a", "a"}}}, "not sorted and unique"},
		{&EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1, Members: []string{"a", "../x"}}}, "group g member"},
		{&DiskExtent{}, "empty data"},
		{&DiskExtent{Data: make([]byte, 5000000)}, "data length 5000000 exceeds 4194304"},
		{&DiskExtent{Offset: math.MaxUint64 - 1, Data: []byte{1, 2}}, "overflows"},
		{&MemRun{}, "empty data"},
		{&MemRun{Data: make([]byte, 100)}, "not a multiple of the page size"},
		{&MemRun{Data: make([]byte, MaxData+vmspec.PageSize)}, "exceeds 4194304"},
		{&MemRun{Page: math.MaxUint64 / vmspec.PageSize, Data: make([]byte, vmspec.PageSize)}, "overflows"},
		{&ZeroRun{Offset: 1}, "length 0"},
		{&ZeroRun{Offset: math.MaxUint64, Length: 1}, "overflows"},
		{&PageRef{Count: 0, Source: RefDisk}, "count 0 outside"},
		{&PageRef{Count: MaxRefsCount + 1, Source: RefDisk}, "outside [1, 1048576]"},
		{&PageRef{Count: 1, Source: 0}, "source 0 is neither"},
		{&PageRef{Count: 1, Source: 3}, "source 3 is neither"},
		{&PageRef{Count: 1, Source: RefDisk, Page: math.MaxUint64}, "page 18446744073709551615 + 1 pages overflows"},
		{&PageRef{Count: 2, Source: RefDisk, SrcOffset: math.MaxUint64 - vmspec.PageSize}, "source offset"},
		{&PageRef{Count: 2, Source: RefPage, SrcOffset: math.MaxUint64 / vmspec.PageSize}, "source page"},
		{&DeviceState{Offset: 10, Total: 5}, "offset 10 + data length 0 exceeds total 5"},
		{&DeviceState{Offset: 0, Total: 5, Data: make([]byte, 6)}, "exceeds total 5"},
		{&DeviceState{Offset: math.MaxUint64, Total: math.MaxUint64, Data: []byte{1}}, "exceeds total"},
		{&DeviceState{Total: 1 << 30, Data: make([]byte, MaxData+1)}, "data length 4194305 exceeds"},
		{&EpochCommit{Epoch: 0}, "epoch 0"},
		{&EpochCommit{Epoch: 1, States: states(MaxTargets + 1)}, "state count 257 exceeds 256"},
		{&EpochCommit{Epoch: 1, States: []TargetDigest{{1, 1}, {1, 2}}}, "state 1: duplicate target 1"},
		{&Error{Message: strings.Repeat("x", MaxMessage+1)}, "message length 4097 exceeds 4096"},
		{&Table{Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 65536, First: 15, Hashes: []uint64{1, 2}}, "outside 16 blocks"},
		{&Table{Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 65536}, "0 hashes"},
		{&Table{Kind: 9, Name: "vda", Size: 1 << 20, BlockSize: 65536, Hashes: []uint64{1}}, "target kind 9"},
		{&Table{Kind: vmspec.KindDisk, Name: "../x y", Size: 1 << 20, BlockSize: 65536, Hashes: []uint64{1}}, "target name"},
		{&Error{Message: "bad \xff byte"}, "not valid UTF-8"},
	}
	for _, c := range cases {
		name := c.f.Type().String() + "/" + c.want
		t.Run(name, func(t *testing.T) {
			check := func(how string, err error) {
				t.Helper()
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("%s: error %v, want ErrMalformed", how, err)
				}
				var fe *FrameError
				if !errors.As(err, &fe) || fe.Type != c.f.Type() {
					t.Errorf("%s: error %v is not a FrameError of type %v", how, err, c.f.Type())
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, "wire: "+c.f.Type().String()+": ") || !strings.Contains(msg, c.want) {
					t.Errorf("%s: error %q, want it to name the type and contain %q", how, msg, c.want)
				}
			}

			var buf bytes.Buffer
			e := NewEncoder(&buf, EncoderOptions{Compression: CompressFast})
			check("Encode", e.Encode(c.f))
			if buf.Len() != 0 {
				t.Errorf("Encode wrote %d bytes for an invalid frame", buf.Len())
			}
			if err := e.Encode(&Ack{Epoch: 1}); err != nil {
				t.Errorf("Encoder unusable after an invalid frame: %v", err)
			}
			check("Validate", Validate(c.f))

			_, err := NewDecoder(bytes.NewReader(rawFrame(c.f.Type(), 0, rawPayload(c.f))), DecoderOptions{}).Decode()
			check("Decode", err)
		})
	}
}

func TestErrorText(t *testing.T) {
	err := NewEncoder(io.Discard, EncoderOptions{}).Encode(&DiskExtent{Data: make([]byte, 5000000)})
	const want = "wire: DiskExtent: data length 5000000 exceeds 4194304: malformed frame"
	if err == nil || err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestEncodeBadFrames(t *testing.T) {
	for _, f := range []Frame{nil, (*DiskExtent)(nil), (*Ack)(nil), foreignFrame{}} {
		var buf bytes.Buffer
		if err := NewEncoder(&buf, EncoderOptions{}).Encode(f); !errors.Is(err, ErrMalformed) || buf.Len() != 0 {
			t.Errorf("Encode(%#v): %v, wrote %d bytes", f, err, buf.Len())
		}
	}
}

type foreignFrame struct{}

func (foreignFrame) Type() Type { return TypeAck }

// TestGroupForCarrier: the receiver accepts a tag only on a member's
// connection.
func TestGroupForCarrier(t *testing.T) {
	b := &EpochBegin{Epoch: 1, Group: &vmspec.GroupCut{Group: "g", Cut: 1, Members: []string{"a", "b"}}}
	for _, c := range []struct {
		vm, want string
	}{{"a", ""}, {"b", ""}, {"c", "c carries the cut but is not a member"}} {
		err := b.ValidateGroupFor(c.vm)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: %v, want %q", c.vm, err, c.want)
		}
	}
	if err := (&EpochBegin{Epoch: 1}).ValidateGroupFor("x"); err != nil {
		t.Errorf("untagged: %v", err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	ack := rawFrame(TypeAck, 0, rawPayload(&Ack{Epoch: 1, Durable: 2}))
	mod := func(b []byte, f func([]byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	withLen := func(typ Type, flags byte, n uint32) []byte {
		b := rawFrame(typ, flags, nil)
		binary.BigEndian.PutUint32(b[4:8], n)
		return b
	}
	zstdFrame := func(raw []byte) []byte {
		z, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		return z.EncodeAll(raw, nil)
	}
	compressed := func(rawLen uint32, z []byte) []byte {
		p := binary.BigEndian.AppendUint32(nil, rawLen)
		return rawFrame(TypeDiskExtent, flagCompressed, append(p, z...))
	}
	extent := rawPayload(&DiskExtent{Data: compressible(1000)})

	cases := []struct {
		name  string
		in    []byte
		is    error
		want  string
		isNot error
	}{
		{"type 0", rawFrame(0, 0, nil), ErrMalformed, "unknown frame type", nil},
		{"type 15", rawFrame(15, 0, nil), ErrMalformed, "wire: Type(15): unknown frame type", nil},
		{"type 255", rawFrame(255, 0, nil), ErrMalformed, "unknown frame type", nil},
		{"open Ack", rawFrame(TypeAck, 2, rawPayload(&Ack{})), ErrMalformed, "open flag on a frame other than EpochBegin", nil},
		{"flag bit 2", rawFrame(TypeEpochBegin, 4, rawPayload(&EpochBegin{Epoch: 1})), ErrMalformed, "unknown flags 0x04", nil},
		{"flag bit 7", rawFrame(TypeDiskExtent, 0x81, nil), ErrMalformed, "unknown flags 0x80", nil},
		{"compressed Hello", rawFrame(TypeHello, flagCompressed, nil), ErrMalformed, "compressed flag on a frame without data", nil},
		{"reserved", mod(ack, func(b []byte) { b[3] = 1 }), ErrMalformed, "reserved header bits", nil},
		{"reserved high", mod(ack, func(b []byte) { b[2] = 0x80 }), ErrMalformed, "reserved header bits 0x8000", nil},
		{"length", withLen(TypeDiskExtent, 0, MaxPayload+1), ErrTooLarge, "payload length 8388609 exceeds 8388608", nil},
		{"compressed length", withLen(TypeDiskExtent, flagCompressed, MaxPayload+5), ErrTooLarge, "exceeds 8388612", nil},
		{"length max", withLen(TypeAck, 0, math.MaxUint32), ErrTooLarge, "", nil},
		{"crc", mod(ack, func(b []byte) { b[11] ^= 1 }), ErrChecksum, "crc32c", nil},
		{"crc high byte", mod(ack, func(b []byte) { b[8] ^= 0x80 }), ErrChecksum, "", nil},
		{"payload bit", mod(ack, func(b []byte) { b[HeaderSize+3] ^= 4 }), ErrChecksum, "", nil},
		{"type bit", mod(ack, func(b []byte) { b[0] = byte(TypeError) }), ErrChecksum, "wire: Error:", nil},
		{"trailing", rawFrame(TypeAck, 0, append(rawPayload(&Ack{}), 0)), ErrMalformed, "1 trailing bytes", ErrChecksum},
		{"short", rawFrame(TypeAck, 0, rawPayload(&Ack{})[:16]), ErrMalformed, "payload truncated in committed", nil},
		{"empty Welcome", rawFrame(TypeWelcome, 0, nil), ErrMalformed, "payload truncated in version", nil},
		{"bad magic", rawFrame(TypeHello, 0, append([]byte("DRSYNC02"), 0, 1, 0, 1, 1, 'a')), ErrMalformed, `bad magic "DRSYNC02"`, nil},
		{"committed 2", rawFrame(TypeAck, 0, append(rawPayload(&Ack{})[:16], 2)), ErrMalformed, "committed byte 2 is not 0 or 1", nil},
		{"bytes32 overrun", rawFrame(TypeDiskExtent, 0, extent[:len(extent)-1]), ErrMalformed, "payload truncated in data: length 1000, 999 bytes left", nil},
		{"str16 overrun", rawFrame(TypeError, 0, []byte{0, 1, 0, 5, 'a'}), ErrMalformed, "payload truncated in message", nil},
		{"group members over max", rawFrame(TypeEpochBegin, 0, append(rawPayload(&EpochBegin{Epoch: 1}), 1, 'g', 0, 0, 0, 0, 0, 0, 0, 1, vmspec.MaxGroupMembers+1)), ErrMalformed, "group member count 65 exceeds 64", nil},
		{"group truncated", rawFrame(TypeEpochBegin, 0, append(rawPayload(&EpochBegin{Epoch: 1}), 1, 'g', 0, 0)), ErrMalformed, "payload truncated in group cut", nil},
		{"group member truncated", rawFrame(TypeEpochBegin, 0, append(rawPayload(&EpochBegin{Epoch: 1}), 1, 'g', 0, 0, 0, 0, 0, 0, 0, 1, 2, 1, 'a')), ErrMalformed, "payload truncated in group member", nil},
		{"compressed no prefix", rawFrame(TypeDiskExtent, flagCompressed, []byte{0, 0, 1}), ErrMalformed, "no length prefix", nil},
		{"compressed garbage", compressed(uint32(len(extent)), []byte("not zstd at all")), ErrMalformed, "decompressing", nil},
		{"compressed empty", compressed(0, nil), ErrMalformed, "payload truncated in seq", nil},
		{"rawLen too small", compressed(uint32(len(extent)-1), zstdFrame(extent)), ErrMalformed, "DiskExtent: decompress", nil},
		{"rawLen too big", compressed(uint32(len(extent)+1), zstdFrame(extent)), ErrMalformed, "DiskExtent: decompressed 1022 bytes, header says 1023", nil},
		{"rawLen over max", compressed(MaxPayload+1, zstdFrame(extent)), ErrTooLarge, "decompressed length 8388609 exceeds 8388608", nil},
		{"two zstd frames", compressed(uint32(2*len(extent)), append(zstdFrame(extent), zstdFrame(extent)...)), ErrMalformed, "trailing bytes", nil},
		{"compressed trailing", compressed(uint32(len(extent)+1), zstdFrame(append(bytes.Clone(extent), 9))), ErrMalformed, "1 trailing bytes", nil},
		{"compressed invalid field", compressed(uint32(len(rawPayload(&DiskExtent{}))), zstdFrame(rawPayload(&DiskExtent{}))), ErrMalformed, "empty data", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := NewDecoder(bytes.NewReader(c.in), DecoderOptions{})
			f, err := d.Decode()
			if !errors.Is(err, c.is) || !errors.Is(err, ErrMalformed) || f != nil {
				t.Fatalf("Decode = %v, %v; want %v", f, err, c.is)
			}
			if c.isNot != nil && errors.Is(err, c.isNot) {
				t.Errorf("error %v should not be %v", err, c.isNot)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if _, err2 := d.Decode(); err2 != err {
				t.Errorf("second Decode returned %v, want the same error", err2)
			}
		})
	}
}

func TestTruncated(t *testing.T) {
	small := func(n int) []byte { return compressible(min(n, 8192)) }
	for _, c := range []Compression{CompressNone, CompressDefault} {
		for _, f := range sampleFrames(small, false) {
			enc, _ := encodeAll(t, EncoderOptions{Compression: c}, f)
			// The stream ends early.
			for n := range len(enc) {
				_, err := NewDecoder(bytes.NewReader(enc[:n]), DecoderOptions{}).Decode()
				switch {
				case n == 0 && err != io.EOF:
					t.Fatalf("%v: empty stream: %v, want io.EOF", f.Type(), err)
				case n > 0 && !errors.Is(err, io.ErrUnexpectedEOF):
					t.Fatalf("%v/%v: cut at %d of %d: %v, want ErrUnexpectedEOF", f.Type(), c, n, len(enc), err)
				}
			}
			// The header is consistent but the payload is short.
			if enc[1]&flagCompressed != 0 {
				continue
			}
			// An EpochBegin cut exactly before its optional group section is
			// a whole untagged one (the header's length and CRC are what
			// catch that cut on a real stream), so that length is skipped.
			untagged := -1
			if b, ok := f.(*EpochBegin); ok && b.Group != nil {
				c := *b
				c.Group = nil
				untagged = HeaderSize + payloadSize(&c)
			}
			for n := HeaderSize; n < len(enc); n++ {
				if n == untagged {
					continue
				}
				_, err := NewDecoder(bytes.NewReader(rawFrame(f.Type(), 0, enc[HeaderSize:n])), DecoderOptions{}).Decode()
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("%v: payload cut to %d bytes: %v, want ErrMalformed", f.Type(), n-HeaderSize, err)
				}
			}
		}
	}
}

func TestZipBomb(t *testing.T) {
	// A zstd frame that declares its size.
	declared, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<20)
	copy(big, rawPayload(&DiskExtent{Data: []byte{1}}))
	bombFCS := declared.EncodeAll(big, nil)

	// One that does not, so only the output cap stops it.
	var buf bytes.Buffer
	stream, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Write(big); err != nil {
		t.Fatal(err)
	}
	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
	bombStream := buf.Bytes()

	for _, c := range []struct {
		name   string
		rawLen uint32
		z      []byte
		is     error
	}{
		{"declared", 1024, bombFCS, ErrMalformed},
		{"stream", 1024, bombStream, ErrMalformed},
		{"stream at max", MaxPayload, bombStream, ErrMalformed},
		{"rawLen over max", MaxPayload + 1, bombStream, ErrTooLarge},
		{"rawLen max u32", math.MaxUint32, bombStream, ErrTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			if len(c.z)+4 > MaxWirePayload {
				t.Fatalf("bomb of %d bytes does not fit a frame", len(c.z))
			}
			frame := rawFrame(TypeDiskExtent, flagCompressed, append(binary.BigEndian.AppendUint32(nil, c.rawLen), c.z...))
			d := NewDecoder(bytes.NewReader(frame), DecoderOptions{})
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			_, err := d.Decode()
			runtime.ReadMemStats(&ms1)
			if !errors.Is(err, c.is) {
				t.Fatalf("Decode: %v, want %v", err, c.is)
			}
			// The wire buffer, the output buffer (at most MaxPayload) and the
			// zstd decoder's own state; nothing near the 64 MiB expansion.
			if alloc := ms1.TotalAlloc - ms0.TotalAlloc; alloc > 3*MaxPayload {
				t.Errorf("decoding the bomb allocated %d bytes", alloc)
			}
		})
	}
}

func TestStreamEnd(t *testing.T) {
	d := NewDecoder(bytes.NewReader(nil), DecoderOptions{})
	for range 2 {
		if _, err := d.Decode(); err != io.EOF {
			t.Fatalf("empty stream: %v, want io.EOF", err)
		}
	}
	b, _ := encodeAll(t, EncoderOptions{}, &Ack{Epoch: 1}, &Ack{Epoch: 2})
	out, _ := decodeAll(t, b)
	if len(out) != 2 {
		t.Fatalf("decoded %d frames", len(out))
	}
	_, err := NewDecoder(bytes.NewReader(b[:len(b)-1]), DecoderOptions{}).Decode()
	if err != nil {
		t.Fatalf("first of two frames: %v", err)
	}
}

func TestReadError(t *testing.T) {
	boom := errors.New("boom")
	b, _ := encodeAll(t, EncoderOptions{}, &Ack{Epoch: 1})
	for _, n := range []int{0, 5, HeaderSize, len(b) - 1} {
		r := io.MultiReader(bytes.NewReader(b[:n]), &errReader{boom})
		_, err := NewDecoder(r, DecoderOptions{}).Decode()
		if !errors.Is(err, boom) || errors.Is(err, ErrMalformed) {
			t.Errorf("read error after %d bytes: got %v", n, err)
		}
	}
}

type errReader struct{ err error }

func (r *errReader) Read([]byte) (int, error) { return 0, r.err }

// failWriter fails after accepting n writes.
type failWriter struct {
	n   int
	err error
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n == 0 {
		return 0, w.err
	}
	w.n--
	return len(p), nil
}

func TestWriteErrorSticky(t *testing.T) {
	boom := errors.New("boom")
	for _, n := range []int{0, 1} {
		w := &failWriter{n: n, err: boom}
		e := NewEncoder(w, EncoderOptions{})
		// A large extent goes out in two writes, header and data.
		err := e.Encode(&DiskExtent{Data: random(1 << 20)})
		if !errors.Is(err, boom) {
			t.Fatalf("after %d writes: Encode = %v", n, err)
		}
		if err2 := e.Encode(&Ack{}); err2 != err {
			t.Errorf("next Encode = %v, want the same error", err2)
		}
		if s := e.Stats(); s.Frames != 0 {
			t.Errorf("failed frame counted: %+v", s.Counts)
		}
	}
}

func TestDecodedFramesOwnMemory(t *testing.T) {
	for _, c := range []Compression{CompressNone, CompressFast} {
		a := &DiskExtent{Seq: 1, Data: compressible(100 << 10)}
		b := &DiskExtent{Seq: 2, Data: bytes.Repeat([]byte("x y z "), 20<<10)}
		enc, _ := encodeAll(t, EncoderOptions{Compression: c}, a, b)
		d := NewDecoder(bytes.NewReader(enc), DecoderOptions{})
		fa, err := d.Decode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Decode(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fa.(*DiskExtent).Data, a.Data) {
			t.Fatalf("%v: first frame's data changed by decoding the second", c)
		}
	}

	// Nor do encoded bytes alias the caller's frame.
	data := compressible(1000)
	f := &MemRun{Data: append(data, make([]byte, 4096-len(data))...)}
	var buf bytes.Buffer
	if err := NewEncoder(&buf, EncoderOptions{}).Encode(f); err != nil {
		t.Fatal(err)
	}
	enc := bytes.Clone(buf.Bytes())
	f.Data[0] ^= 0xff
	out, _ := decodeAll(t, enc)
	if out[0].(*MemRun).Data[0] == f.Data[0] {
		t.Error("encoded frame changed with the caller's buffer")
	}
}

func TestCompressionOption(t *testing.T) {
	for c := CompressNone; c < numCompression; c++ {
		if err := c.Validate(); err != nil {
			t.Errorf("%v: %v", c, err)
		}
		text, err := c.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Compression
		if err := back.UnmarshalText(text); err != nil || back != c {
			t.Errorf("%q parses to %v, %v", text, back, err)
		}
	}
	bad := numCompression
	if bad.Validate() == nil || (EncoderOptions{Compression: bad}).Validate() == nil {
		t.Error("unknown compression accepted")
	}
	var c Compression
	if c.UnmarshalText([]byte("max")) == nil {
		t.Error(`"max" parsed`)
	}
	if err := (DecoderOptions{}).Validate(); err != nil {
		t.Error(err)
	}

	e := NewEncoder(io.Discard, EncoderOptions{Compression: bad})
	if e.Encode(&Ack{}) == nil {
		t.Error("Encoder with invalid options encoded a frame")
	}
	e = NewEncoder(io.Discard, EncoderOptions{})
	if e.SetCompression(bad) == nil || e.Compression() != CompressNone {
		t.Error("SetCompression accepted an unknown level")
	}
	if err := e.SetCompression(CompressBetter); err != nil || e.Compression() != CompressBetter {
		t.Errorf("SetCompression(better) = %v", err)
	}
}

// The clock is read around each compression and nowhere else: a fake clock
// that advances by a millisecond per reading gives one millisecond per
// compressed frame, and none for frames sent as they are.
func TestCompressTime(t *testing.T) {
	var now time.Time
	clock := func() time.Time { now = now.Add(time.Millisecond); return now }
	e := NewEncoder(io.Discard, EncoderOptions{Compression: CompressFast, Clock: clock})
	for _, f := range []Frame{&DiskExtent{Target: 1, Data: compressible(64 << 10)}, &Ack{Epoch: 1}, &DiskExtent{Target: 1, Data: compressible(8 << 10)}} {
		if err := e.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Stats().CompressTime; got != 2*time.Millisecond {
		t.Errorf("CompressTime = %v, want 2ms (two compressed frames)", got)
	}
	e = NewEncoder(io.Discard, EncoderOptions{Compression: CompressFast})
	if err := e.Encode(&DiskExtent{Target: 1, Data: compressible(64 << 10)}); err != nil || e.Stats().CompressTime != 0 {
		t.Errorf("without a clock: CompressTime %v, err %v", e.Stats().CompressTime, err)
	}
}

// BenchmarkEncodeDiskExtent encodes 1 MiB extents of text and of random
// data; CompressNone is the baseline of the same run. Random data is
// judged by samples and sent raw, so it should cost little more than the
// baseline.
func BenchmarkEncodeDiskExtent(b *testing.B) {
	for _, dk := range []struct {
		name string
		data func(int) []byte
	}{{"compressible", compressible}, {"random", random}} {
		f := &DiskExtent{Target: 1, Offset: 1 << 30, Data: dk.data(1 << 20)}
		for _, c := range []Compression{CompressNone, CompressFast} {
			b.Run(dk.name+"/"+c.String(), func(b *testing.B) {
				e := NewEncoder(io.Discard, EncoderOptions{Compression: c})
				b.SetBytes(int64(len(f.Data)))
				b.ReportAllocs()
				for b.Loop() {
					if err := e.Encode(f); err != nil {
						b.Fatal(err)
					}
				}
				s := e.Stats()
				b.ReportMetric(float64(s.WireBytes)/float64(s.RawBytes), "wire/raw")
			})
		}
	}
}

func BenchmarkDecodeDiskExtent(b *testing.B) {
	f := &DiskExtent{Target: 1, Offset: 1 << 30, Data: compressible(1 << 20)}
	for _, c := range []Compression{CompressNone, CompressFast} {
		b.Run(c.String(), func(b *testing.B) {
			enc, _ := encodeAll(b, EncoderOptions{Compression: c}, f)
			r := bytes.NewReader(enc)
			b.SetBytes(int64(len(f.Data)))
			b.ReportAllocs()
			d := NewDecoder(r, DecoderOptions{})
			for b.Loop() {
				r.Reset(enc)
				if _, err := d.Decode(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestReset(t *testing.T) {
	boom := errors.New("boom")
	e := NewEncoder(&failWriter{err: boom}, EncoderOptions{Compression: CompressFast})
	if err := e.Encode(&Ack{}); !errors.Is(err, boom) {
		t.Fatalf("Encode = %v", err)
	}
	var buf bytes.Buffer
	e.Reset(&buf)
	f := &DiskExtent{Seq: 1, Data: compressible(8192)}
	if err := e.Encode(f); err != nil {
		t.Fatalf("Encode after Reset: %v", err)
	}
	if s := e.Stats(); s.Frames != 1 || s.Compressed != 1 || s.WireBytes != uint64(buf.Len()) {
		t.Errorf("stats after Reset %+v", s.Counts)
	}

	d := NewDecoder(bytes.NewReader([]byte{0xff}), DecoderOptions{})
	if _, err := d.Decode(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Decode = %v", err)
	}
	d.Reset(&buf)
	got, err := d.Decode()
	if err != nil || !reflect.DeepEqual(got, Frame(f)) {
		t.Fatalf("Decode after Reset = %+v, %v", got, err)
	}
	if s := d.Stats(); s.Frames != 1 || s.Compressed != 1 {
		t.Errorf("decoder stats after Reset %+v", s.Counts)
	}

	// Invalid options outlive Reset.
	bad := NewEncoder(io.Discard, EncoderOptions{Compression: numCompression})
	bad.Reset(io.Discard)
	if bad.Encode(&DiskExtent{Data: compressible(8192)}) == nil {
		t.Error("Encoder with invalid options encoded after Reset")
	}
}

func TestGroupPlanID(t *testing.T) {
	g := func(cut uint64, members ...string) *vmspec.GroupCut {
		return &vmspec.GroupCut{Group: "g", Cut: cut, Members: members}
	}
	if GroupPlanID(42, nil) != 42 {
		t.Error("an untagged plan changed its id")
	}
	ids := map[uint64]string{42: "untagged"}
	for name, tag := range map[string]*vmspec.GroupCut{"cut 1": g(1, "a"), "cut 2": g(2, "a"), "members a b": g(1, "a", "b"), "members ab": g(1, "ab")} {
		id := GroupPlanID(42, tag)
		if other, dup := ids[id]; dup {
			t.Errorf("%s and %s have one plan id", name, other)
		}
		ids[id] = name
	}
}

// TestEncodersShareBuffers: encoders on several goroutines borrow large
// frames' buffers from one pool; every frame must still decode to what
// was encoded, compressed or not.
func TestEncodersShareBuffers(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			var out bytes.Buffer
			comp := []Compression{CompressNone, CompressFast}[g%2]
			enc := NewEncoder(&out, EncoderOptions{Compression: comp})
			var sent []*DiskExtent
			for i := range 12 {
				data := make([]byte, (1+rng.IntN(4))<<20)
				for j := range data {
					data[j] = byte(j / (1 + i%5) * g) // compressible, unlike its neighbours'
				}
				if i%3 == 0 {
					for j := range data {
						data[j] = byte(rng.Uint32())
					}
				}
				f := &DiskExtent{Seq: uint64(i), Offset: uint64(i) << 22, Data: data}
				if err := enc.Encode(f); err != nil {
					t.Error(err)
					return
				}
				sent = append(sent, f)
			}
			dec := NewDecoder(&out, DecoderOptions{})
			for _, want := range sent {
				f, err := dec.Decode()
				if err != nil {
					t.Error(err)
					return
				}
				if got := f.(*DiskExtent); got.Seq != want.Seq || !bytes.Equal(got.Data, want.Data) {
					t.Errorf("encoder %d: frame %d decoded differently", g, want.Seq)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Every Encoder of the process compresses through one zstd encoder per
// level, which keeps a history per CPU rather than per Encoder: a sender
// holds an Encoder per VM between epochs. Many Encoders, compressing at
// once, each produce what decodes to their own frame, and the heap they
// keep together stays below what one history each would cost (about
// 1.5 MiB: 48 MiB for 32).
func TestEncodersShareACompressor(t *testing.T) {
	const n = 32
	data := bytes.Repeat([]byte("drsync shares one compressor per level "), 1<<20/39)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	encs := make([]*Encoder, n)
	outs := make([]bytes.Buffer, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range encs {
		encs[i] = NewEncoder(&outs[i], EncoderOptions{Compression: CompressFast})
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = encs[i].Encode(&DiskExtent{Target: uint16(i), Offset: 0, Data: data})
		}()
	}
	wg.Wait()
	runtime.GC()
	runtime.ReadMemStats(&after)
	for i := range encs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if outs[i].Len() >= len(data)/2 {
			t.Fatalf("encoder %d: %d bytes for %d of repeated text: not compressed", i, outs[i].Len(), len(data))
		}
		f, err := NewDecoder(&outs[i], DecoderOptions{}).Decode()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := f.(*DiskExtent); !ok || d.Target != uint16(i) || !bytes.Equal(d.Data, data) {
			t.Fatalf("encoder %d: its frame does not decode to what it encoded", i)
		}
	}
	kept := int64(after.HeapInuse) - int64(before.HeapInuse)
	outBytes := 0
	for i := range outs {
		outBytes += outs[i].Cap()
	}
	if held := kept - int64(outBytes); held > 16<<20 {
		t.Fatalf("%d Encoders keep %d MiB of heap besides their output: a compressor each", n, held>>20)
	}
	runtime.KeepAlive(encs)
}

// A frame borrows a buffer of about its own size, not one that fits the
// largest frame: eight VMs sending a few pages each at once held 4 MiB
// apiece. The largest class still fits the largest frame compressed at
// zstd's worst case, so compressing never outgrows what it borrowed.
func TestFramesBorrowBuffersOfTheirSize(t *testing.T) {
	for _, n := range []int{splitWrite + 1, 300 << 10, 1 << 20} {
		b := getFrameBuf(n)
		if cap(b) < n || cap(b) > 4*n {
			t.Errorf("a %d-byte frame borrowed a buffer of capacity %d", n, cap(b))
		}
		putFrameBuf(b)
	}
	worst := HeaderSize + 4 + zstdBound(MaxData)
	if b := getFrameBuf(worst); cap(b) != frameBufs.Size() {
		t.Errorf("the largest compressed frame (%d bytes) does not fit the pool's largest buffers (%d)", worst, frameBufs.Size())
	}
}

// Large frames are compressed only when samples of their data compress:
// random data goes out raw without a whole-frame attempt, and data that
// compresses anywhere the samples fall is still compressed whole.
func TestSampledCompression(t *testing.T) {
	half := func(n int) []byte { // random first half, compressible second
		return append(random(n / 2)[:n/2:n/2], compressible(n-n/2)...)
	}
	for _, c := range []struct {
		name       string
		data       []byte
		compressed bool
		sampledRaw uint64
		timed      time.Duration // clock ticks of 1 ms: one per sampling, one per whole attempt
	}{
		{"random below the sampling size", random(sampleFrom - 1), false, 0, time.Millisecond},
		{"random", random(1 << 20), false, 1, time.Millisecond},
		{"random, largest", random(MaxData), false, 1, time.Millisecond},
		{"compressible", compressible(1 << 20), true, 0, 2 * time.Millisecond},
		{"half random", half(sampleFrom), true, 0, 2 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			var now time.Time
			clock := func() time.Time { now = now.Add(time.Millisecond); return now }
			var out bytes.Buffer
			e := NewEncoder(&out, EncoderOptions{Compression: CompressFast, Clock: clock})
			in := &DiskExtent{Target: 1, Offset: 4096, Data: c.data}
			if err := e.Encode(in); err != nil {
				t.Fatal(err)
			}
			s := e.Stats()
			if got := s.Compressed == 1; got != c.compressed || s.SampledRaw != c.sampledRaw {
				t.Errorf("compressed %v, sampled raw %d; want %v, %d", got, s.SampledRaw, c.compressed, c.sampledRaw)
			}
			if s.CompressTime != c.timed {
				t.Errorf("CompressTime %v, want %v", s.CompressTime, c.timed)
			}
			f, err := NewDecoder(&out, DecoderOptions{}).Decode()
			if err != nil || !reflect.DeepEqual(f, Frame(in)) {
				t.Fatalf("decoded %T (err %v), not the frame sent", f, err)
			}
		})
	}
}

// TestBorrowedData: with Borrow a frame's data is the decoder's buffer,
// overwritten by the next Decode, for raw and compressed frames alike;
// without it each frame keeps its own copy. Either way the frame decodes
// to what was sent.
func TestBorrowedData(t *testing.T) {
	for _, c := range []Compression{CompressNone, CompressFast} {
		first, second := compressible(2*vmspec.PageSize), bytes.Repeat([]byte("second page run "), vmspec.PageSize/8)
		b, _ := encodeAll(t, EncoderOptions{Compression: c},
			&MemRun{Seq: 0, Target: 1, Page: 2, Data: first},
			&DiskExtent{Seq: 1, Target: 0, Offset: 4096, Data: second})
		for _, borrow := range []bool{false, true} {
			d := NewDecoder(bytes.NewReader(b), DecoderOptions{Borrow: borrow})
			f1, err := d.Decode()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(DataOf(f1), first) {
				t.Fatalf("%v, borrow %v: first frame's data differs from what was sent", c, borrow)
			}
			f2, err := d.Decode()
			if err != nil || !bytes.Equal(DataOf(f2), second) {
				t.Fatalf("%v, borrow %v: second frame: %v", c, borrow, err)
			}
			if kept := bytes.Equal(DataOf(f1), first); kept == borrow {
				t.Errorf("%v, borrow %v: first frame's data kept after the next Decode: %v", c, borrow, kept)
			}
		}
	}
}
