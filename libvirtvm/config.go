package libvirtvm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
)

// Config are the keys of a sender's [[vm]] entry that make it a libvirt
// domain, whose monitor drsync reaches through libvirt instead of a QMP
// socket of its own:
//
//	libvirt = "qemu:///system"
//	domain = "web-1"              # name or UUID
//	exclude_disks = ["vdb"]       # disks left out (by target dev)
//
// [[vm.disk]] entries, if any, choose the disks instead (name = target
// dev, node optional); without them every writable disk is protected.
type Config struct {
	Libvirt      string   `toml:"libvirt"`
	Domain       string   `toml:"domain"`
	ExcludeDisks []string `toml:"exclude_disks"`
}

// Enabled reports whether the entry is a libvirt domain.
func (c Config) Enabled() bool { return c.Libvirt != "" }

// Check reports what is wrong with the keys, and the key at fault. qmp is
// the entry's QMP socket key, listed how many [[vm.disk]] it has.
func (c Config) Check(qmp string, listed int) (key string, err error) {
	switch {
	case !c.Enabled() && (c.Domain != "" || len(c.ExcludeDisks) > 0):
		return "libvirt", errors.New(`missing: domain and exclude_disks apply to a libvirt domain (libvirt = "qemu:///system")`)
	case !c.Enabled():
		return "", nil
	case qmp != "":
		return "qmp", errors.New("a libvirt domain's monitor is reached through libvirt; remove qmp or libvirt")
	case c.Domain == "":
		return "domain", errors.New("missing: the libvirt domain's name or UUID")
	case len(c.ExcludeDisks) > 0 && listed > 0:
		return "exclude_disks", errors.New("list the disks to protect ([[vm.disk]]) or exclude some, not both")
	}
	if _, _, ok := ParseAddress(Address(c.Libvirt, c.Domain)); !ok {
		return "libvirt", fmt.Errorf("%q with domain %q cannot be addressed (no '#' in the URI)", c.Libvirt, c.Domain)
	}
	return "", nil
}

// Apply points a live source's options at the domain's monitor.
func (c Config) Apply(o *livecut.Options) {
	if c.Enabled() {
		o.QMPSocket = Address(c.Libvirt, c.Domain)
		o.Dial = DialMonitor
	}
}

// ResolveDisks replaces o.Disks (those the operator listed, nodes
// optional) with the disks to protect, their nodes found in the running
// domain. The domain must run.
func (c Config) ResolveDisks(o *livecut.Options) error {
	if !c.Enabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := Dial(ctx, c.Libvirt, c.Domain, qmp.Options{})
	if err != nil {
		return err
	}
	defer m.Close()
	found, err := m.Disks(ctx)
	if err != nil {
		return err
	}
	disks, err := c.Select(found, o.Disks)
	if err != nil {
		return err
	}
	o.Disks = disks
	return nil
}

// Select chooses the disks to protect among those the domain has: the
// listed ones (their nodes found unless given), or else every writable
// disk but the excluded ones.
func (c Config) Select(found []Disk, listed []livecut.Disk) ([]livecut.Disk, error) {
	var out []livecut.Disk
	if len(listed) > 0 {
		for _, d := range listed {
			i := slices.IndexFunc(found, func(f Disk) bool { return f.Target == d.Name })
			if i < 0 {
				return nil, fmt.Errorf("domain %q has no disk %q (it has %s)", c.Domain, d.Name, targets(found))
			}
			if d.Node == "" {
				d.Node = found[i].Node
			}
			out = append(out, d)
		}
		return out, nil
	}
	for _, x := range c.ExcludeDisks {
		if !slices.ContainsFunc(found, func(f Disk) bool { return f.Target == x }) {
			return nil, fmt.Errorf("exclude_disks: domain %q has no disk %q (it has %s)", c.Domain, x, targets(found))
		}
	}
	for _, f := range found {
		if !slices.Contains(c.ExcludeDisks, f.Target) && !f.ReadOnly {
			out = append(out, livecut.Disk{Name: f.Target, Node: f.Node})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("domain %q has no writable disk left to protect", c.Domain)
	}
	return out, nil
}

func targets(ds []Disk) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Target)
	}
	return fmt.Sprint(s)
}
