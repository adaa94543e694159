package colo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Message is one of QEMU's COLO messages (qapi COLOMessage), sent as a
// be32 on the migration stream (source to us) or its return path (us to
// the source).
type Message uint32

// The COLO messages, in QAPI order; their values are the wire values.
const (
	CheckpointReady   Message = iota // us: ready for checkpoints (after the first pass)
	CheckpointRequest                // source: wants a checkpoint
	CheckpointReply                  // us: go ahead; the source stops the guest
	VMStateSend                      // source: RAM part follows
	VMStateSize                      // source: be64 length, then the device buffer
	VMStateReceived                  // us: have it all
	VMStateLoaded                    // us: done; the source resumes the guest
)

var messageNames = [...]string{"checkpoint-ready", "checkpoint-request", "checkpoint-reply",
	"vmstate-send", "vmstate-size", "vmstate-received", "vmstate-loaded"}

func (m Message) String() string {
	if int(m) < len(messageNames) {
		return messageNames[m]
	}
	return fmt.Sprintf("message(%d)", uint32(m))
}

// ErrProtocol marks a source that sent what the checkpoint protocol does
// not allow at that point.
var ErrProtocol = errors.New("colo: protocol violation")

func writeMessage(w io.Writer, m Message) error {
	if _, err := w.Write(binary.BigEndian.AppendUint32(nil, uint32(m))); err != nil {
		return fmt.Errorf("colo: send %v: %w", m, err)
	}
	return nil
}

// expect reads one message and checks it is want.
func expect(r io.Reader, want Message) error {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("colo: waiting for %v: %w", want, err)
	}
	if got := Message(binary.BigEndian.Uint32(b[:])); got != want {
		return fmt.Errorf("colo: got %v, want %v: %w", got, want, ErrProtocol)
	}
	return nil
}
