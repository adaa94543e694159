package wire

import (
	"time"

	"github.com/drsync/drsync/vmspec"
)

// Version is the protocol version this build speaks. The receiver answers a
// Hello with the highest version both sides support, or an Error frame.
// Version 2 adds the group section of EpochBegin (see VersionGroups),
// version 3 blob targets (see VersionBlobs), version 4 open epochs (see
// VersionOpen).
const (
	Version    uint16 = 4
	MinVersion uint16 = 1
)

// VersionGroups is the first version whose EpochBegin may carry a
// consistency-group tag. A sender does not send one on an older session.
const VersionGroups uint16 = 2

// VersionBlobs is the first version whose EpochBegin and Table frames may
// name a target of kind vmspec.KindBlob. A sender does not send one on an
// older session, whose receiver would refuse the frame as malformed.
const VersionBlobs uint16 = 3

// VersionOpen is the first version whose EpochBegin may be open
// (EpochBegin.Open): the sender starts sending while it still plans the
// epoch, so the item count and bytes come with EpochCommit. A sender does
// not open an epoch on an older session; it plans the epoch whole first.
const VersionOpen uint16 = 4

// ALPN is the TLS application protocol negotiated on every drsync QUIC
// connection. A peer that does not offer it is not a drsync peer.
const ALPN = "drsync/1"

// Bounds applied by the decoder. They exist so a hostile or broken peer
// cannot make the other side allocate unbounded memory.
const (
	MaxPayload   = 8 << 20 // bytes of one frame's payload, before and after decompression
	MaxData      = 4 << 20 // bytes of data carried by one extent, page run or state chunk
	MaxNameLen   = 128     // bytes of a VM, target or message string
	MaxTargets   = 256     // disks + RAM blocks per VM
	MaxMessage   = 4096    // bytes of an Error message
	MaxRefsCount = 1 << 20 // pages covered by one PageRef
)

// Type identifies a frame on the wire.
type Type uint8

const (
	TypeHello       Type = 1
	TypeWelcome     Type = 2
	TypeEpochBegin  Type = 3
	TypeDiskExtent  Type = 4
	TypeMemRun      Type = 5
	TypeZeroRun     Type = 6
	TypePageRef     Type = 7
	TypeDeviceState Type = 8
	TypeEpochCommit Type = 9
	TypeAck         Type = 10
	TypeError       Type = 11
	// Between epochs, a sender that lost its record of the replica asks for
	// the replica's block tables instead of sending every block again.
	TypeTableRequest Type = 12
	TypeTable        Type = 13
	TypeTableEnd     Type = 14

	typeLast = TypeTableEnd
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeWelcome:
		return "Welcome"
	case TypeEpochBegin:
		return "EpochBegin"
	case TypeDiskExtent:
		return "DiskExtent"
	case TypeMemRun:
		return "MemRun"
	case TypeZeroRun:
		return "ZeroRun"
	case TypePageRef:
		return "PageRef"
	case TypeDeviceState:
		return "DeviceState"
	case TypeEpochCommit:
		return "EpochCommit"
	case TypeAck:
		return "Ack"
	case TypeError:
		return "Error"
	case TypeTableRequest:
		return "TableRequest"
	case TypeTable:
		return "Table"
	case TypeTableEnd:
		return "TableEnd"
	}
	return "Type(" + itoa(uint64(t)) + ")"
}

// Frame is one decoded protocol message.
type Frame interface {
	Type() Type
}

// Item is a frame that belongs to an epoch's ordered item list. Items are
// numbered 0..n-1 within an epoch; the receiver's durable progress is counted
// in items, which is what makes resuming inside an epoch possible.
type Item interface {
	Frame
	ItemSeq() uint64
}

// Hello is the sender's first frame on a connection.
type Hello struct {
	MinVersion uint16
	MaxVersion uint16
	VM         string // see vmspec.ValidVMName
}

// Position is the receiver's durable state for one VM.
type Position struct {
	Committed     uint64    // last committed epoch, 0 = empty replica
	CommittedCut  time.Time // cut time of that epoch (zero if none)
	StateID       uint64    // identity of the committed replica content (see blockhash)
	StagedEpoch   uint64    // epoch staged in the journal, 0 = none
	StagedPlan    uint64    // plan identity of the staged epoch
	StagedDurable uint64    // items of the staged epoch that are durable
}

// Welcome answers Hello: the negotiated version and where to resume.
type Welcome struct {
	Version  uint16
	Position Position
}

// Target describes one disk or RAM block of the VM in an epoch.
type Target struct {
	ID        uint16
	Kind      vmspec.TargetKind
	Name      string // disk name ("vda") or RAM block id ("pc.ram"), see vmspec.ValidTargetName
	Size      uint64 // bytes
	BlockSize uint32 // granularity of change tracking; extents are whole blocks
}

