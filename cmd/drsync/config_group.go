package main

import (
	"errors"
	"fmt"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/tlsid"
)

// GroupConfig is one [[group]] entry: VMs cut at one instant, on this
// host or others. Every sender protecting a member lists the whole group;
// on a group spanning hosts one sender leads (listen) and the others
// follow it (leader), each pinning the others' identities (peers).
type GroupConfig struct {
	Name string   `toml:"name"`
	VMs  []string `toml:"vms"`
	// RPO is the group's recovery point target.
	RPO         Duration `toml:"rpo"`
	Listen      string   `toml:"listen"`
	Leader      string   `toml:"leader"`
	Peers       []string `toml:"peers"`
	StepTimeout Duration `toml:"step_timeout"`

	opts groupcut.Options
}

// validateGroups checks the [[group]] entries against the [[vm]] ones: a
// VM belongs to at most one group, and a local member is a live VM whose
// epochs the group paces.
func (c *SenderConfig) validateGroups() error {
	f := c.file
	local := map[string]*VMConfig{}
	for i := range c.VMs {
		local[c.VMs[i].Name] = &c.VMs[i]
	}
	inGroup := map[string]string{}
	names := map[string]bool{}
	for i := range c.Groups {
		g := &c.Groups[i]
		key := fmt.Sprintf("group[%d]", i)
		if names[g.Name] {
			return &configError{f, key + ".name", fmt.Errorf("group %q is listed twice", g.Name)}
		}
		names[g.Name] = true
		o := groupcut.Options{Name: g.Name, Members: g.VMs, RPO: g.RPO.D(), Listen: g.Listen, Leader: g.Leader, StepTimeout: g.StepTimeout.D()}
		for _, vm := range g.VMs {
			if other, ok := inGroup[vm]; ok && other != g.Name {
				return &configError{f, key + ".vms", fmt.Errorf("VM %q is already in group %q: a VM belongs to at most one group", vm, other)}
			}
			inGroup[vm] = g.Name
			v := local[vm]
			if v == nil {
				continue
			}
			o.Local = append(o.Local, vm)
			if !v.live() {
				return &configError{f, key + ".vms", fmt.Errorf("VM %q has no qmp: only running guests are cut together", vm)}
			}
			if v.Mode != modeContinuous || v.RPOTarget != 0 {
				return &configError{f, fmt.Sprintf("vm %q: rpo_target", vm), fmt.Errorf("VM %q is in group %q, whose rpo paces its epochs: leave out its own schedule and rpo_target", vm, g.Name)}
			}
		}
		for j, fp := range g.Peers {
			n, err := tlsid.ParseFingerprint(fp)
			if err != nil {
				return &configError{f, fmt.Sprintf("%s.peers[%d]", key, j), err}
			}
			o.Peers = append(o.Peers, n)
		}
		for _, a := range []struct{ k, v string }{{"listen", g.Listen}, {"leader", g.Leader}} {
			if a.v == "" {
				continue
			}
			if err := checkHostPort(a.v, a.k == "listen"); err != nil {
				return &configError{f, key + "." + a.k, err}
			}
		}
		if err := o.Validate(); err != nil {
			var oe *groupcut.OptionError
			if errors.As(err, &oe) {
				return &configError{f, key + "." + oe.Key, oe.Err}
			}
			return &configError{f, key, err}
		}
		g.opts = o
	}
	return nil
}

// groupOptions are the validated groups whose members are among vms
// (drsync send --vm NAME sends one VM on its own: its group cuts without
// it would never complete, so it is cut alone, like a VM of no group),
// for the agent. Final (switch-back) epochs are cut per VM.
func (c *SenderConfig) groupOptions(vms []*VMConfig, final bool) []groupcut.Options {
	if final {
		return nil
	}
	sel := map[string]bool{}
	for _, v := range vms {
		sel[v.Name] = true
	}
	var gs []groupcut.Options
	for _, g := range c.Groups {
		all := true
		for _, m := range g.opts.Local {
			all = all && sel[m]
		}
		if all {
			gs = append(gs, g.opts)
		}
	}
	return gs
}
