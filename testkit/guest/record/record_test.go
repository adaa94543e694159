package record

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	b := make([]byte, Size)
	for _, seq := range []uint64{1, 2, 1000, 1<<64 - 1} {
		Encode(b, seq, seq*7)
		r, err := Decode(b)
		if err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if r.Seq != seq || r.Counter != seq*7 {
			t.Fatalf("seq %d: decoded %+v", seq, r)
		}
		if string(b[:8]) != Magic {
			t.Fatalf("magic %q", b[:8])
		}
	}
	var other [Size]byte
	Encode(other[:], 2, 0)
	Encode(b, 3, 0)
	if bytes.Equal(other[24:100], b[24:100]) {
		t.Fatal("payloads of seq 2 and 3 are equal")
	}
}

func TestDecodeErrors(t *testing.T) {
	b := make([]byte, Size)
	if _, err := Decode(b); !errors.Is(err, ErrEmpty) {
		t.Fatalf("zero slot: %v", err)
	}
	for _, tc := range []struct {
		name string
		mess func(b []byte)
		want string
	}{
		{"flipped payload byte", func(b []byte) { b[1000] ^= 1 }, "bad checksum"},
		{"flipped crc", func(b []byte) { b[Size-1] ^= 0x80 }, "bad checksum"},
		{"torn tail", func(b []byte) { clear(b[2048:]) }, "bad checksum"},
		{"magic", func(b []byte) { b[0] = 'X' }, "bad magic"},
	} {
		Encode(b, 42, 9)
		tc.mess(b)
		if _, err := Decode(b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestSlots(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want int
	}{
		{0, 0},
		{RingStart + Size - 1, 0},
		{RingStart + Size, 1},
		{64 << 20, 16128},
		{1 << 30, MaxSlots},
	} {
		if got := Slots(tc.size); got != tc.want {
			t.Errorf("Slots(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
	if SlotOf(1, 10) != 0 || SlotOf(10, 10) != 9 || SlotOf(11, 10) != 0 {
		t.Error("SlotOf")
	}
}

type readerAt []byte

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, r[off:]), nil
}

func TestScan(t *testing.T) {
	img := make(readerAt, RingStart+10*Size)
	for seq := uint64(1); seq <= 13; seq++ {
		Encode(img[Offset(SlotOf(seq, 10)):], seq, 0)
	}
	var got []uint64
	err := Scan(img, int64(len(img)), make([]byte, 3*Size), func(slot int, b []byte) error {
		r, err := Decode(b)
		if err != nil {
			return err
		}
		if SlotOf(r.Seq, 10) != slot {
			t.Errorf("slot %d holds seq %d", slot, r.Seq)
		}
		got = append(got, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{11, 12, 13, 4, 5, 6, 7, 8, 9, 10}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if err := Scan(img, int64(len(img)), make([]byte, 100), nil); err == nil {
		t.Fatal("odd buffer accepted")
	}
}
