package wire

import (
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/drsync/drsync/vmspec"
)

// Block sizes a target may declare.
const (
	MinBlockSize = 512
	MaxBlockSize = 4 << 20
)

// Validate checks the rules the codec enforces on the fields of a single
// frame: bounds, enumerations, names, and arithmetic that must not
// overflow. Encode and Decode both apply it. Rules spanning frames (order,
// target existence, offsets within target sizes) are not checked here. The
// error wraps ErrMalformed.
func Validate(f Frame) error {
	switch f := f.(type) {
	case *Hello:
		if f != nil {
			return f.validate()
		}
	case *Welcome:
		if f != nil {
			return f.validate()
		}
	case *EpochBegin:
		if f != nil {
			return f.validate()
		}
	case *DiskExtent:
		if f != nil {
			return f.validate()
		}
	case *MemRun:
		if f != nil {
			return f.validate()
		}
	case *ZeroRun:
		if f != nil {
			return f.validate()
		}
	case *PageRef:
		if f != nil {
			return f.validate()
		}
	case *DeviceState:
		if f != nil {
			return f.validate()
		}
	case *EpochCommit:
		if f != nil {
			return f.validate()
		}
	case *Ack:
		if f != nil {
			return nil
		}
	case *Error:
		if f != nil {
			return f.validate()
		}
	case *TableRequest, *TableEnd:
		if f != nil {
			return nil
		}
	case *Table:
		if f != nil {
			return f.validate()
		}
	case nil:
		return &FrameError{Detail: "nil frame", Err: ErrMalformed}
	default:
		return &FrameError{Type: f.Type(), Detail: fmt.Sprintf("unsupported frame implementation %T", f), Err: ErrMalformed}
	}
	// Only typed nil pointers get here; their Type method needs no receiver.
	return malformed(f.Type(), "nil frame")
}

func (f *Hello) validate() error {
	if f.MinVersion == 0 {
		return malformed(TypeHello, "min version 0")
	}
	if f.MinVersion > f.MaxVersion {
		return malformed(TypeHello, "min version %d exceeds max version %d", f.MinVersion, f.MaxVersion)
	}
	if why := vmspec.VMNameProblem(f.VM); why != "" {
		return malformed(TypeHello, "vm %q: %s", f.VM, why)
	}
	return nil
}

func (f *Welcome) validate() error {
	if f.Version == 0 {
		return malformed(TypeWelcome, "version 0")
	}
	if !timeEncodable(f.Position.CommittedCut) {
		return malformed(TypeWelcome, "committed cut %v out of range", f.Position.CommittedCut)
	}
	return nil
}

func (f *EpochBegin) validate() error {
	const t = TypeEpochBegin
	if f.Epoch == 0 {
		return malformed(t, "epoch 0")
	}
	if !timeEncodable(f.Cut) {
		return malformed(t, "cut %v out of range", f.Cut)
	}
	if f.StartSeq > f.Items {
		return malformed(t, "start seq %d exceeds items %d", f.StartSeq, f.Items)
	}
	if len(f.Targets) > MaxTargets {
		return malformed(t, "target count %d exceeds %d", len(f.Targets), MaxTargets)
	}
	var seen idSet
	for i := range f.Targets {
		tg := &f.Targets[i]
		if seen.add(tg.ID) {
			return malformed(t, "target %d: duplicate id %d", i, tg.ID)
		}
		if why := vmspec.TargetNameProblem(tg.Name); why != "" {
			return malformed(t, "target %d (id %d): name %q: %s", i, tg.ID, tg.Name, why)
		}
		if !tg.Kind.Valid() {
			return malformed(t, "target %d (id %d): kind %d is neither disk, RAM nor blob", i, tg.ID, tg.Kind)
		}
		if tg.Size == 0 {
			return malformed(t, "target %d (id %d): size 0", i, tg.ID)
		}
		bs := tg.BlockSize
		if bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0 {
			return malformed(t, "target %d (id %d): block size %d is not a power of two in [%d, %d]",
				i, tg.ID, bs, MinBlockSize, MaxBlockSize)
		}
		if tg.Kind == vmspec.KindRAM && bs != vmspec.PageSize {
			return malformed(t, "target %d (id %d): RAM block size %d is not the page size %d", i, tg.ID, bs, vmspec.PageSize)
		}
	}
	if g := f.Group; g != nil {
		// A frame alone does not say which VM carries it, so this checks
		// the tag as carried by its first member; ValidateGroupFor checks
		// the carrier once the connection's VM is known.
		if len(g.Members) == 0 {
			return malformed(t, "group %q: no members", g.Group)
		}
		if err := g.Validate(g.Members[0]); err != nil {
			return malformed(t, "%v", err)
		}
	}
	return nil
}

// ValidateGroupFor checks that f, received on vm's connection, carries no
// group tag or one that names vm among its members.
func (f *EpochBegin) ValidateGroupFor(vm string) error {
	if f.Group == nil {
		return nil
	}
	if err := f.Group.Validate(vm); err != nil {
		return malformed(TypeEpochBegin, "%v", err)
	}
	return nil
}