// EpochBegin opens epoch Epoch. StartSeq > 0 means the sender resumes a
// staged epoch and the items before StartSeq are already durable.
type EpochBegin struct {
	Epoch    uint64
	Cut      time.Time
	Plan     uint64 // identity of the epoch's content; equal plans carry equal items
	Items    uint64 // number of items in the epoch (open: planned so far)
	Bytes    uint64 // payload bytes of all items (data, before compression; open: planned so far)
	StartSeq uint64
	// Open (version ≥ 4) says the sender was still planning the epoch when
	// it began it: Items and Bytes count what it had planned, and
	// EpochCommit's item count is the epoch's. A resumed epoch keeps the
	// openness it began with.
	Open    bool
	Targets []Target
	// Group tags an epoch cut by a consistency group's coordinated cut;
	// nil for an epoch of a VM on its own.
	Group *vmspec.GroupCut
}

// DiskExtent is disk data: whole blocks of a disk target.
type DiskExtent struct {
	Seq    uint64
	Target uint16
	Offset uint64
	Data   []byte
}

// MemRun is guest RAM: whole pages of a RAM target.
type MemRun struct {
	Seq    uint64
	Target uint16
	Page   uint64 // index of the first page
	Data   []byte // a multiple of vmspec.PageSize
}

// ZeroRun says Length bytes at Offset of a target read as zeros.
type ZeroRun struct {
	Seq    uint64
	Target uint16
	Offset uint64
	Length uint64
}

// RefSource says where a referenced page's content is found.
type RefSource uint8

const (
	RefDisk RefSource = 1 // a disk target at a byte offset
	RefPage RefSource = 2 // a page of a RAM target
)

// PageRef says that Count pages of RAM target Target starting at Page hold
// the same bytes as the replica already holds at the source, as of the end
// of this epoch. Used by page-cache dedup.
type PageRef struct {
	Seq       uint64
	Target    uint16
	Page      uint64
	Count     uint32
	Source    RefSource
	SrcTarget uint16
	SrcOffset uint64 // byte offset for RefDisk; page index for RefPage
}

// DeviceState carries a chunk of the opaque device-state blob of the epoch.
type DeviceState struct {
	Seq    uint64
	Offset uint64 // of this chunk within the blob
	Total  uint64 // size of the whole blob
	Data   []byte
}

// TargetDigest is the expected digest of a target after the epoch.
type TargetDigest struct {
	Target uint16
	Digest uint64
}

// EpochCommit closes the epoch. Digest covers all items (see ItemDigest);
// States are the per-target content digests the replica must have once the
// epoch is applied.
type EpochCommit struct {
	Epoch  uint64
	Items  uint64
	Digest uint64
	States []TargetDigest
}

// Ack reports the receiver's durable progress.
type Ack struct {
	Epoch     uint64
	Durable   uint64 // items of Epoch that are durable
	Committed bool   // Epoch is committed (applied or will be on recovery)
}

// ErrorCode classifies an Error frame.
type ErrorCode uint16

const (
	ErrProtocol     ErrorCode = 1 // malformed or out-of-order frame
	ErrUnauthorized ErrorCode = 2 // peer not allowed for this VM
	ErrVersion      ErrorCode = 3 // no common protocol version
	ErrDigest       ErrorCode = 4 // epoch or state digest mismatch
	ErrStorage      ErrorCode = 5 // receiver storage failed (disk full, IO error)
	ErrBusy         ErrorCode = 6 // another sender holds this VM
	ErrInternal     ErrorCode = 7
	ErrTakenOver    ErrorCode = 8 // the replica runs as the VM at the DR site
)

// Error tells the peer why the connection is about to close.
type Error struct {
	Code    ErrorCode
	Message string
}

// MaxTableHashes bounds the block hashes one Table frame carries.
const MaxTableHashes = MaxData / 8

// TableRequest asks the receiver, between epochs, for the block tables of
// the replica's committed epoch.
type TableRequest struct{}

// Table carries the hashes of blocks [First, First+len(Hashes)) of one
// target of the replica.
type Table struct {
	Kind      vmspec.TargetKind
	Name      string
	Size      uint64
	BlockSize uint32
	First     uint64
	Hashes    []uint64
}

// TableEnd follows the last Table: the committed epoch and state identity
// the tables describe, which the sender checks them against.
type TableEnd struct {
	Epoch   uint64
	StateID uint64
}

func (*TableRequest) Type() Type { return TypeTableRequest }
func (*Table) Type() Type        { return TypeTable }
func (*TableEnd) Type() Type     { return TypeTableEnd }

func (*Hello) Type() Type       { return TypeHello }
func (*Welcome) Type() Type     { return TypeWelcome }
func (*EpochBegin) Type() Type  { return TypeEpochBegin }
func (*DiskExtent) Type() Type  { return TypeDiskExtent }
func (*MemRun) Type() Type      { return TypeMemRun }
func (*ZeroRun) Type() Type     { return TypeZeroRun }
func (*PageRef) Type() Type     { return TypePageRef }
func (*DeviceState) Type() Type { return TypeDeviceState }
func (*EpochCommit) Type() Type { return TypeEpochCommit }
func (*Ack) Type() Type         { return TypeAck }
func (*Error) Type() Type       { return TypeError }

func (f *DiskExtent) ItemSeq() uint64  { return f.Seq }
func (f *MemRun) ItemSeq() uint64      { return f.Seq }
func (f *ZeroRun) ItemSeq() uint64     { return f.Seq }
func (f *PageRef) ItemSeq() uint64     { return f.Seq }
func (f *DeviceState) ItemSeq() uint64 { return f.Seq }

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
