// Package livecut cuts consistent epochs of a running QEMU guest, memory
// and disks at one instant, and serves them to the sender as a
// sender.Source. The guest keeps running; it is paused only for the few
// milliseconds QEMU needs to finish a migration pass and for two QMP
// commands.
//
// One cut, over the VM's QMP socket (see qmp):
//
//	migrate → unix socket we listen on    guest RAM + device state, parsed by migstream
//	  MIGRATION completed                 guest stopped (STOP), block nodes inactive
//	blockdev-add drsync-f<gen>-<i>         qcow2 overlay per disk, backing = the disk node
//	transaction                            per disk, atomically:
//	  block-dirty-bitmap-disable b<prev>     freeze the changes since the previous cut
//	  block-dirty-bitmap-add     b<gen>      start recording changes since this cut
//	  blockdev-backup sync=none              copy-before-write into the overlay: a
//	                                         point-in-time view of the disk (fleecing)
//	cont                                   guest runs again (RESUME)
//	block-export-add drsync-x<gen>-<i>     NBD export of the view, with bitmap b<prev>
//
// The sender then reads only the blocks b<prev> marks dirty, from the
// view, while the guest runs on; blocks it marks clean take their hashes
// from the previous cut's block table (sender.Target.Prev). Closing the
// snapshot tears everything down in the order QEMU requires: export,
// backup job, old bitmap, overlay node, overlay file. Only one cut may be
// open at a time: QEMU fails a migration whose completion finds a backup
// job still running, and resumes the guest by itself.
//
// Restart safety: every object livecut creates in QEMU is named drsync-*.
// A new session first finds the leftovers of a predecessor that was killed
// (a migration in flight, a guest left paused after its migration, exports,
// jobs, overlay nodes, bitmaps, overlay files) and removes them. The one
// bitmap kept is the one recording since the cut whose block tables the
// state file holds; anything else breaks the chain, and the next cut then
// compares every allocated block (a full pass), never trusting a gap.
//
// A dead sender never leaves the guest paused. From just before migrate
// until the guest runs again, WorkDir/cut-in-flight marks the cut. Guard
// (run by a process that outlives the sender, once the sender is gone)
// and a restarted sender resume a guest only if that mark exists and QEMU
// is in postmigrate after a completed migration: the cut's own stop. A
// guest the operator paused, the source of the operator's own migration,
// a switch-back's final cut and a live sender's cut are left alone, and a
// cut never starts on a guest that is not running (ErrGuestPaused), since
// its cont would resume it. A mark whose QEMU is gone (nothing listens at
// the QMP socket) is dropped, with the NBD socket, by the guard and by the
// sender's next attempt: no guest of it can be left stopped, and status
// would otherwise report a paused guest.
//
// State (WorkDir/livecut-state) is a sender index store (sender.Store)
// whose epoch is the cut's generation and whose tables are the disks'
// block tables at that cut: each cut records the entries it changed.
// Earlier versions kept it whole in WorkDir/livecut.state, which is read
// when the store is empty.
//
// The monitor seam: livecut talks to QEMU only through Monitor, declared
// here by its user with exactly what a cut needs (commands with arguments
// and a reply, event subscriptions, the version, the connection's end),
// and connects through Options.Dial (GuardOptions.Dial for Guard). The
// default, DialQMP, is a plain QMP socket (*qmp.Session); QMP passed
// through libvirt plugs in the same way. The interface lives here rather
// than in a shared package because its users differ: takeover needs only
// two of its methods and declares its own. What every implementation
// shares is qmp's vocabulary (qmp.Event, qmp.Events, qmp.Version,
// *qmp.CommandError, qmp.ErrDisconnected), which livecut branches on.
// livecuttest holds a scripted QEMU behind this seam, with which
// testdata/cut checks the command sequence of cuts and their failures,
// and TestMonitor, the behaviours any implementation must have.
//
// A tracked cut takes its device state by a background snapshot where
// QEMU allows it (background.go): the fleecing nodes and the new bitmaps
// are added while the guest runs, the cut stops the guest itself, scans
// RAM and starts the backup jobs, the old bitmaps are disabled once the
// guest runs again, and a migration with the background-snapshot capability
// saves the device state and resumes the guest, with no disk inactivated
// and so no cont to activate them again. A QEMU that refuses the
// capability gets the sequence above from then on. CutStats.Background
// says which way a cut went. Such a cut starts its backup jobs before the
// stop (early.go): a write threshold of one byte on each fleecing node
// (or, where the monitor may deliver events after later replies, the
// jobs' progress asked while stopped) says whether the guest wrote
// between the jobs' start and the stop; if it did, the cut starts jobs
// into late nodes while stopped. CutStats.DiskFreeze says which.
//
// Tracked RAM (Options.SharedRAM, Options.TrackRAM; ramtrack.go): with
// guest RAM in a shared memory backend, the first cut migrates all of RAM
// and, guest stopped, arms a RAMTracker (dirtylog: write-protect-async
// userfaultfd inside QEMU). Each later cut sets x-ignore-shared, so its
// migration carries device state only; before the guest stops it scans
// the pages written since the last scan and copies them (precopy), and,
// guest stopped, scans again and copies only the pages written since the
// precopy, taking the rest from the precopy's copy: the pause grows with
// the pages written in those few moments, not with RAM nor with the
// epoch's writes. The RAM
// target is the written ranges to read and every other page unchanged
// from the planner's table of the previous cut, so the sender hashes only
// written pages and holds no image of the guest's RAM: between cuts it
// keeps the table, 8 bytes per page (2 MiB per GiB of RAM), and during a
// cut the written pages. The full cut that starts the chain holds the
// whole stream until its epoch is sent, spooled to unlinked files in the
// work directory (migstream.Spool) rather than in this process's memory:
// page cache the kernel may write out and reclaim, and at most the
// guest's non-zero RAM of disk space; such full cuts of the tracked VMs of
// one process run one at a time, so their spools do not add up. A full
// directory fails the cut (the guest runs on) with the cause named. A cut whose
// predecessor was never planned (its table is unknown) is full. A
// failed scan or copy drops the tracking (the cut fails; the guest runs
// on) and the next cut is full again. A cut that scanned but never
// reaches the sender (it fails, or its group cut is aborted) gives its
// scan back: the chain goes on from the cut before it, and the pages it
// found written are carried to the next tracked cut (unscan). A group
// cut takes the tracked path on the same terms as a single cut (group.go),
// by a background snapshot where QEMU allows it: prepare adds the
// fleecing nodes and bitmaps, stop stops the guest, copies the written
// pages and starts the backup jobs, resume's snapshot saves the device
// state and resumes the guest. A full group cut arms the tracking as a full
// single cut does; a group's members may take different paths.
// x-ignore-shared (and background-snapshot) is turned off after each
// tracked cut, failed or not, by a new session, and by an aborted group
// cut, and a cut whose stream left shared RAM out
// without tracking is refused, so replicas never get zeros for RAM. A tracked cut's device state is kept
// as a cut without x-ignore-shared would have it
// (migstream.Skeleton.WithoutIgnoreShared), so a takeover loads it like
// any other. CutStats.RAMPath says which path a cut took ("full",
// "tracked"), single or group, and CutStats.Pass whether its guest
// stopped before the migration.
//
// livecut knows QMP commands and QEMU's block layer; it does not know the
// wire protocol, replicas or how plans are made.
package livecut
