package wire

import (
	"encoding/binary"
	"math"
	"time"

	"github.com/drsync/drsync/vmspec"
)

// helloMagic opens every Hello so that a peer speaking something else is
// recognised at once rather than by a later field error.
const helloMagic = "DRSYNC01"

// Sizes of the fixed parts of the payloads, which the encoder uses to size
// buffers and the tests use to build frames by hand.
const (
	helloFixed       = 8 + 2 + 2 + 1
	welcomeLen       = 2 + 6*8
	epochBeginFixed  = 6*8 + 2
	targetFixed      = 2 + 1 + 1 + 8 + 4
	groupFixed       = 1 + 8 + 1 // group str8 length, cut, member count
	extentFixed      = 8 + 2 + 8 + 4
	zeroRunLen       = 8 + 2 + 8 + 8
	pageRefLen       = 8 + 2 + 8 + 4 + 1 + 2 + 8
	deviceStateFixed = 8 + 8 + 8 + 4
	epochCommitFixed = 3*8 + 2
	targetDigestLen  = 2 + 8
	ackLen           = 8 + 8 + 1
	errorFixed       = 2 + 2
	tableFixed       = 1 + 1 + 8 + 4 + 8 + 4
	tableEndLen      = 8 + 8
)

// appendPayload appends the raw payload of f to b. The payload of a frame
// that ends in a data field is split: its length prefix is appended, but the
// data itself is returned separately so large buffers need not be copied.
// f must have passed Validate; appendPayload does not check bounds.
func appendPayload(b []byte, f Frame) (out, data []byte) {
	be := binary.BigEndian
	switch f := f.(type) {
	case *Hello:
		b = append(b, helloMagic...)
		b = be.AppendUint16(b, f.MinVersion)
		b = be.AppendUint16(b, f.MaxVersion)
		b = appendStr8(b, f.VM)
	case *Welcome:
		p := &f.Position
		b = be.AppendUint16(b, f.Version)
		b = be.AppendUint64(b, p.Committed)
		b = appendTime(b, p.CommittedCut)
		b = be.AppendUint64(b, p.StateID)
		b = be.AppendUint64(b, p.StagedEpoch)
		b = be.AppendUint64(b, p.StagedPlan)
		b = be.AppendUint64(b, p.StagedDurable)
	case *EpochBegin:
		b = be.AppendUint64(b, f.Epoch)
		b = appendTime(b, f.Cut)
		b = be.AppendUint64(b, f.Plan)
		b = be.AppendUint64(b, f.Items)
		b = be.AppendUint64(b, f.Bytes)
		b = be.AppendUint64(b, f.StartSeq)
		b = be.AppendUint16(b, uint16(len(f.Targets)))
		for i := range f.Targets {
			t := &f.Targets[i]
			b = be.AppendUint16(b, t.ID)
			b = append(b, byte(t.Kind))
			b = appendStr8(b, t.Name)
			b = be.AppendUint64(b, t.Size)
			b = be.AppendUint32(b, t.BlockSize)
		}
		if g := f.Group; g != nil {
			b = appendStr8(b, g.Group)
			b = be.AppendUint64(b, g.Cut)
			b = append(b, byte(len(g.Members)))
			for _, m := range g.Members {
				b = appendStr8(b, m)
			}
		}
	case *DiskExtent:
		b = be.AppendUint64(b, f.Seq)
		b = be.AppendUint16(b, f.Target)
		b = be.AppendUint64(b, f.Offset)
		b = be.AppendUint32(b, uint32(len(f.Data)))
		return b, f.Data
	case *MemRun:
		b = be.AppendUint64(b, f.Seq)
		b = be.AppendUint16(b, f.Target)
		b = be.AppendUint64(b, f.Page)
		b = be.AppendUint32(b, uint32(len(f.Data)))
		return b, f.Data
	case *ZeroRun:
		b = be.AppendUint64(b, f.Seq)
		b = be.AppendUint16(b, f.Target)
		b = be.AppendUint64(b, f.Offset)
		b = be.AppendUint64(b, f.Length)
	case *PageRef:
		b = be.AppendUint64(b, f.Seq)
		b = be.AppendUint16(b, f.Target)
		b = be.AppendUint64(b, f.Page)
		b = be.AppendUint32(b, f.Count)
		b = append(b, byte(f.Source))
		b = be.AppendUint16(b, f.SrcTarget)
		b = be.AppendUint64(b, f.SrcOffset)
	case *DeviceState:
		b = be.AppendUint64(b, f.Seq)
		b = be.AppendUint64(b, f.Offset)
		b = be.AppendUint64(b, f.Total)
		b = be.AppendUint32(b, uint32(len(f.Data)))
		return b, f.Data
	case *EpochCommit:
		b = be.AppendUint64(b, f.Epoch)
		b = be.AppendUint64(b, f.Items)
		b = be.AppendUint64(b, f.Digest)
		b = be.AppendUint16(b, uint16(len(f.States)))
		for _, s := range f.States {
			b = be.AppendUint16(b, s.Target)
			b = be.AppendUint64(b, s.Digest)
		}
	case *Ack:
		b = be.AppendUint64(b, f.Epoch)
		b = be.AppendUint64(b, f.Durable)
		var c byte
		if f.Committed {
			c = 1
		}
		b = append(b, c)
	case *Error:
		b = be.AppendUint16(b, uint16(f.Code))
		b = be.AppendUint16(b, uint16(len(f.Message)))
		b = append(b, f.Message...)
	case *TableRequest:
	case *Table:
		b = append(b, byte(f.Kind))
		b = appendStr8(b, f.Name)
		b = be.AppendUint64(b, f.Size)
		b = be.AppendUint32(b, f.BlockSize)
		b = be.AppendUint64(b, f.First)
		b = be.AppendUint32(b, uint32(len(f.Hashes)))
		for _, h := range f.Hashes {
			b = be.AppendUint64(b, h)
		}
	case *TableEnd:
		b = be.AppendUint64(b, f.Epoch)
		b = be.AppendUint64(b, f.StateID)
	}
	return b, nil
}

