package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
)

// LibvirtVMConfig are the [[vm]] keys of a libvirt-managed domain, whose
// monitor drsync reaches through libvirt instead of a QMP socket.
//
//	libvirt = "qemu:///system"
//	domain = "web-1"              # name or UUID
//	exclude_disks = ["vdb"]       # disks left out (by target dev)
//
// [[vm.disk]] entries, if any, choose the disks (name = target dev, node
// optional); without them every disk of the domain is protected.
type LibvirtVMConfig struct {
	Libvirt      string   `toml:"libvirt"`
	Domain       string   `toml:"domain"`
	ExcludeDisks []string `toml:"exclude_disks"`
}

// libvirtDomain reports whether the VM is a libvirt domain.
func (v *VMConfig) libvirtDomain() bool { return v.Libvirt != "" }

// validateLibvirt checks a libvirt domain's entry; the disks' nodes are
// found when the sender starts (resolveLibvirtDisks).
func (v *VMConfig) validateLibvirt(bad func(k, format string, a ...any) error) error {
	if !v.libvirtDomain() {
		if v.Domain != "" || len(v.ExcludeDisks) > 0 {
			return bad("libvirt", "missing: domain and exclude_disks apply to a libvirt domain (libvirt = \"qemu:///system\")")
		}
		return nil
	}
	if v.QMP != "" {
		return bad("qmp", "a libvirt domain's monitor is reached through libvirt; remove qmp or libvirt")
	}
	if v.Domain == "" {
		return bad("domain", "missing: the libvirt domain's name or UUID")
	}
	if _, _, ok := libvirtvm.ParseAddress(libvirtvm.Address(v.Libvirt, v.Domain)); !ok {
		return bad("libvirt", "%q with domain %q cannot be addressed (no '#' in the URI)", v.Libvirt, v.Domain)
	}
	for _, x := range v.ExcludeDisks {
		if slices.ContainsFunc(v.Disks, func(d DiskConfig) bool { return d.Name == x }) {
			return bad("exclude_disks", "disk %q is both listed and excluded", x)
		}
	}
	return nil
}

// libvirtLiveOptions points the live source at the domain's monitor.
func (v *VMConfig) libvirtLiveOptions(o *livecut.Options) {
	if !v.libvirtDomain() {
		return
	}
	o.QMPSocket = libvirtvm.Address(v.Libvirt, v.Domain)
	o.Dial = libvirtvm.DialMonitor
}

// resolveLibvirtDisks fills in the live source's disks from the running
// domain: all its disks but the excluded ones, or those listed, with the
// block nodes QEMU gives them. The domain must run when the sender starts.
func (v *VMConfig) resolveLibvirtDisks(o *livecut.Options) error {
	if !v.libvirtDomain() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := libvirtvm.Dial(ctx, v.Libvirt, v.Domain, qmp.Options{})
	if err != nil {
		return fmt.Errorf("vm %q: %w", v.Name, err)
	}
	defer m.Close()
	found, err := m.Disks(ctx)
	if err != nil {
		return fmt.Errorf("vm %q: %w", v.Name, err)
	}
	disks, err := v.selectDisks(found)
	if err != nil {
		return fmt.Errorf("vm %q: %w", v.Name, err)
	}
	o.Disks = disks
	return nil
}

// selectDisks chooses the disks to protect among those the domain has:
// the listed ones (their nodes found unless given), or else every
// writable disk but the excluded ones.
func (v *VMConfig) selectDisks(found []libvirtvm.Disk) ([]livecut.Disk, error) {
	var out []livecut.Disk
	if len(v.Disks) > 0 {
		for _, d := range v.Disks {
			i := slices.IndexFunc(found, func(f libvirtvm.Disk) bool { return f.Target == d.Name })
			if i < 0 {
				return nil, fmt.Errorf("domain %q has no disk %q (it has %s)", v.Domain, d.Name, targets(found))
			}
			node := d.Node
			if node == "" {
				node = found[i].Node
			}
			out = append(out, livecut.Disk{Name: d.Name, Node: node, BlockSize: int(d.BlockSize)})
		}
		return out, nil
	}
	for _, x := range v.ExcludeDisks {
		if !slices.ContainsFunc(found, func(f libvirtvm.Disk) bool { return f.Target == x }) {
			return nil, fmt.Errorf("exclude_disks: domain %q has no disk %q (it has %s)", v.Domain, x, targets(found))
		}
	}
	for _, f := range found {
		if slices.Contains(v.ExcludeDisks, f.Target) || f.ReadOnly {
			continue
		}
		out = append(out, livecut.Disk{Name: f.Target, Node: f.Node})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("domain %q has no writable disk left to protect", v.Domain)
	}
	return out, nil
}

func targets(ds []libvirtvm.Disk) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Target)
	}
	return fmt.Sprint(s)
}
