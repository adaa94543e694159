package runbook

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/takeover"
)

// Libvirt, when URI is set, makes a VM a libvirt domain at the DR site:
// defined from the definition replicated with its epoch (its machine, so
// no QEMU options are needed), with its disks on the takeover's overlays
// and its interfaces on the networks Networks maps them to, then resumed
// with its memory through libvirt's restore. A drill's copy is a
// transient domain on no network, named "<domain>-drill", gone once the
// drill ends.
//
//	libvirt = "qemu:///system"
//	domain = "web-1"                 # the DR domain's name; the VM's if empty
//	[vm.network]
//	"br-prod" = "br-dr"              # bridge or libvirt network, protected → DR
type Libvirt struct {
	URI      string            `toml:"libvirt"`
	Domain   string            `toml:"domain"`
	Networks map[string]string `toml:"network"`
}

// Enabled reports whether the VM is a libvirt domain at the DR site.
func (l Libvirt) Enabled() bool { return l.URI != "" }

// domain is the name of vm's domain at the DR site in rb.
func (l Libvirt) domain(rb *Runbook, vm *VM) string {
	name := l.Domain
	if name == "" {
		name = vm.Name
	}
	if rb.Drill {
		name += "-drill"
	}
	return name
}

func (e QEMUEnv) startLibvirt(ctx context.Context, rb *Runbook, vm *VM, t0 time.Time) (Started, error) {
	o, done, err := takeoverOptions(rb, vm)
	if err != nil {
		return Started{}, err
	}
	defer done()
	o.FullStream = true
	o.Disks = append([]takeover.Disk{}, o.Disks...)
	for i := range o.Disks {
		if o.Disks[i].Node == "" {
			o.Disks[i].Node = o.Disks[i].Target // only names the overlay
		}
	}
	plan, err := takeover.Prepare(o)
	if err != nil {
		return Started{}, err
	}
	disks := map[string]string{}
	for i, d := range o.Disks {
		disks[d.Target] = plan.Overlays[i]
	}
	name := vm.Libvirt.domain(rb, vm)
	img := filepath.Join(o.WorkDir, "restore.img")
	got, err := libvirtvm.Restore{URI: vm.Libvirt.URI, Definition: plan.Definition, Stream: plan.Stream, Image: img, Persistent: !rb.Drill,
		DR: libvirtvm.DRDefinition{Name: name, Disks: disks, Networks: vm.Libvirt.Networks, Isolated: rb.Drill, Dir: o.WorkDir}}.Do(ctx)
	// The image is as large as the guest's RAM; libvirt has read it once
	// the restore returns.
	os.Remove(img)
	if err != nil {
		return Started{}, err
	}
	fmt.Fprintf(e.out(), "%s: libvirt domain %s restored (save image written in %v, loaded in %v)\n", vm.Name, got.Name, got.Written.Round(time.Millisecond), got.Loaded.Round(time.Millisecond))
	return Started{QMP: libvirtvm.Address(vm.Libvirt.URI, got.Name), Epoch: plan.Epoch, Cut: plan.Cut, Took: time.Since(t0)}, nil
}
