// Package vmspec owns what a protected VM is made of, as both sites and
// every package name it: its targets (disks and RAM blocks) and their
// kinds, the guest page size that RAM is tracked in, and the rules for VM
// and target names (a VM name is a directory name at the DR site, so it can
// never escape or alias one).
//
// It must not know the wire protocol, files, QEMU or configuration: those
// packages use these types; package wire carries them in its frames.
package vmspec
