// Package colo is the receiving side of QEMU's COLO checkpoint protocol
// (the "x-colo" migration capability), examined as a way to capture only
// the guest memory dirtied since the previous cut.
//
// # What it owns
//
// The COLO messages (Message), the order in which the source sends and
// expects them, and the Receiver that parses the first pass and every
// checkpoint with migstream.Checkpointed and answers the source. The
// caller decides when to answer a checkpoint request, and what to do while
// the guest is stopped in it (Take's atStop).
//
// # What it must not know
//
// QMP, replicas, the wire protocol, epochs. It is given a connection.
//
// # Stream and messages (QEMU 7.2, all integers big-endian)
//
//	first pass    a normal stream with one COMMAND ENABLE_COLO before RAM
//	              START (savevm.c qemu_savevm_send_colo_enable, sent by
//	              migration_thread when migrate_colo_enabled()), ending
//	              with EOF and VMDESCRIPTION; status becomes "colo" and the
//	              guest stays stopped (colo_process_checkpoint)
//	← be32 0      checkpoint-ready; QEMU resumes the guest
//	→ be32 1      checkpoint-request, when colo_checkpoint_event is set
//	← be32 2      checkpoint-reply; QEMU then stops the guest
//	              (colo_do_checkpoint_transaction: vm_stop_force_state)
//	→ be32 3      vmstate-send, then qemu_savevm_live_state: one RAM END
//	              section holding the pages dirtied since the previous
//	              checkpoint, and an EOF byte
//	→ be32 4      vmstate-size, be64 n, then n bytes of device state
//	              (qemu_save_device_state in COLO state: FULL sections and
//	              EOF, no file header, no VMDESCRIPTION)
//	← be32 5      vmstate-received
//	← be32 6      vmstate-loaded; QEMU resumes the guest
//
// "←" is the return path: the same unix socket (qemu_file_get_return_path).
//
// # What was verified on Debian's QEMU 7.2.22 with -accel tcg
//
// TestCheckpointsOfARunningGuest (a 256 MiB guest writing 256 KiB/s):
//
//   - QEMU accepts a non-QEMU receiving side and needs no secondary VM,
//     block replication or colo-compare for the primary to run
//     checkpoints: replication_do_checkpoint_all has no replication
//     drivers to call and colo_notify_compares_event returns when no
//     colo-compare object exists.
//   - Parsed by migstream, the first pass was 136–150 MB; each checkpoint's
//     RAM part 36–109 pages (150–450 KB), the device buffer 104 KB; from
//     our reply to our "loaded" 3–90 ms.
//   - drsync can choose each checkpoint's instant two ways: setting
//     x-checkpoint-delay while in COLO state calls colo_checkpoint_notify
//     at once (migrate_params_apply), which sets the event, so a huge delay
//     plus a set-parameters per epoch asks for checkpoints on demand; and
//     the guest keeps running while a request waits for the reply (seen:
//     "running" 500 ms after the request), so the reply picks the instant.
//
// # Why it cannot be used on QEMU 7.2: the monitor hang
//
// Within 1 to 6 checkpoints (every one of 8 runs, with checkpoints asked by
// set-parameters or left to QEMU's timer at x-checkpoint-delay=1000, with
// or without monitor commands while the guest was stopped) the whole VM
// wedged: the monitor never answered again and the guest console stopped
// (0 lines in 3 s); closing the migration socket did not release it. This
// is the unexplained QMP hang of the earlier rough check; parsing the
// stream exactly did not avoid it. gdb on the wedged QEMU showed:
//
//   - the main thread blocked in qemu_mutex_lock_iothread (main_loop_wait);
//   - the owner of that mutex (glibc's __owner of qemu_global_mutex) was
//     the migration thread, blocked in recvmsg on the migration socket in
//     colo_receive_check_message with expected message 6, the call right
//     after colo_notify_compares_event in colo_do_checkpoint_transaction
//     (inlined into migrate_start_colo_process): waiting for
//     vmstate-loaded while holding the big QEMU lock, which the source
//     never does on purpose there (every lock in the transaction is paired
//     with an unlock before the live state is sent; read in upstream
//     migration/colo.c of a later release, as the v7.2.0 tree could not be
//     fetched here, and matched against the disassembly of Debian's binary:
//     the same calls in the same order);
//   - once "loaded" arrives that thread calls qemu_mutex_lock_iothread for
//     vm_start; it never returns (the monitor stays dead after "loaded"):
//     the VM is lost.
//
// Where the lock is left held was not found (the binary is stripped; no
// debug symbols are installed); KVM could not be tried here. Either way a
// capture path that can wedge the protected VM is unacceptable, and it
// cannot be detected and fallen back from: the VM must be killed. So
// livecut keeps the full-migrate path, and the Receiver stays a verified
// harness for a QEMU that fixes this.
//
// # The next best mechanisms on QEMU 7.2
//
//   - calc-dirty-rate (dirty-bitmap or dirty-ring mode) only measures a
//     rate; QEMU exposes no list of dirty guest pages through QMP, and
//     dirty-limit arrives only in 8.1.
//   - background-snapshot (userfaultfd write protection) gives a point in
//     time without a long pause but still streams all of RAM: O(RAM).
//   - A precopy migration kept running sends only re-dirtied pages in its
//     PART sections, but a consistent cut needs it to complete, and the
//     next epoch starts again with a full pass: O(RAM) per epoch.
//   - Guest RAM in a shared memory backend (memory-backend-file or memfd,
//     share=on) with the x-ignore-shared capability: the cut's migration
//     carries only device state (QEMU's ramblock_is_ignored skips shared
//     blocks), and drsync reads the RAM itself while the guest is stopped,
//     finding the pages written since the previous cut from the kernel's
//     soft-dirty bits of QEMU's mapping (/proc/PID/clear_refs 4,
//     /proc/PID/pagemap bit 55), so the pause and the read are O(dirty)
//     plus a pagemap scan of 2 MiB per GiB. It needs the VM started with a
//     shared backend and drsync on the same host as root. This is the best
//     available on 7.2 by that reasoning; it is not built yet.
//
// TestSoftDirtyTracksGuestWrites checks its parts on a 256 MiB guest with
// a memory-backend-memfd share=on backend: the migration with
// x-ignore-shared was 411 KB (50 pages, 80 zero pages: ROMs and video
// RAM) against 136–150 MB without. The soft-dirty part could not be
// checked here: this machine's kernel is built without
// CONFIG_MEM_SOFT_DIRTY (clear_refs 4 is accepted, bit 55 never set), so
// the test skips there; in a first run it found 2169 guest pages changed
// in 1 s by comparing two stopped copies of the backend.
package colo
