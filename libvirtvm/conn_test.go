package libvirtvm

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// event builds a QEMU monitor event packet; details nil is absent.
func event(program, proc uint32, name string, details []byte) []byte {
	var b bytes.Buffer
	u32 := func(v uint32) { binary.Write(&b, binary.BigEndian, v) }
	str := func(s string) {
		u32(uint32(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (4-len(s)%4)%4))
	}
	u32(0) // length, set below
	for _, v := range []uint32{program, 1, proc, 2, 0, 0} {
		u32(v)
	}
	u32(7)        // callback ID
	str("guest1") // domain name
	b.Write(make([]byte, 16))
	u32(3)
	str(name)
	binary.Write(&b, binary.BigEndian, uint64(1700000000))
	u32(5)
	if details == nil {
		u32(0)
	} else {
		u32(1)
		str(string(details))
	}
	out := b.Bytes()
	binary.BigEndian.PutUint32(out, uint32(len(out)))
	return out
}

func TestMendPacket(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		grow int
	}{
		{"null details mended", event(qemuProgram, qemuMonitorEvent, "STOP", nil), 4},
		{"details kept", event(qemuProgram, qemuMonitorEvent, "MIGRATION", []byte(`{"status":"completed"}`)), 0},
		{"empty details kept", event(qemuProgram, qemuMonitorEvent, "X", []byte{}), 0},
		{"other procedure", event(qemuProgram, 1, "STOP", nil), 0},
		{"other program", event(0x20008086, qemuMonitorEvent, "STOP", nil), 0},
		{"short packet", []byte{0, 0, 0, 8, 1, 2, 3, 4}, 0},
		{"truncated event", event(qemuProgram, qemuMonitorEvent, "STOP", nil)[:40], 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := bytes.Clone(tc.in)
			out := mendPacket(in)
			if len(out) != len(tc.in)+tc.grow {
				t.Fatalf("length %d, want %d", len(out), len(tc.in)+tc.grow)
			}
			if tc.grow == 0 {
				if !bytes.Equal(out, tc.in) {
					t.Fatal("packet changed")
				}
				return
			}
			if got := binary.BigEndian.Uint32(out); got != uint32(len(out)) {
				t.Errorf("length field %d, want %d", got, len(out))
			}
			if !bytes.Equal(out[4:len(tc.in)], tc.in[4:]) || !bytes.Equal(out[len(tc.in):], []byte{0, 0, 0, 0}) {
				t.Errorf("mended packet % x", out)
			}
		})
	}
}