// payloadSize is the raw payload length of a valid f.
func payloadSize(f Frame) int {
	switch f := f.(type) {
	case *Hello:
		return helloFixed + len(f.VM)
	case *Welcome:
		return welcomeLen
	case *EpochBegin:
		n := epochBeginFixed
		for i := range f.Targets {
			n += targetFixed + len(f.Targets[i].Name)
		}
		if g := f.Group; g != nil {
			n += groupFixed + len(g.Group)
			for _, m := range g.Members {
				n += 1 + len(m)
			}
		}
		return n
	case *DiskExtent:
		return extentFixed + len(f.Data)
	case *MemRun:
		return extentFixed + len(f.Data)
	case *ZeroRun:
		return zeroRunLen
	case *PageRef:
		return pageRefLen
	case *DeviceState:
		return deviceStateFixed + len(f.Data)
	case *EpochCommit:
		return epochCommitFixed + targetDigestLen*len(f.States)
	case *Ack:
		return ackLen
	case *Error:
		return errorFixed + len(f.Message)
	case *TableRequest:
		return 0
	case *Table:
		return tableFixed + len(f.Name) + 8*len(f.Hashes)
	case *TableEnd:
		return tableEndLen
	}
	return 0
}

func appendStr8(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// appendTime writes t as signed Unix nanoseconds, the zero time as 0. The
// Unix epoch itself therefore decodes as the zero time; no real cut is ever
// taken at that instant.
func appendTime(b []byte, t time.Time) []byte {
	var n int64
	if !t.IsZero() {
		n = t.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(n))
}

func timeFromWire(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Range of times an int64 of nanoseconds can express (years 1677 to 2262).
var (
	minWireTime = time.Unix(0, math.MinInt64)
	maxWireTime = time.Unix(0, math.MaxInt64)
)

func timeEncodable(t time.Time) bool {
	return t.IsZero() || !t.Before(minWireTime) && !t.After(maxWireTime)
}

// payloadReader consumes a raw payload field by field. The first problem is
// kept in err and later reads return zero values, so parsers check once at
// the end.
type payloadReader struct {
	t      Type
	p      []byte
	err    error
	borrow bool // bytes32 returns p's bytes, not a copy
}

func (r *payloadReader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.p) {
		r.err = malformed(r.t, "payload truncated in %s: need %d bytes, have %d", field, n, len(r.p))
		r.p = nil
		return nil
	}
	b := r.p[:n:n]
	r.p = r.p[n:]
	return b
}

func (r *payloadReader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *payloadReader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *payloadReader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *payloadReader) u64(field string) uint64 {
	if b := r.take(8, field); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *payloadReader) time(field string) time.Time {
	return timeFromWire(int64(r.u64(field)))
}

func (r *payloadReader) str8(field string) string {
	n := int(r.u8(field + " length"))
	return string(r.take(n, field))
}

func (r *payloadReader) str16(field string) string {
	n := int(r.u16(field + " length"))
	return string(r.take(n, field))
}

// bytes32 returns a fresh copy of a length-prefixed byte string, nil when
// empty. The length is checked against what is left before allocating.
func (r *payloadReader) bytes32(field string) []byte {
	n := r.u32(field + " length")
	if r.err == nil && uint64(n) > uint64(len(r.p)) {
		r.err = malformed(r.t, "payload truncated in %s: length %d, %d bytes left", field, n, len(r.p))
		return nil
	}
	b := r.take(int(n), field)
	if len(b) == 0 {
		return nil
	}
	if r.borrow {
		return b[:len(b):len(b)]
	}
	return append([]byte(nil), b...)
}

// finish reports the first error, or leftover bytes.
func (r *payloadReader) finish() error {
	if r.err != nil {
		return r.err
	}
	if len(r.p) != 0 {
		return malformed(r.t, "%d trailing bytes after the last field", len(r.p))
	}
	return nil
}

// parsePayload decodes and validates the raw payload p of a frame of type
// t. Byte slices in the result are fresh copies, so p may be reused, but
// with borrow, where a frame's data is p's bytes.
func parsePayload(t Type, p []byte, borrow bool) (Frame, error) {
	r := &payloadReader{t: t, p: p, borrow: borrow}
	var f Frame
	switch t {
	case TypeHello:
		if magic := r.take(len(helloMagic), "magic"); r.err == nil && string(magic) != helloMagic {
			return nil, malformed(t, "bad magic %q", magic)
		}
		f = &Hello{
			MinVersion: r.u16("min version"),
			MaxVersion: r.u16("max version"),
			VM:         r.str8("vm"),
		}
	case TypeWelcome:
		f = &Welcome{
			Version: r.u16("version"),
			Position: Position{
				Committed:     r.u64("committed"),
				CommittedCut:  r.time("committed cut"),
				StateID:       r.u64("state id"),
				StagedEpoch:   r.u64("staged epoch"),
				StagedPlan:    r.u64("staged plan"),
				StagedDurable: r.u64("staged durable"),
			},
		}
	case TypeEpochBegin:
		eb := &EpochBegin{
			Epoch:    r.u64("epoch"),
			Cut:      r.time("cut"),
			Plan:     r.u64("plan"),
			Items:    r.u64("items"),
			Bytes:    r.u64("bytes"),
			StartSeq: r.u64("start seq"),
		}
		n := int(r.u16("target count"))
		if n > MaxTargets {
			// Checked before allocating.
			return nil, malformed(t, "target count %d exceeds %d", n, MaxTargets)
		}
		if n > 0 && r.err == nil {
			eb.Targets = make([]Target, n)
			for i := range eb.Targets {
				eb.Targets[i] = Target{
					ID:        r.u16("target id"),
					Kind:      vmspec.TargetKind(r.u8("target kind")),
					Name:      r.str8("target name"),
					Size:      r.u64("target size"),
					BlockSize: r.u32("target block size"),
				}
			}
		}
		// The group section is optional: present exactly when bytes follow
		// the targets.
		if r.err == nil && len(r.p) > 0 {
			g := &vmspec.GroupCut{Group: r.str8("group name"), Cut: r.u64("group cut")}
			m := int(r.u8("group member count"))
			if m > vmspec.MaxGroupMembers {
				// Checked before allocating.
				return nil, malformed(t, "group member count %d exceeds %d", m, vmspec.MaxGroupMembers)
			}
			if m > 0 && r.err == nil {
				g.Members = make([]string, m)
				for i := range g.Members {
					g.Members[i] = r.str8("group member")
				}
			}
			eb.Group = g
		}
		f = eb
	case TypeDiskExtent:
		f = &DiskExtent{
			Seq:    r.u64("seq"),
			Target: r.u16("target"),
			Offset: r.u64("offset"),
			Data:   r.bytes32("data"),
		}
	case TypeMemRun:
		f = &MemRun{
			Seq:    r.u64("seq"),
			Target: r.u16("target"),
			Page:   r.u64("page"),
			Data:   r.bytes32("data"),
		}
	case TypeZeroRun:
		f = &ZeroRun{
			Seq:    r.u64("seq"),
			Target: r.u16("target"),
			Offset: r.u64("offset"),
			Length: r.u64("length"),
		}
	case TypePageRef:
		f = &PageRef{
			Seq:       r.u64("seq"),
			Target:    r.u16("target"),
			Page:      r.u64("page"),
			Count:     r.u32("count"),
			Source:    RefSource(r.u8("source")),
			SrcTarget: r.u16("source target"),
			SrcOffset: r.u64("source offset"),
		}
	case TypeDeviceState:
		f = &DeviceState{
			Seq:    r.u64("seq"),
			Offset: r.u64("offset"),
			Total:  r.u64("total"),
			Data:   r.bytes32("data"),
		}
	case TypeEpochCommit:
		ec := &EpochCommit{
			Epoch:  r.u64("epoch"),
			Items:  r.u64("items"),
			Digest: r.u64("digest"),
		}
		n := int(r.u16("state count"))
		if n > MaxTargets {
			return nil, malformed(t, "state count %d exceeds %d", n, MaxTargets)
		}
		if n > 0 && r.err == nil {
			ec.States = make([]TargetDigest, n)
			for i := range ec.States {
				ec.States[i] = TargetDigest{Target: r.u16("state target"), Digest: r.u64("state digest")}
			}
		}
		f = ec
	case TypeAck:
		a := &Ack{Epoch: r.u64("epoch"), Durable: r.u64("durable")}
		switch c := r.u8("committed"); c {
		case 0:
		case 1:
			a.Committed = true
		default:
			if r.err == nil {
				return nil, malformed(t, "committed byte %d is not 0 or 1", c)
			}
		}
		f = a
	case TypeError:
		f = &Error{Code: ErrorCode(r.u16("code")), Message: r.str16("message")}
	case TypeTableRequest:
		f = &TableRequest{}
	case TypeTable:
		tb := &Table{Kind: vmspec.TargetKind(r.u8("kind")), Name: r.str8("name"), Size: r.u64("size"), BlockSize: r.u32("block size"), First: r.u64("first block")}
		n := r.u32("hash count")
		if r.err == nil && (n > MaxTableHashes || uint64(n)*8 > uint64(len(r.p))) {
			return nil, malformed(t, "hash count %d with %d bytes left (at most %d)", n, len(r.p), MaxTableHashes)
		}
		if r.err == nil && n > 0 {
			tb.Hashes = make([]uint64, n)
			for i := range tb.Hashes {
				tb.Hashes[i] = r.u64("hash")
			}
		}
		f = tb
	case TypeTableEnd:
		f = &TableEnd{Epoch: r.u64("epoch"), StateID: r.u64("state id")}
	default:
		return nil, malformed(t, "unknown frame type")
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	if err := Validate(f); err != nil {
		return nil, err
	}
	return f, nil
}
