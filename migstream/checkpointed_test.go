package migstream

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// segments is a reader whose Reads never cross from one segment to the
// next, as a socket delivers a COLO source's bytes: the source sends
// nothing more until it is answered.
type segments struct{ segs [][]byte }

func (s *segments) Read(b []byte) (int, error) {
	for len(s.segs) > 0 && len(s.segs[0]) == 0 {
		s.segs = s.segs[1:]
	}
	if len(s.segs) == 0 {
		return 0, io.EOF
	}
	n := copy(b, s.segs[0])
	s.segs[0] = s.segs[0][n:]
	return n, nil
}

func coloCmd(cmd, n uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16([]byte{secCommand}, cmd), n)
}

func TestCheckpointed(t *testing.T) {
	var full sb
	full.header().raw(coloCmd(migCmdEnableCOLO, 0)).start(2).memSize(false, blkRAM, blkVRAM).
		page("pc.ram", 0, pageOf(1)).eos().footer(2).
		end(2).page(blkVRAM.ID, 0, pageOf(2)).eos().footer(2).device()
	msg := binary.BigEndian.AppendUint32(nil, 3) // a COLO message between parts
	var cp sb                                    // CONTINUE: still vga.vram from the first pass
	cp.end(2).page("", PageSize, pageOf(3)).zero("pc.ram", 2*PageSize, 0).eos().footer(2).u8(secEOF)

	tests := []struct {
		name    string
		segs    [][]byte
		fullErr string // "" for success
		cpErr   string
		pages   []string // recorded after the checkpoint
	}{
		{name: "full pass then a checkpoint", segs: [][]byte{full.bytes(), msg, cp.bytes()},
			pages: []string{"P0:0", "P1:0", "P1:1000", "Z0:2000=0"}},
		{name: "full pass arriving in pieces", segs: [][]byte{full.bytes()[:100], full.bytes()[100 : len(full.Bytes())-3], full.bytes()[len(full.Bytes())-3:], msg, cp.bytes()},
			pages: []string{"P0:0", "P1:0", "P1:1000", "Z0:2000=0"}},
		{name: "no ENABLE_COLO", segs: [][]byte{smallStream()}, fullErr: "without the ENABLE_COLO"},
		{name: "other command", segs: [][]byte{func() []byte {
			var s sb
			return s.header().raw(coloCmd(1, 0)).bytes()
		}()}, fullErr: "COMMAND 1"},
		{name: "stream ends inside the device state", segs: [][]byte{full.bytes()[:len(full.Bytes())-1]}, fullErr: "truncated stream"},
		{name: "checkpoint is not an END section", segs: [][]byte{full.bytes(), msg, append([]byte{secPart}, cp.bytes()[1:]...)}, cpErr: "want 0x03 (END)"},
		{name: "checkpoint without EOF", segs: [][]byte{full.bytes(), msg, cp.bytes()[:len(cp.Bytes())-1]}, cpErr: "truncated stream: checkpoint EOF marker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			c := NewCheckpointed(&segments{segs: slices.Clone(tc.segs)}, rec, Options{})
			defer c.Close()
			res, err := c.Full()
			if tc.fullErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fullErr) {
					t.Fatalf("Full: got %v, want an error containing %q", err, tc.fullErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Full: %v", err)
			}
			if res.Stats.StreamBytes != int64(full.Len()) {
				t.Fatalf("Full read %d bytes, want %d", res.Stats.StreamBytes, full.Len())
			}
			if _, err := ParseSkeleton(res.Skeleton); err != nil {
				t.Fatalf("skeleton of the first pass: %v", err)
			}
			var m [4]byte
			if _, err := io.ReadFull(c.Reader(), m[:]); err != nil || binary.BigEndian.Uint32(m[:]) != 3 {
				t.Fatalf("message between parts: %x, %v", m, err)
			}
			st, err := c.Checkpoint()
			if tc.cpErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.cpErr) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("Checkpoint: got %v, want ErrMalformed containing %q", err, tc.cpErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Checkpoint: %v", err)
			}
			if st.Pages != 1 || st.ZeroPages != 1 || st.StreamBytes != int64(cp.Len()) {
				t.Fatalf("checkpoint stats %+v, want 1 page, 1 zero page, %d bytes", st, cp.Len())
			}
			if !slices.Equal(rec.order, tc.pages) {
				t.Fatalf("records %v, want %v", rec.order, tc.pages)
			}
		})
	}
}

// FuzzCheckpointed feeds a COLO first pass and checkpoint parts, split
// where the input says, and checks the parser never panics, never reads
// past the end of the first pass it reports, and fails only with
// *FormatError or a handler/reader error.
func FuzzCheckpointed(f *testing.F) {
	var full sb
	full.header().raw(coloCmd(migCmdEnableCOLO, 0)).start(2).memSize(false, blkRAM, blkVRAM).
		page("pc.ram", 0, pageOf(1)).eos().footer(2).
		end(2).zero(blkVRAM.ID, 0, 0).eos().footer(2).device()
	var cp sb
	cp.end(2).zero("", PageSize, 0).page("pc.ram", 2*PageSize, pageOf(3)).eos().footer(2).u8(secEOF)
	f.Add(full.bytes(), cp.bytes())
	f.Add(full.bytes()[:len(full.Bytes())-1], cp.bytes())
	f.Add(full.bytes(), cp.bytes()[:20])
	f.Fuzz(func(t *testing.T, first, part []byte) {
		c := NewCheckpointed(&segments{segs: [][]byte{first, part, part}}, newRecorder(), Options{MaxDeviceState: 1 << 20})
		defer c.Close()
		res, err := c.Full()
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Full: %v is not a *FormatError", err)
			}
			return
		}
		if res.Stats.StreamBytes != int64(len(first)) {
			t.Fatalf("first pass of %d bytes reported as %d", len(first), res.Stats.StreamBytes)
		}
		for range 2 {
			if _, err := c.Checkpoint(); err != nil {
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("Checkpoint: %v is not a *FormatError", err)
				}
				return
			}
		}
	})
}
