package migstream

import "fmt"

// PageSize is the target page size of x86 guests: the unit of RAM records.
const PageSize = 4096

// Limits that keep a hostile or corrupt stream from making the parser (or a
// Flat handler) reserve absurd amounts of memory.
const (
	MaxBlocks             = 1024    // RAM blocks in one MEM_SIZE record
	MaxRAM                = 1 << 40 // total RAM announced by MEM_SIZE
	DefaultMaxDeviceState = 256 << 20
)

// Stream framing (QEMU's savevm.c names in parentheses).
const (
	fileMagic   = 0x5145564D // "QEVM" (QEMU_VM_FILE_MAGIC)
	fileVersion = 3          // QEMU_VM_FILE_VERSION

	secEOF        = 0x00
	secStart      = 0x01
	secPart       = 0x02
	secEnd        = 0x03
	secFull       = 0x04
	secSubsection = 0x05
	secVMDesc     = 0x06
	secConfig     = 0x07
	secCommand    = 0x08
	secFooter     = 0x7E

	ramIDStr   = "ram"
	ramVersion = 4

	// Bounds on configuration fields; QEMU's own values are far smaller.
	maxMachineName = 256
	maxCaps        = 64

	capIgnoreShared = "x-ignore-shared"
	subCaps         = "configuration/capabilities"
	subUUID         = "configuration/uuid"
)

// RAM record flags, in the low 12 bits of each record's be64 header.
const (
	flagFull         = 0x01 // obsolete, never sent
	flagZero         = 0x02
	flagMemSize      = 0x04
	flagPage         = 0x08
	flagEOS          = 0x10
	flagContinue     = 0x20
	flagXBZRLE       = 0x40
	flagHook         = 0x80 // RDMA
	flagCompressPage = 0x100
	flagMultifdFlush = 0x200 // QEMU 8.x multifd; never in a 7.2 stream
	flagMask         = PageSize - 1
)

func sectionName(t byte) string {
	switch t {
	case secEOF:
		return "EOF"
	case secStart:
		return "START"
	case secPart:
		return "PART"
	case secEnd:
		return "END"
	case secFull:
		return "FULL"
	case secSubsection:
		return "SUBSECTION"
	case secVMDesc:
		return "VMDESCRIPTION"
	case secConfig:
		return "CONFIGURATION"
	case secCommand:
		return "COMMAND"
	case secFooter:
		return "FOOTER"
	}
	return fmt.Sprintf("unknown 0x%02x", t)
}

// Block is one RAM block as announced by the RAM START section.
type Block struct {
	ID     string // RAM block idstr, e.g. "pc.ram", "0000:00:02.0/vga.vram", "/rom@etc/acpi/tables"
	Length int64  // used_length in bytes, multiple of PageSize
	GPA    uint64 // only with x-ignore-shared streams
	HasGPA bool
}

// Pages is the number of pages in the block.
func (b Block) Pages() int64 { return b.Length / PageSize }

// SectionHeader identifies the RAM section as the source numbered it.
type SectionHeader struct {
	ID       uint32 // section_id, repeated in every PART/END header and footer
	Instance uint32 // instance_id
	Version  uint32 // version_id, 4 for "ram"
}
