package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/guest/record"
)

// writeRing writes records first..last into a new sparse raw image of
// size bytes the way the workload does, one slot per seq, and returns it
// opened.
func writeRing(t *testing.T, size int64, first, last uint64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	slots := record.Slots(size)
	b := make([]byte, record.Size)
	for seq := first; seq <= last && first > 0; seq++ {
		record.Encode(b, seq, seq*5)
		if _, err := f.WriteAt(b, record.Offset(record.SlotOf(seq, slots))); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func poke(t *testing.T, f *os.File, off int64, b []byte) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

const small = record.RingStart + 64*record.Size // a 64-slot ring

func TestVerifyRecordsValid(t *testing.T) {
	for _, tc := range []struct {
		name        string
		size        int64
		first, last uint64
		want        Records
	}{
		{"empty", 8 << 20, 0, 0, Records{Slots: 1792}},
		{"one", small, 1, 1, Records{Count: 1, First: 1, Last: 1, Slots: 64}},
		{"partial", 8 << 20, 1, 500, Records{Count: 500, First: 1, Last: 500, Slots: 1792}},
		{"full", small, 1, 64, Records{Count: 64, First: 1, Last: 64, Slots: 64}},
		{"wrapped", small, 1, 150, Records{Count: 64, First: 87, Last: 150, Slots: 64}},
		{"wrapped at slot 0", small, 1, 192, Records{Count: 64, First: 129, Last: 192, Slots: 64}},
		{"capped", 1 << 30, 1, 20000, Records{Count: record.MaxSlots, First: 20000 - record.MaxSlots + 1, Last: 20000, Slots: record.MaxSlots}},
		// The size need not be a whole number of slots.
		{"ragged size", small + 100, 1, 70, Records{Count: 64, First: 7, Last: 70, Slots: 64}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := writeRing(t, tc.size, tc.first, tc.last)
			got, err := VerifyRecords(f, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestVerifyRecordsBad(t *testing.T) {
	zero := make([]byte, record.Size)
	for _, tc := range []struct {
		name string
		size int64
		last uint64
		mess func(t *testing.T, f *os.File)
		want string
	}{
		{"bad checksum", small, 40, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(17)+500, []byte{0xff})
		}, "slot 17 (offset 0x111000): bad checksum"},
		{"torn write", small, 150, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(record.SlotOf(150, 64))+2048, zero[:2048]) // half of the newest record
		}, "slot 21 (offset 0x115000): bad checksum"},
		{"garbage", small, 10, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(30), []byte("not a record"))
		}, "slot 30 (offset 0x11e000): bad magic"},
		{"hole", small, 40, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(19), zero) // seq 20
			poke(t, f, record.Offset(20), zero) // seq 21
		}, "hole: seqs 20..21 missing between 19 and 22"},
		{"hole after wrap", small, 150, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(record.SlotOf(100, 64)), zero)
		}, "hole: seqs 100..100 missing"},
		{"oldest missing after wrap", small, 150, func(t *testing.T, f *os.File) {
			poke(t, f, record.Offset(record.SlotOf(87, 64)), zero)
		}, "seqs 87..87 are missing"},
		{"stale record", small, 150, func(t *testing.T, f *os.File) {
			// Slot of 140 still holds 76: the write of 140 was lost.
			b := make([]byte, record.Size)
			record.Encode(b, 76, 0)
			poke(t, f, record.Offset(record.SlotOf(140, 64)), b)
		}, "slot 11 holds stale seq 76: the ring ends at seq 150, so the slot should hold seq 140"},
		{"misplaced", small, 10, func(t *testing.T, f *os.File) {
			b := make([]byte, record.Size)
			record.Encode(b, 5, 0)
			poke(t, f, record.Offset(50), b)
		}, "slot 50 (offset 0x132000) holds seq 5, which belongs in slot 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := writeRing(t, tc.size, 1, tc.last)
			tc.mess(t, f)
			_, err := VerifyRecords(f, tc.size)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := VerifyRecords(writeRing(t, 1<<20, 0, 0), 1<<20); err == nil {
		t.Fatal("an image without room for a ring passed")
	}
}

func TestMaxGap(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms ...int) []Tick {
		var ticks []Tick
		for i, m := range ms {
			ticks = append(ticks, Tick{Counter: uint64(i), At: t0.Add(time.Duration(m) * time.Millisecond)})
		}
		return ticks
	}
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name     string
		ticks    []Tick
		from, to int
		want     time.Duration
	}{
		{"steady", at(0, 50, 100, 150, 200), 0, 200, 50 * time.Millisecond},
		{"stall inside", at(0, 50, 100, 230, 280), 0, 280, 130 * time.Millisecond},
		{"stall outside", at(0, 50, 300, 350, 400, 450), 300, 450, 50 * time.Millisecond},
		{"stall across from", at(0, 50, 300, 350, 400), 200, 400, 250 * time.Millisecond},
		{"stall across to", at(0, 50, 100, 400), 0, 200, 300 * time.Millisecond},
		{"stopped ticking", at(0, 50, 100), 0, 1000, 900 * time.Millisecond},
		{"no ticks before from", at(500, 550), 0, 550, 500 * time.Millisecond},
		{"no ticks", nil, 0, 70, 70 * time.Millisecond},
		{"ticks on the edges", at(0, 100, 150, 200, 400), 100, 200, 50 * time.Millisecond},
	} {
		if got := MaxGap(tc.ticks, ms(tc.from), ms(tc.to)); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
