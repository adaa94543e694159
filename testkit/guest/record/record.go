// Package record is the on-disk format the test guest's workload writes to
// its first disk and that the host-side verifier reads back: numbered
// 4096-byte records in a ring of slots that starts 1 MiB into the disk.
//
// A record holds, little-endian:
//
//	[0, 8)       magic "DRSYNCR1"
//	[8, 16)      seq, starting at 1
//	[16, 24)     the guest's in-memory counter when the record was written
//	[24, 4092)   payload, an xorshift stream seeded by seq
//	[4092, 4096) CRC-32C (Castagnoli) of bytes [0, 4092)
//
// Record seq lives in slot (seq-1) mod Slots(diskSize). A slot that was never
// written is all zeros. The writer writes one record at a time and waits for
// each write to complete, so any crash-consistent image holds one contiguous
// range of seqs, and, once the ring has wrapped, every slot is in use.
//
// The package imports only the standard library so that the guest workload,
// a static binary, can share it with the tests.
package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

const (
	// Size is the size of a record and of a slot.
	Size = 4096
	// RingStart is the disk offset of slot 0.
	RingStart = 1 << 20
	// MaxSlots caps the ring, whatever the disk size.
	MaxSlots = 16384
	// Magic opens every record.
	Magic = "DRSYNCR1"

	seqOff     = 8
	counterOff = 16
	payloadOff = 24
	crcOff     = Size - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrEmpty is what Decode returns for an all-zero slot.
var ErrEmpty = errors.New("empty slot")

// Record is a decoded record.
type Record struct {
	Seq     uint64
	Counter uint64
}

// Slots is the number of ring slots on a disk of diskSize bytes: as many
// whole slots as fit after RingStart, at most MaxSlots. It is 0 when the disk
// is too small for even one.
func Slots(diskSize int64) int {
	if diskSize < RingStart+Size {
		return 0
	}
	n := (diskSize - RingStart) / Size
	if n > MaxSlots {
		n = MaxSlots
	}
	return int(n)
}

// SlotOf is the slot that record seq (>= 1) occupies in a ring of slots.
func SlotOf(seq uint64, slots int) int {
	return int((seq - 1) % uint64(slots))
}

// Offset is the disk offset of slot.
func Offset(slot int) int64 {
	return RingStart + int64(slot)*Size
}

// Encode writes record seq (>= 1) with counter into b[:Size].
func Encode(b []byte, seq, counter uint64) {
	b = b[:Size]
	copy(b, Magic)
	binary.LittleEndian.PutUint64(b[seqOff:], seq)
	binary.LittleEndian.PutUint64(b[counterOff:], counter)
	fillPayload(b[payloadOff:crcOff], seq)
	binary.LittleEndian.PutUint32(b[crcOff:], crc32.Checksum(b[:crcOff], castagnoli))
}

// Decode checks and decodes the record in b[:Size]. It returns ErrEmpty for
// an all-zero slot and a descriptive error for anything else that is not a
// valid record.
func Decode(b []byte) (Record, error) {
	b = b[:Size]
	if IsZero(b) {
		return Record{}, ErrEmpty
	}
	if string(b[:len(Magic)]) != Magic {
		return Record{}, fmt.Errorf("bad magic %q", b[:len(Magic)])
	}
	want := binary.LittleEndian.Uint32(b[crcOff:])
	if got := crc32.Checksum(b[:crcOff], castagnoli); got != want {
		return Record{}, fmt.Errorf("bad checksum: stored %08x, computed %08x", want, got)
	}
	r := Record{
		Seq:     binary.LittleEndian.Uint64(b[seqOff:]),
		Counter: binary.LittleEndian.Uint64(b[counterOff:]),
	}
	if r.Seq == 0 {
		return Record{}, errors.New("seq 0")
	}
	var p [crcOff - payloadOff]byte
	fillPayload(p[:], r.Seq)
	if string(p[:]) != string(b[payloadOff:crcOff]) {
		return Record{}, fmt.Errorf("seq %d: checksum matches but payload does not", r.Seq)
	}
	return r, nil
}

// IsZero reports whether b is all zeros.
func IsZero(b []byte) bool {
	return !slices.ContainsFunc(b, func(c byte) bool { return c != 0 })
}

// Scan reads every slot of the ring on a disk of diskSize bytes through buf,
// whose length must be a positive multiple of Size (a page-aligned buf makes
// Scan usable on a file opened with O_DIRECT), and calls fn with each slot's
// index and bytes. fn must not keep b. Scan stops at the first error.
func Scan(r io.ReaderAt, diskSize int64, buf []byte, fn func(slot int, b []byte) error) error {
	if len(buf) < Size || len(buf)%Size != 0 {
		return fmt.Errorf("record: scan buffer of %d bytes, want a multiple of %d", len(buf), Size)
	}
	slots := Slots(diskSize)
	per := len(buf) / Size
	for first := 0; first < slots; first += per {
		n := min(per, slots-first)
		chunk := buf[:n*Size]
		if _, err := r.ReadAt(chunk, Offset(first)); err != nil {
			return fmt.Errorf("record: read slots %d-%d: %w", first, first+n-1, err)
		}
		for i := range n {
			if err := fn(first+i, chunk[i*Size:(i+1)*Size]); err != nil {
				return err
			}
		}
	}
	return nil
}

// fillPayload fills p with the xorshift64* stream of seq.
func fillPayload(p []byte, seq uint64) {
	// splitmix64 of seq seeds the generator, which needs a non-zero state.
	z := seq + 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	x := z ^ z>>31
	if x == 0 {
		x = 1
	}
	var w [8]byte
	for len(p) > 0 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(w[:], x*0x2545f4914f6cdd1d)
		p = p[copy(p, w[:]):]
	}
}
