// Package agent is the protecting side of drsync as a library: what
// "drsync send" runs for each VM. It owns the per-VM loop (continuous,
// scheduled, once, and the final epoch of a switch-back), pacing with the
// epoch controller (package epochctl), retry with backoff as a decorator
// around the epoch runner, the sender's status file (status.json) and the
// guest guard's record, the source of each VM (image files, or a running
// QEMU guest through package livecut), the dialer stack (QUIC with mutual
// TLS, the bandwidth cap, striping over several connections) and the guest
// guard, the process that resumes a guest a dead sender left paused.
// A consistency group's members on this host (Options.Groups) take their
// snapshots from one group cut (group.go, groupsource.go), driven by
// package groupcut's state machines; grouppeer.go carries a group's cut
// between a leader and followers on other hosts (its lines drawn there),
// and since protocol 2 the followers' committed epochs, so that the
// leader paces the group on every member's bytes.
// Reload applies new options to a running agent: the bandwidth cap at once
// (Cap), pacing between epochs, VMs added, and VMs removed or replaced
// after their epoch in flight.
//
// It is configured by typed Options, each with Validate, and reads the
// clock only through Options.Now. It must not know the configuration file
// format (TOML), command-line flags, exit codes or how anything is shown
// on a terminal: the command builds Options, maps errors to exit codes and
// draws progress through the hooks Options offers.
package agent
