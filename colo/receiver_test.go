package colo

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/migstream"
)

// firstPass is a minimal COLO first pass: header, ENABLE_COLO, one RAM
// block with one page, a FULL device section, EOF and VMDESCRIPTION.
func firstPass() []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x5145564D)
	b = binary.BigEndian.AppendUint32(b, 3)
	b = append(b, 0x07)
	b = binary.BigEndian.AppendUint32(b, 13)
	b = append(b, "pc-i440fx-7.2"...)
	b = append(b, 0x08, 0, 8, 0, 0) // ENABLE_COLO
	b = append(b, 0x01)
	b = binary.BigEndian.AppendUint32(b, 2)
	b = append(b, 3, 'r', 'a', 'm')
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 4)
	b = binary.BigEndian.AppendUint64(b, 2*4096|0x04) // MEM_SIZE
	b = append(b, 6)
	b = append(b, "pc.ram"...)
	b = binary.BigEndian.AppendUint64(b, 2*4096)
	b = binary.BigEndian.AppendUint64(b, 0x10) // EOS
	b = append(b, 0x7E, 0, 0, 0, 2)
	b = append(b, 0x03, 0, 0, 0, 2)
	b = binary.BigEndian.AppendUint64(b, 0x08) // PAGE at 0, with idstr
	b = append(b, 6)
	b = append(b, "pc.ram"...)
	b = append(b, make([]byte, 4096)...)
	b = binary.BigEndian.AppendUint64(b, 0x10)
	b = append(b, 0x7E, 0, 0, 0, 2)
	b = append(b, deviceBuffer()...)
	desc := `{"page_size": 4096, "devices": []}`
	b = append(b, 0x06)
	b = binary.BigEndian.AppendUint32(b, uint32(len(desc)))
	return append(b, desc...)
}

// deviceBuffer is a checkpoint's device state: a FULL section and EOF.
func deviceBuffer() []byte {
	b := []byte{0x04, 0, 0, 0, 3, 5}
	b = append(b, "timer"...)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 2)
	b = append(b, make([]byte, 8)...)
	return append(b, 0x7E, 0, 0, 0, 3, 0x00)
}

// ramPart is a checkpoint's RAM part: one page (CONTINUE: pc.ram) and EOF.
func ramPart() []byte {
	b := []byte{0x03, 0, 0, 0, 2}
	b = binary.BigEndian.AppendUint64(b, 4096|0x08|0x20)
	b = append(b, make([]byte, 4096)...)
	b = binary.BigEndian.AppendUint64(b, 0x10)
	return append(b, 0x7E, 0, 0, 0, 2, 0x00)
}

func msg(m Message) []byte { return binary.BigEndian.AppendUint32(nil, uint32(m)) }

func sizeMsg(n uint64) []byte { return binary.BigEndian.AppendUint64(msg(VMStateSize), n) }

// TestReceiverCheckpoint plays QEMU's side of colo_do_checkpoint_transaction
// and checks what the receiver answers, and when.
func TestReceiverCheckpoint(t *testing.T) {
	dev := deviceBuffer()
	tests := []struct {
		name    string
		send    [][]byte // the source's bytes after our reply, in order
		stopErr error
		gone    bool   // the source dies after sending
		wantErr string // "" for success
		want    []Message
	}{
		{name: "checkpoint", send: [][]byte{msg(VMStateSend), ramPart(), sizeMsg(uint64(len(dev))), dev},
			want: []Message{CheckpointReply, VMStateReceived, VMStateLoaded}},
		{name: "disks' cut fails: the guest still resumes", send: [][]byte{msg(VMStateSend), ramPart(), sizeMsg(uint64(len(dev))), dev},
			stopErr: errors.New("transaction refused"), wantErr: "transaction refused",
			want: []Message{CheckpointReply, VMStateReceived, VMStateLoaded}},
		{name: "size instead of send", send: [][]byte{sizeMsg(1)}, wantErr: "got vmstate-size, want vmstate-send",
			want: []Message{CheckpointReply}},
		{name: "RAM part not ending in EOF", send: [][]byte{msg(VMStateSend), append(ramPart()[:len(ramPart())-1], 0x04)},
			wantErr: "want 0x00 (EOF)", want: []Message{CheckpointReply}},
		{name: "device state too large", send: [][]byte{msg(VMStateSend), ramPart(), sizeMsg(MaxDeviceBuffer + 1)},
			wantErr: "limit", want: []Message{CheckpointReply}},
		{name: "device state not ending in EOF", send: [][]byte{msg(VMStateSend), ramPart(), sizeMsg(uint64(len(dev) - 1)), dev[:len(dev)-1]},
			wantErr: "want FULL ... EOF", want: []Message{CheckpointReply}},
		{name: "source gone mid-checkpoint", send: [][]byte{msg(VMStateSend), ramPart()[:100]},
			gone: true, wantErr: "truncated", want: []Message{CheckpointReply}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := net.Pipe()
			got := make(chan []Message, 1)
			go func() {
				// The source: first pass, wait ready, request, wait reply, then
				// the scripted bytes; it records every message it is sent.
				var seen []Message
				defer func() { src.Close(); got <- seen }()
				src.Write(firstPass())
				read := func() bool {
					var b [4]byte
					if _, err := io.ReadFull(src, b[:]); err != nil {
						return false
					}
					seen = append(seen, Message(binary.BigEndian.Uint32(b[:])))
					return true
				}
				if !read() { // ready
					return
				}
				seen = seen[:0]
				src.Write(msg(CheckpointRequest))
				if !read() { // reply
					return
				}
				go func() {
					for _, b := range tc.send {
						src.Write(b)
					}
					if tc.gone {
						src.Close()
					}
				}()
				for read() {
				}
			}()
			r := NewReceiver(dst, nil, migstream.Options{})
			if _, err := r.Full(); err != nil {
				t.Fatal(err)
			}
			if err := r.Ready(); err != nil {
				t.Fatal(err)
			}
			if err := r.WaitRequest(); err != nil {
				t.Fatal(err)
			}
			stopped := false
			cp, err := r.Take(func(c *Checkpoint) error {
				stopped = true
				if c.RAM.Pages != 1 || len(c.DeviceState) != len(dev) {
					t.Errorf("at stop: %+v, %d device bytes", c.RAM, len(c.DeviceState))
				}
				return tc.stopErr
			})
			if tc.wantErr == "" && (err != nil || !stopped || cp == nil) {
				t.Fatalf("Take: %v (atStop ran: %v)", err, stopped)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Take: %v, want an error containing %q", err, tc.wantErr)
			}
			r.Close()
			select {
			case seen := <-got:
				if len(seen) != len(tc.want) {
					t.Fatalf("source was sent %v, want %v", seen, tc.want)
				}
				for i := range seen {
					if seen[i] != tc.want[i] {
						t.Fatalf("source was sent %v, want %v", seen, tc.want)
					}
				}
			case <-time.After(10 * time.Second):
				t.Fatal("source never finished")
			}
		})
	}
}
