// Package lifecycle decides what a sender does about a libvirt domain's
// lifecycle: libvirt's events (started, stopped with its reason,
// suspended and resumed for an outgoing migration, the migration job's
// iterations and completion, undefined) and what the sender observes when
// it (re)connects or checks before a cut go in, with the time; the
// domain's state and what to do come out: protect it, hold protection and
// wait, protect it again with a full epoch after a restart (a new QEMU has
// neither the dirty bitmaps nor the fleecing state of the old one), or,
// after a migration away, stop cutting here without an error.
//
// A pause that is not part of a migration (the operator's, or the stop of
// drsync's own cut, which libvirt also reports as "suspended") is not this
// package's business: livecut refuses to cut a guest it did not stop and
// never resumes it, and drsync's own cuts must not hold protection.
//
// It is pure: no libvirt, no clock, no IO; libvirtvm's Watcher feeds it
// and the agent acts on its decisions. Its vocabulary mirrors libvirt's
// event types and details, numbered as libvirt numbers them, so the
// watcher converts without a table of its own.
package lifecycle
