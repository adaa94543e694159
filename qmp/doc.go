// Package qmp is a session with one QEMU's monitor (QMP) socket: it
// connects, checks the QEMU version, runs commands bounded by a context,
// and hands asynchronous events (STOP, RESUME, MIGRATION, BLOCK_JOB_*,
// SHUTDOWN) to subscribers without ever blocking command replies.
//
// Subscribe returns the Events interface, so that other monitors (a fake,
// QMP through libvirt) can hand the same callers their own event queues.
// Execute does not send a command whose context has already ended.
//
// It speaks QMP itself over the unix socket (line-delimited JSON): every
// command carries an id that QEMU echoes, and one reader hands replies to
// their commands and events to subscribers. However the connection ends
// (EOF, or a reset when QEMU dies with input unread), Done closes at once,
// so a session that is idle still learns that its VM is gone; go-qemu's
// monitor, used before, kept such a reset for the next command and never
// ended its event stream.
//
// It owns nothing of what the commands mean: which commands cut an epoch,
// and in which order, is the business of the package that drives the VM.
//
// Errors callers branch on:
//
//   - ErrNoSocket: nothing listens at the socket path (the VM is not
//     running, or the path is wrong).
//   - ErrBusy: the socket accepted the connection but sent no greeting:
//     QEMU serves one QMP client per socket, and another one holds it.
//   - ErrUnsupportedVersion: the QEMU version is outside what the caller
//     accepts.
//   - ErrDisconnected: the connection ended (QEMU exited or was killed).
//   - *CommandError: QEMU refused a command; it carries QMP's error class
//     and description.
package qmp