func (f *DiskExtent) validate() error {
	n := len(f.Data)
	switch {
	case n == 0:
		return malformed(TypeDiskExtent, "empty data")
	case n > MaxData:
		return malformed(TypeDiskExtent, "data length %d exceeds %d", n, MaxData)
	case f.Offset > math.MaxUint64-uint64(n):
		return malformed(TypeDiskExtent, "offset %d + data length %d overflows", f.Offset, n)
	}
	return nil
}

func (f *MemRun) validate() error {
	n := len(f.Data)
	switch {
	case n == 0:
		return malformed(TypeMemRun, "empty data")
	case n > MaxData:
		return malformed(TypeMemRun, "data length %d exceeds %d", n, MaxData)
	case n%vmspec.PageSize != 0:
		return malformed(TypeMemRun, "data length %d is not a multiple of the page size %d", n, vmspec.PageSize)
	case f.Page > math.MaxUint64/vmspec.PageSize-uint64(n/vmspec.PageSize):
		return malformed(TypeMemRun, "page %d + %d pages overflows", f.Page, n/vmspec.PageSize)
	}
	return nil
}

func (f *ZeroRun) validate() error {
	switch {
	case f.Length == 0:
		return malformed(TypeZeroRun, "length 0")
	case f.Offset > math.MaxUint64-f.Length:
		return malformed(TypeZeroRun, "offset %d + length %d overflows", f.Offset, f.Length)
	}
	return nil
}

func (f *PageRef) validate() error {
	const t = TypePageRef
	n := uint64(f.Count)
	if f.Count == 0 || f.Count > MaxRefsCount {
		return malformed(t, "count %d outside [1, %d]", f.Count, MaxRefsCount)
	}
	if f.Page > math.MaxUint64/vmspec.PageSize-n {
		return malformed(t, "page %d + %d pages overflows", f.Page, n)
	}
	switch f.Source {
	case RefDisk:
		if f.SrcOffset > math.MaxUint64-n*vmspec.PageSize {
			return malformed(t, "source offset %d + %d pages overflows", f.SrcOffset, n)
		}
	case RefPage:
		if f.SrcOffset > math.MaxUint64/vmspec.PageSize-n {
			return malformed(t, "source page %d + %d pages overflows", f.SrcOffset, n)
		}
	default:
		return malformed(t, "source %d is neither disk nor page", f.Source)
	}
	return nil
}

func (f *DeviceState) validate() error {
	n := uint64(len(f.Data))
	switch {
	case n > MaxData:
		return malformed(TypeDeviceState, "data length %d exceeds %d", n, MaxData)
	case f.Offset > f.Total || n > f.Total-f.Offset:
		return malformed(TypeDeviceState, "offset %d + data length %d exceeds total %d", f.Offset, n, f.Total)
	}
	return nil
}

func (f *EpochCommit) validate() error {
	if f.Epoch == 0 {
		return malformed(TypeEpochCommit, "epoch 0")
	}
	if len(f.States) > MaxTargets {
		return malformed(TypeEpochCommit, "state count %d exceeds %d", len(f.States), MaxTargets)
	}
	var seen idSet
	for i, s := range f.States {
		if seen.add(s.Target) {
			return malformed(TypeEpochCommit, "state %d: duplicate target %d", i, s.Target)
		}
	}
	return nil
}

func (f *Error) validate() error {
	if len(f.Message) > MaxMessage {
		return malformed(TypeError, "message length %d exceeds %d", len(f.Message), MaxMessage)
	}
	if !utf8.ValidString(f.Message) {
		return malformed(TypeError, "message is not valid UTF-8")
	}
	return nil
}

// idSet is a set of 16-bit target ids.
type idSet [1 << 16 / 64]uint64

// add inserts id and reports whether it was already present.
func (s *idSet) add(id uint16) bool {
	w, bit := id/64, uint64(1)<<(id%64)
	dup := s[w]&bit != 0
	s[w] |= bit
	return dup
}

func (f *Table) validate() error {
	switch {
	case !f.Kind.Valid():
		return malformed(TypeTable, "target kind %d", f.Kind)
	case vmspec.ValidTargetName(f.Name) != nil:
		return malformed(TypeTable, "target name: %v", vmspec.ValidTargetName(f.Name))
	case f.BlockSize < MinBlockSize || f.BlockSize > MaxBlockSize || f.BlockSize&(f.BlockSize-1) != 0:
		return malformed(TypeTable, "block size %d", f.BlockSize)
	case f.Size == 0:
		return malformed(TypeTable, "size 0")
	case len(f.Hashes) == 0 || len(f.Hashes) > MaxTableHashes:
		return malformed(TypeTable, "%d hashes (1 to %d)", len(f.Hashes), MaxTableHashes)
	}
	blocks := (f.Size-1)/uint64(f.BlockSize) + 1
	if f.First >= blocks || uint64(len(f.Hashes)) > blocks-f.First {
		return malformed(TypeTable, "blocks [%d,+%d) outside %d blocks", f.First, len(f.Hashes), blocks)
	}
	return nil
}
