package journal

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

func validJournal(t testing.TB) []byte {
	var buf bytes.Buffer
	buf.Write(header("vm1"))
	enc := wire.NewEncoder(&buf, wire.EncoderOptions{})
	for _, f := range []wire.Frame{
		&wire.EpochBegin{Epoch: 1, Items: 2, Bytes: 4096, Targets: []wire.Target{{ID: 0, Kind: vmspec.KindDisk, Name: "vda", Size: 1 << 20, BlockSize: 4096}}},
		&wire.DiskExtent{Seq: 0, Target: 0, Offset: 0, Data: bytes.Repeat([]byte{7}, 4096)},
		&wire.ZeroRun{Seq: 1, Target: 0, Offset: 4096, Length: 4096},
		&wire.EpochCommit{Epoch: 1, Items: 2, Digest: 9},
	} {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestScanTornTail(t *testing.T) {
	j := validJournal(t)
	var full []int64
	n, tail, err := ScanReader(bytes.NewReader(j), "vm1", func(off int64, f wire.Frame) error {
		full = append(full, off)
		return nil
	})
	if err != nil || tail != nil || n != int64(len(j)) || len(full) != 4 {
		t.Fatalf("whole journal: n=%d tail=%v err=%v frames=%d", n, tail, err, len(full))
	}
	// Cutting the file anywhere keeps exactly the frames that end before
	// the cut.
	for cut := len(header("vm1")); cut < len(j); cut++ {
		frames := 0
		n, tail, err := ScanReader(bytes.NewReader(j[:cut]), "vm1", func(int64, wire.Frame) error { frames++; return nil })
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		want := 0
		for i, off := range full {
			end := int64(len(j))
			if i+1 < len(full) {
				end = full[i+1]
			}
			if end <= int64(cut) {
				want = i + 1
			}
			_ = off
		}
		if frames != want {
			t.Fatalf("cut %d: %d frames, want %d", cut, frames, want)
		}
		if n > int64(cut) || (int64(cut) != n && tail == nil) {
			t.Fatalf("cut %d: valid %d tail %v", cut, n, tail)
		}
	}
	// A flipped byte inside a frame ends the valid prefix there.
	bad := bytes.Clone(j)
	bad[full[1]+20] ^= 0xff
	frames := 0
	n, tail, _ = ScanReader(bytes.NewReader(bad), "vm1", func(int64, wire.Frame) error { frames++; return nil })
	if frames != 1 || n != full[1] || tail == nil {
		t.Fatalf("corrupt frame: frames=%d valid=%d tail=%v", frames, n, tail)
	}
	if _, _, err := ScanReader(bytes.NewReader(j), "vm2", func(int64, wire.Frame) error { return nil }); err == nil {
		t.Fatal("journal of another VM accepted")
	}
}

func FuzzScan(f *testing.F) {
	j := validJournal(f)
	f.Add(j)
	f.Add(j[:len(j)/2])
	f.Add(header("vm1"))
	f.Add(headerV1("vm1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var last int64 = -1
		n, _, err := ScanReader(bytes.NewReader(b), "vm1", func(off int64, fr wire.Frame) error {
			if off <= last {
				t.Fatalf("offsets not increasing: %d after %d", off, last)
			}
			last = off
			return nil
		})
		if err == nil && (n < 0 || n > int64(len(b))) {
			t.Fatalf("valid length %d of %d bytes", n, len(b))
		}
	})
}

// TestHeaderVersions: the header records the frames' protocol version; a
// journal of the first format (no version) is read as version 1, and one of
// a version this build does not speak is refused, not decoded.
func TestHeaderVersions(t *testing.T) {
	body := validJournal(t)[len(header("vm1")):]
	for _, tc := range []struct {
		name    string
		header  []byte
		wantErr error
	}{
		{"current", header("vm1"), nil},
		{"first format", headerV1("vm1"), nil},
		{"newer version", headerV("vm1", wire.Version+1), ErrVersion},
		{"version 0", headerV("vm1", 0), ErrVersion},
		{"other VM", header("vm2"), ErrCorrupt},
		{"bad crc", append(header("vm1")[:len(header("vm1"))-1], 0), ErrCorrupt},
		{"unknown magic", append([]byte("DRJRNL09"), header("vm1")[8:]...), ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := append(append([]byte{}, tc.header...), body...)
			frames := 0
			n, tail, err := ScanReader(bytes.NewReader(j), "vm1", func(int64, wire.Frame) error { frames++; return nil })
			if tc.wantErr == nil {
				if err != nil || tail != nil || n != int64(len(j)) || frames != 4 {
					t.Fatalf("n=%d tail=%v err=%v frames=%d", n, tail, err, frames)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || frames != 0 {
				t.Fatalf("err %v (frames %d), want %v", err, frames, tc.wantErr)
			}
		})
	}
	_, _, err := ScanReader(bytes.NewReader(append(headerV("vm1", wire.Version+1), body...)), "vm1", func(int64, wire.Frame) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("newer version: %v", err)
	}
}
