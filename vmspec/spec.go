package vmspec

import "errors"

// TargetKind says whether a target is a disk or a RAM block.
type TargetKind uint8

const (
	KindDisk TargetKind = 1
	KindRAM  TargetKind = 2
)

// PageSize is the guest page size: RAM targets are tracked, sent and
// referenced in these units.
const PageSize = 4096

// MaxTargetNameLen bounds a target name.
const MaxTargetNameLen = 128

// ErrInvalidName marks the errors of ValidVMName and ValidTargetName.
var ErrInvalidName = errors.New("invalid name")
