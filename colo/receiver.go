package colo

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/drsync/drsync/migstream"
)

// MaxDeviceBuffer bounds a checkpoint's device-state buffer. QEMU's own
// starts at 4 MiB (COLO_BUFFER_BASE_SIZE) and a small guest's is ~60 KB.
const MaxDeviceBuffer = 64 << 20

// Receiver is the receiving side of one COLO migration: it parses the
// first pass and each checkpoint with migstream and answers the source.
// It does no QMP; the caller drives QEMU and decides when to reply.
type Receiver struct {
	conn net.Conn
	cp   *migstream.Checkpointed
}

// NewReceiver reads the migration arriving on conn, handing RAM records
// to h. Close closes conn.
func NewReceiver(conn net.Conn, h migstream.Handler, o migstream.Options) *Receiver {
	return &Receiver{conn: conn, cp: migstream.NewCheckpointed(conn, h, o)}
}

// Full parses the first pass. The source then waits, guest stopped, for
// Ready.
func (r *Receiver) Full() (*migstream.Result, error) {
	res, err := r.cp.Full()
	if err != nil {
		return nil, fmt.Errorf("colo: first pass: %w", err)
	}
	return res, nil
}

// Ready tells the source to resume the guest and start checkpointing.
func (r *Receiver) Ready() error { return writeMessage(r.conn, CheckpointReady) }

// WaitRequest waits for the source's checkpoint request. The guest runs
// until Reply: the caller picks the instant of the cut by when it replies.
func (r *Receiver) WaitRequest() error { return expect(r.cp.Reader(), CheckpointRequest) }

// Checkpoint is what one checkpoint carried.
type Checkpoint struct {
	RAM         migstream.Stats // the RAM part: only pages dirtied since the previous one
	DeviceState []byte          // FULL sections and the EOF marker, no header
	Stopped     time.Duration   // Reply sent → Loaded sent: the guest's pause as we see it
}

// Take replies to a request and receives the checkpoint. atStop runs once
// everything has arrived, while the guest is still stopped (the source
// resumes it on Loaded): the place for the disks' cut. An atStop error is
// returned, and Loaded is still sent so the guest runs again.
func (r *Receiver) Take(atStop func(*Checkpoint) error) (*Checkpoint, error) {
	start := time.Now()
	if err := writeMessage(r.conn, CheckpointReply); err != nil {
		return nil, err
	}
	in := r.cp.Reader()
	if err := expect(in, VMStateSend); err != nil {
		return nil, err
	}
	st, err := r.cp.Checkpoint()
	if err != nil {
		return nil, fmt.Errorf("colo: checkpoint RAM: %w", err)
	}
	if err := expect(in, VMStateSize); err != nil {
		return nil, err
	}
	var b [8]byte
	if _, err := io.ReadFull(in, b[:]); err != nil {
		return nil, fmt.Errorf("colo: device state size: %w", err)
	}
	n := binary.BigEndian.Uint64(b[:])
	if n == 0 || n > MaxDeviceBuffer {
		return nil, fmt.Errorf("colo: device state of %d bytes (limit %d): %w", n, MaxDeviceBuffer, ErrProtocol)
	}
	dev := make([]byte, n)
	if _, err := io.ReadFull(in, dev); err != nil {
		return nil, fmt.Errorf("colo: device state (%d bytes): %w", n, err)
	}
	// qemu_save_device_state: FULL sections, then the EOF marker.
	if dev[0] != 0x04 || dev[n-1] != 0x00 {
		return nil, fmt.Errorf("colo: device state starts 0x%02x, ends 0x%02x (want FULL ... EOF): %w", dev[0], dev[n-1], ErrProtocol)
	}
	if err := writeMessage(r.conn, VMStateReceived); err != nil {
		return nil, err
	}
	c := &Checkpoint{RAM: st, DeviceState: dev}
	stopErr := atStop(c)
	if err := writeMessage(r.conn, VMStateLoaded); err != nil {
		return nil, err
	}
	c.Stopped = time.Since(start)
	if stopErr != nil {
		return c, fmt.Errorf("colo: at the checkpoint's stop: %w", stopErr)
	}
	return c, nil
}

// Offset is the number of stream bytes received so far.
func (r *Receiver) Offset() int64 { return r.cp.Offset() }

// Close ends the migration from our side; the source then leaves COLO
// only on x-colo-lost-heartbeat (see the package documentation).
func (r *Receiver) Close() error {
	err := r.conn.Close()
	r.cp.Close()
	return err
}
