// Package diskmirror reads disk images as a source of blocks.
//
// # What it owns
//
// Opening a VM disk image and answering two questions about it: what are
// the bytes at an offset (io.ReaderAt), and which runs need reading at all
// (Extents: data versus runs known to read as zeros). Implementations:
//
//   - OpenRaw: a raw file or block device, with holes found through
//     SEEK_DATA/SEEK_HOLE.
//   - OpenQcow2: a qcow2 image and its backing chain, served read-only by a
//     private qemu-nbd on a unix socket and read through package nbd; the
//     helper process is tied to the image's lifetime and to ours.
//   - OpenNBD: an export someone else serves, typically QEMU's built-in
//     NBD server; with dirty-bitmap contexts it also answers which runs
//     changed (DirtyExtents).
//
// Change tracking across epochs and applying extents to a target image are
// to live here too.
//
// # What it must not know
//
// The replication wire protocol, the receiver's replica journal, or epoch
// bookkeeping. It hands out bytes and extents; deciding what to send and
// how to store it belongs to its callers. The NBD protocol itself belongs
// to package nbd.
package diskmirror
