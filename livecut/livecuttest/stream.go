package livecuttest

import (
	"bytes"
	"encoding/binary"
	"io"

	"github.com/drsync/drsync/migstream"
)

// skeletonBytes is a small QEMU 7.2 device-only stream (see migstream's
// "Skeleton layout"): header and configuration, a RAM section listing
// blocks, and a device tail with two FULL sections, the EOF marker and a
// VMDESCRIPTION. Its framing constants are QEMU's (savevm.c, ram.c). With
// ignoreShared, the configuration lists the x-ignore-shared capability
// and each listed block carries its guest physical address.
func skeletonBytes(blocks []migstream.Block, ignoreShared bool) []byte {
	return streamBytes(blocks, ignoreShared, false)
}

// backgroundBytes is the stream of a background snapshot of a guest whose
// RAM is all in a shared backend left out (x-ignore-shared): as
// skeletonBytes, but the RAM sections end with a PART, not an END.
func backgroundBytes(blocks []migstream.Block) []byte {
	return streamBytes(blocks, true, true)
}

func streamBytes(blocks []migstream.Block, ignoreShared, background bool) []byte {
	var b bytes.Buffer
	u8 := func(v byte) { b.WriteByte(v) }
	be32 := func(v uint32) { b.Write(binary.BigEndian.AppendUint32(nil, v)) }
	be64 := func(v uint64) { b.Write(binary.BigEndian.AppendUint64(nil, v)) }
	str := func(s string) { u8(byte(len(s))); b.WriteString(s) }
	const (
		magic, version                    = 0x5145564D, 3
		secEOF, secStart, secEnd, secFull = 0x00, 0x01, 0x03, 0x04
		secPart                           = 0x02
		secVMDesc, secConfig, secFooter   = 0x06, 0x07, 0x7E
		secSubsection                     = 0x05
		flagMemSize, flagEOS              = 0x04, 0x10
		ramSection                        = 2
	)
	be32(magic)
	be32(version)
	u8(secConfig)
	str4 := "pc-i440fx-7.2"
	be32(uint32(len(str4)))
	b.WriteString(str4)
	if ignoreShared {
		u8(secSubsection)
		str("configuration/capabilities")
		be32(1) // subsection version
		be32(1) // capabilities
		str("x-ignore-shared")
	}

	u8(secStart)
	be32(ramSection)
	str("ram")
	be32(0) // instance
	be32(4) // RAM section version
	var total int64
	for _, blk := range blocks {
		total += blk.Length
	}
	be64(uint64(total) | flagMemSize)
	for _, blk := range blocks {
		str(blk.ID)
		be64(uint64(blk.Length))
		if ignoreShared {
			be64(blk.GPA)
		}
	}
	be64(flagEOS)
	u8(secFooter)
	be32(ramSection)
	if background {
		u8(secPart)
	} else {
		u8(secEnd)
	}
	be32(ramSection)
	be64(flagEOS)
	u8(secFooter)
	be32(ramSection)

	u8(secFull)
	be32(3)
	str("timer")
	be32(0)
	be32(2)
	b.Write(make([]byte, 24))
	u8(secFooter)
	be32(3)
	u8(secFull)
	be32(4)
	str("globalstate")
	be32(0)
	be32(1)
	be32(7)
	b.WriteString("paused\x00")
	u8(secFooter)
	be32(4)
	desc := `{"page_size": 4096, "devices": [{"name": "timer"}, {"name": "globalstate"}]}`
	u8(secEOF)
	u8(secVMDesc)
	be32(uint32(len(desc)))
	b.WriteString(desc)
	return b.Bytes()
}

// writeMigration writes a whole migration stream of the guest's RAM, as
// QEMU's last precopy pass would: every page, by content or as zero. With
// ram nil it is the stream of x-ignore-shared, the RAM left out.
func writeMigration(w io.Writer, blocks []migstream.Block, ram []byte) error {
	sk, err := migstream.ParseSkeleton(skeletonBytes(blocks, ram == nil))
	if err != nil {
		return err
	}
	var rs []io.ReaderAt
	if ram != nil {
		rs = []io.ReaderAt{bytes.NewReader(ram)}
	}
	return migstream.WriteStream(w, sk, rs)
}
