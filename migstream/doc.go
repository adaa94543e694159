// Package migstream reads and writes QEMU 7.2 precopy migration streams
// ("QEVM" version 3), as produced by `migrate` and accepted by `-incoming`.
//
// # What it owns
//
// The stream framing: file header, CONFIGURATION section and its
// subsections, section headers and footers. The "ram" iterable section in
// all its passes (START, PART..., END): the RAM block list (MEM_SIZE
// record) and every ZERO and PAGE record, handed to a Handler as they are
// parsed, so a multi-GiB stream is never held in memory. The device state
// (everything after the RAM END footer) is kept verbatim as an opaque
// blob, bounded by Options.MaxDeviceState; vmstate fields are never
// decoded. From these parts it builds a skeleton (a device-only stream)
// and writes full streams from a skeleton plus RAM images. Flat is a
// Handler that holds each RAM block's non-zero pages in memory, packed in
// arrival order (in huge pages where the kernel offers them, mapped a
// little ahead of the parser by another thread once a block is large) and
// read back at their addresses; Spool rebuilds each in an unlinked file (through
// vfs), so that holding a guest's RAM costs page cache and disk space, not
// the holder's memory.
//
// # What it must not know
//
// drsync's wire protocol, replicas, epochs, QMP or how QEMU is started.
// Callers give it an io.Reader or io.Writer and RAM images.
//
// # Errors
//
// Structural problems wrap ErrMalformed, valid features this package does
// not handle (XBZRLE, compressed pages, RDMA hooks, multifd flushes,
// COMMAND sections of postcopy or return-path streams, iterable sections
// other than "ram", unknown configuration subsections or capabilities) and
// exceeded limits (MaxRAM, MaxBlocks, MaxDeviceState) wrap ErrUnsupported.
// Both come as *FormatError, naming the stream offset and the field:
//
//	migstream: offset 66: RAM record flags 0x40 (XBZRLE): unsupported
//
// # Stream layout (all integers big-endian)
//
//	+-------------+--------+
//	| "QEVM" be32 | 3 be32 |                               file header, offset 0
//	+-------------+--------+
//	| 0x07 | len be32 | machine name (len) |               CONFIGURATION, e.g. "pc-i440fx-7.2"
//	  then optional subsections, each:
//	| 0x05 | u8 n | name (n) | version be32 = 1 | fields |
//	  "configuration/capabilities": count be32, count * (u8 n, name)
//	        (7.2 sends only "x-ignore-shared", and only when it is on)
//	  "configuration/uuid": 16 bytes (sent with the validate-uuid
//	        capability when the source was started with -uuid)
//	  (no footer after the configuration)
//
//	sections until the RAM END footer:
//	| 0x01 START | section_id be32 | u8 n | "ram" | instance_id be32 | version_id be32 = 4 | RAM records | footer |
//	| 0x02 PART  | section_id be32 | RAM records | footer |          zero or more
//	| 0x03 END   | section_id be32 | RAM records | footer |
//	footer: | 0x7E | section_id be32 |   (the id of the section it closes)
//
//	  A background snapshot (the background-snapshot capability) has
//	  no END: its device tail follows the footer of its last PART.
//
//	device tail, kept verbatim:
//	| 0x04 FULL | section_id | u8 n | idstr | instance_id | version_id | vmstate | footer | ...
//	| 0x00 EOF | 0x06 VMDESCRIPTION | len be32 | JSON (len) |
//
// The device tail is checked only at its ends: it must start with a FULL
// section and end with the EOF marker and a VMDESCRIPTION whose length
// reaches exactly to the end of the stream. That catches a stream cut
// anywhere without decoding vmstate, at the price of rejecting streams of
// machines with suppress-vmdesc=on (never the default on x86).
//
// RAM records: a be64 whose low 12 bits are flags and whose high bits are
// a page-aligned value (a byte offset in the block, or MEM_SIZE's total):
//
//	MEM_SIZE 0x04  first record of START: total bytes, then blocks until
//	               their lengths add up to the total:
//	               | u8 n | idstr (n) | used_length be64 | [GPA be64 if x-ignore-shared] |
//	ZERO     0x02  | hdr | [u8 n | idstr] | fill u8 |        every byte of the page is fill
//	PAGE     0x08  | hdr | [u8 n | idstr] | 4096 bytes |
//	CONTINUE 0x20  ORed into ZERO/PAGE: same block as the previous record
//	               (even in an earlier section), so no idstr follows
//	EOS      0x10  ends the records of every RAM section
//	rejected: XBZRLE 0x40, HOOK 0x80, COMPRESS_PAGE 0x100, MULTIFD_FLUSH
//	0x200 (ErrUnsupported), anything else (ErrMalformed).
//
// A block list entry has one more field, the block's page size, only when
// the source had postcopy-ram on and the block uses huge pages; the loader
// reads it only after a postcopy advice, a COMMAND (0x08) section before
// RAM START. Parse rejects COMMAND sections as unsupported, so the field
// never appears in an accepted stream.
//
// # COLO streams
//
// Checkpointed reads a stream of a source with the x-colo capability,
// which does not end after its first pass. The first pass carries one
// COMMAND section before RAM START, ENABLE_COLO:
//
//	| 0x08 | cmd be16 = 8 | len be16 = 0 |
//
// and its device tail ends with the VMDESCRIPTION, after which the source
// sends nothing until the receiving side answers. Each checkpoint's RAM
// part (QEMU's qemu_savevm_live_state) is then
//
//	| 0x03 END | sid | RAM records | EOS | 0x7E | sid | 0x00 EOF |
//
// with CONTINUE carried over from the previous part. The COLO messages
// and device buffers between parts are the caller's to read (Reader).
// Parse still rejects COMMAND sections, so a skeleton never holds one.
//
// # Skeleton layout
//
// A skeleton is itself a stream that QEMU 7.2 loads with -incoming when
// guest RAM already holds the content (-mem-path FILE), because unlisted
// or record-less blocks keep what the destination initialised:
//
//	| header + CONFIGURATION, verbatim as received                   |
//	| 0x01 | sid | 3 "ram" | instance | version | MEM_SIZE total|0x04 |
//	|      block list (as above) | EOS be64 0x10 | 0x7E | sid       |
//	| 0x03 | sid | EOS be64 0x10 | 0x7E | sid                         |
//	| device tail, verbatim                                          |
//
// sid, instance and version are the source's own. WriteStream writes the
// same bytes with one ZERO (fill 0) or PAGE record per page of every block
// whose content is given, placed between the block list and the first EOS,
// with CONTINUE set on every record after the first of a block.
package migstream
