// Package libvirtvm reaches the QEMU of a libvirt-managed domain through
// libvirt's own RPC protocol (github.com/digitalocean/go-libvirt), so that
// drsync can protect a domain by name instead of needing a QMP socket of
// its own on QEMU's command line.
//
// Monitor is a livecut.Monitor over libvirt: QMP commands are passed
// through virDomainQemuMonitorCommand, QEMU's events come from
// virConnectDomainQemuMonitorEventRegister, and the domain's end (stopped,
// destroyed, migrated away, undefined) from libvirt's lifecycle events,
// which close Done as a QEMU that exits closes a QMP socket. Errors follow
// qmp's conventions: QEMU's refusal is a *qmp.CommandError, a domain that
// is gone wraps qmp.ErrDisconnected, a domain that is defined but not
// running is qmp.ErrNoSocket, and one libvirt does not know is ErrNoDomain.
//
// Two details of go-libvirt shape the code: it routes events by callback
// ID alone while libvirt numbers lifecycle and QEMU monitor callbacks
// separately, so a Monitor holds two connections (commands and QEMU
// events on one, lifecycle events on the other); and it drops QEMU events
// whose data is null (STOP, RESUME), which the connection mends before
// go-libvirt decodes them (see fixDialer). Nor can go-libvirt pass file
// descriptors (virDomainQemuMonitorCommandWithFiles needs SCM_RIGHTS on
// the libvirt socket), so QEMU writes a cut's migration stream into a unix
// socket drsync listens on, which QEMU's user must be able to reach.
//
// Watcher follows a protected domain's lifecycle for as long as the
// sender runs, across the ends of its QEMU: libvirt's lifecycle,
// migration-iteration and job-completed events for the domain's name (a
// connection of its own, re-made when libvirtd restarts), plus the
// domain's state and job asked for at each (re)connection, before each
// cut (Check) and while a migration is quiet. It feeds them to package
// lifecycle, whose decision (protect, wait, resync, stop cutting) the
// agent acts on; until libvirt answers, the posture is to protect.
//
// Config is what a sender's [[vm]] entry says of a domain (URI, name or
// UUID, disks left out): Check validates it, Apply points livecut at the
// domain (a monitor address, "libvirt:<uri>#<domain>", that travels where
// a QMP socket path does, so the guest guard reaches the domain too), and
// ResolveDisks finds the disks and their block nodes in the running
// domain (Disks: libvirt's node names from the live XML's source index).
//
// Definition is the domain's definition as it travels with each epoch:
// libvirt's migratable, secure XML (the live configuration the device
// state belongs to), cleared by Sanitize of what names the protected host.
// Config.WithDefinition adds it to each snapshot as the blob target
// vmspec.BlobDomainXML: a target kind rather than a new item type, so it
// rides what disks have (block tables, unchanged blocks not sent, zero
// runs, recovery points, resume) and no frame layout changes.
//
// At the DR site, ForDR makes a replicated definition the domain to run
// (disks on the takeover's overlays, networks mapped or, for a drill,
// none, character devices in the work directory), and the guest resumes
// through virDomainRestore from a libvirt save image (WriteSaveHeader,
// layout in saveimage.go): libvirt's own way of starting a domain from a
// migration stream, so the domain is libvirt's from its first instant, not
// tainted, with no pass-through of QEMU options. Its cost: libvirt gives
// QEMU its own memory backend, so the replica's RAM cannot be mapped as it
// is for a bare QEMU; every page travels in the stream (a save image as
// large as the guest's RAM, written and then loaded: about a second per
// 200 MB here, against tens of milliseconds for a mapped RAM image).
//
// Libvirt marks a domain whose monitor is used directly as tainted
// ("custom-monitor"); that is a note in its log, not a change of how
// libvirt manages the domain.
//
// libvirtvm knows libvirt and QMP's conventions; it does not know what
// the commands do (livecut's business), the wire protocol or replicas.
package libvirtvm
