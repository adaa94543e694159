// Package vmspec owns what a protected VM is made of, as both sites and
// every package name it: its targets (disks and RAM blocks) and their
// kinds, the guest page size that RAM is tracked in, and the rules for VM
// and target names (a VM name is a directory name at the DR site, so it can
// never escape or alias one).
//
// A blob target (KindBlob) is a small document that travels with the VM:
// the definition of a libvirt domain, sanitized for the DR site
// (BlobDomainXML). A new target kind rather than a new frame type, so
// that it rides what disks already have: unchanged blocks are not sent,
// zero blocks travel as ZeroRun, the replica keeps it per committed epoch
// and in every recovery point, and a resumed epoch resumes it. Its image
// is always BlobSize bytes (a replica never shrinks a target), mostly
// zeros, so only the blocks the document covers travel:
//
//	0            4                     4+length              BlobSize
//	+------------+---------------------+---------------------+
//	| length u32 | content (length)    | zeros               |
//	+------------+---------------------+---------------------+
//
// length is big endian and at most MaxBlobContent.
//
// It must not know the wire protocol, files, QEMU or configuration: those
// packages use these types; package wire carries them in its frames.
package vmspec
