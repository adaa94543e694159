package vmspec

import (
	"errors"
	"fmt"
)

// TargetKind says whether a target is a disk, a RAM block or a blob.
type TargetKind uint8

const (
	KindDisk TargetKind = 1
	KindRAM  TargetKind = 2
	// KindBlob is a small document that travels with the VM (the domain
	// definition of a libvirt domain), laid out as EncodeBlob does. It is
	// carried and stored as a disk is (DiskExtent, ZeroRun, block tables)
	// but is never attached to the VM as a disk.
	KindBlob TargetKind = 3
)

// Valid reports whether k is a known kind.
func (k TargetKind) Valid() bool { return k >= KindDisk && k <= KindBlob }

// DiskLike reports whether targets of kind k are carried as disks are:
// in blocks of their own size, by DiskExtent.
func (k TargetKind) DiskLike() bool { return k == KindDisk || k == KindBlob }

// String is the kind's name in replicas and messages: disk, ram, blob.
func (k TargetKind) String() string {
	switch k {
	case KindDisk:
		return "disk"
	case KindRAM:
		return "ram"
	case KindBlob:
		return "blob"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// BlobDomainXML is the blob target holding a libvirt domain's definition,
// sanitized for the DR site.
const BlobDomainXML = "libvirt-domain.xml"

// PageSize is the guest page size: RAM targets are tracked, sent and
// referenced in these units.
const PageSize = 4096

// MaxTargetNameLen bounds a target name.
const MaxTargetNameLen = 128

// ErrInvalidName marks the errors of ValidVMName and ValidTargetName.
var ErrInvalidName = errors.New("invalid name")
