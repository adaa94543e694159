// Package wanbench measures the baselines of drsync's WAN benchmark and
// writes its table. The benchmark protects one guest (GuestSpec) over one
// emulated link (Link, a wanemu.Emulator) with each tool and compares what
// the tools put on the wire and how far behind their copies lag:
//
//   - QEMU precopy migration with xbzrle (RunQEMU, PrecopyXBZRLE),
//   - QEMU migration over multifd channels with zstd (RunQEMU, MultifdZstd),
//     both with the disks moved by blockdev-mirror into NBD exports of the
//     destination QEMU,
//   - rsync of the disk images (RunRsync).
//
// Each run returns one Result, a row of the table; WriteTable prints rows
// as Markdown.
//
// # What it owns, and what it must not know
//
// The package owns the baselines, the guest and link presets that every row
// shares, and the table. It starts and stops every QEMU, rsync daemon and
// client it needs, and nothing else. It must not know drsync's sender,
// receiver or wire format: drsync's own row is measured elsewhere, with the
// same GuestSpec and Link, and handed to WriteTable as a Result of
// KindOther. Of the module it imports only wanemu, qmp, testkit/guest and
// testkit/hosttools.
//
// # Measurements
//
// Bytes are those the emulator forwarded, both directions added, counted
// as whole IP packets with their headers: lost packets do not count, their
// retransmissions do. Tools run one at a time, so the counters see only the
// tool being measured. Times come from the host clock; QEMU events carry
// their own timestamps (STOP, RESUME, MIGRATION), which are used as they
// are. Goodput is InitialBytes per second of InitialSync as a fraction of
// the link rate.
//
// Processes sit where the sites would: the QEMU source and the rsync
// client in namespace A, the destination QEMUs and the rsync daemon in
// namespace B, each QEMU started by testdata/guest/launch.sh so that every
// guest of the tests has the same machine. The guest whose images rsync
// copies runs in the test process's namespace: it needs no network.
//
// # QEMU: initial sync
//
// The source boots the guest and waits until the workload has read its
// cache disk (the guest's page cache then holds the disk's content) and
// ticks. Destination 1 is a paused QEMU (-S -incoming defer) at side B
// whose empty images are exported writable by its own NBD server. The
// source connects one NBD client node per disk across the link and starts
// blockdev-mirror (sync=full) into each; once all are ready it migrates
// RAM with the mode's capabilities (xbzrle with a cache of a quarter of the
// RAM; or multifd, two channels, zstd, set on both sides), max-bandwidth
// far above the link rate and QEMU's default downtime-limit of 300 ms.
// With pause-before-switchover the migration stops at pre-switchover with
// the guest paused; the mirrors then copy what is left, so that the
// destination's disks and RAM are one cut, and the migration finishes. The
// source resumes at once. InitialSync runs from the start of the mirrors
// to the moment destination 1 has loaded the state; InitialBytes is what
// crossed the link meanwhile.
//
// # QEMU: steady state
//
// QEMU cannot migrate incrementally into a destination that already holds
// the guest, so periodic DR checkpoints with QEMU alone look like this: the
// mirrors keep running after the initial sync, writing every guest disk
// write into destination 1's exports, and every epoch the whole RAM is
// migrated again, to a fresh paused destination whose disks are those
// exports (NBD clients inside side B, off the link). RunQEMU measures one
// such epoch: destination 2 starts after the initial sync, and epoch after
// the source resumed, the RAM goes to it as above. SteadyBytesPerEpoch is
// what crossed the link from the moment destination 1 loaded the state to
// the moment destination 2 did: the mirrors' writes of the epoch plus the
// second migration. RPO is the epoch plus the second migration's duration
// (migrate to destination loaded), the oldest state a failure could leave.
// Pause is the source guest's STOP to RESUME in that migration: the final
// RAM pass and device state under the downtime limit, the mirrors'
// catch-up, and cont.
//
// # rsync
//
// An rsync daemon at side B receives the running guest's images from an
// rsync client at side A with --inplace, --no-whole-file (the delta
// algorithm), --times and zstd compression (zlib if this rsync lacks
// zstd). The first copy, into an empty directory, is the initial sync;
// epoch after it ended a second copy is the steady epoch: the quick check
// (size and time) skips the images the guest did not write, the others go
// by rsync's delta algorithm. RPO is the epoch plus the second copy's
// duration, and Pause is 0: the guest never stops. The copy holds the disks
// only, no memory, and is not crash-consistent: rsync reads the images
// while the guest writes them.
//
// # Requirements
//
// Root (wanemu.Check), qemu-system-x86_64 and qemu-img (testkit/guest
// builds the guest), and rsync. Run functions skip the test through
// hosttools.Need when a program is missing; TestSmoke also skips when the
// emulator cannot run. TestSmoke runs every baseline on a tiny guest over
// a fast link in about 40 s on two cores.
package wanbench
