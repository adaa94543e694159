// Package takeover brings a replicated VM up at the DR site from its
// replica, with its memory: no reboot, no fsck, the guest continues from
// the instant of the replica's committed epoch.
//
// The replica holds, per epoch, flat RAM images, raw disk images and the
// device-state skeleton of QEMU's migration stream (see migstream). A
// takeover starts a fresh QEMU with -incoming and feeds it:
//
//	guest RAM     the replica's main RAM image, mapped as guest memory with
//	              -mem-path (a private mapping: the replica file is never
//	              written, pages are copied on the guest's first write)
//	small blocks  the other RAM blocks (video RAM, ACPI tables), as page
//	              records in the stream
//	devices       the skeleton's device sections, verbatim
//	disks         a qcow2 overlay per replica disk, backed by the replica's
//	              raw image, so the running VM never changes the replica
//
// A replica in a store that clones (replica.Cloner: Ceph RBD) is not a
// set of local files: the VM's disks are copy-on-write clones of the
// chosen epoch made in the store, which QEMU opens by name (-drive
// file=rbd:...) and writes. Its main RAM block is loaded lazily (RAMLazy,
// lazyram.go): QEMU starts with the RAM in a shared memfd of its own and
// -incoming defer; Start registers that memory for missing-page faults
// with a userfaultfd injected into QEMU (dirtylog.RegisterMissing), only
// then has QEMU load the stream, and returns once the guest runs. This
// process then serves the guest's faults from the RAM image at a
// snapshot the store makes with the clones (256 KiB runs, read on the
// fault) and fills every other page in the
// background: the runs written in the replica's last epochs first (the
// hot set the store records), then the rest in order, zero runs as zero
// pages; a page already in is never written again, and a log line says
// when RAM is fully resident. QEMU keeps its own copy of the userfaultfd,
// so if this process dies first the guest waits on the missing pages
// (hangs) rather than reading zeros: whoever started the VM waits for
// VM.WaitResident before it exits (the runbook does). Where userfaultfd
// cannot be used (not root, an old kernel), the RAM image is read whole
// into a file of the work directory first (RAMCopied) and mapped as
// above. VM.RAMLoad says which it was.
// A failover's clones (CloneFailover) are the VM's disks from then on and
// never replaced; a drill's (CloneDrill) are removed by Plan.Discard.
//
// Overlays a VM wrote to are never replaced (ErrOverlaysWritten): after a
// failover they are the VM's data. PrepareBoot boots a VM cold from them,
// MoveAside puts them away intact.
//
// The stream is small (the device state, a few hundred KiB), so QEMU
// loads it and runs the guest within tens of milliseconds of starting,
// whatever the guest's RAM size.
//
// Start waits for the guest through Monitor, the two QMP operations it
// uses (commands, close), connected by Options.Dial: a plain QMP socket
// (DialQMP) unless another monitor, such as QMP through libvirt, is
// plugged in.
//
// A hypervisor that gives QEMU memory of its own (libvirt's restore)
// cannot map the replica's RAM file: Options.FullStream then puts every
// page in the stream. Plan.Definition is the VM's replicated definition
// (a libvirt domain's, vmspec.BlobDomainXML), for whoever defines the VM
// at the DR site.
//
// takeover must not know how the replica was written, nor anything of the
// runbook that decides which VMs come up in which order.
package takeover
