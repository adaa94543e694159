package main

import (
	"errors"
	"fmt"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/transport"
)

// GroupConfig is one [[group]] entry (see groupcut.Options and
// testdata/configs/sender-group.toml).
type GroupConfig struct {
	Name        string   `toml:"name"`
	VMs         []string `toml:"vms"`
	RPO         Duration `toml:"rpo"`
	Listen      string   `toml:"listen"`
	Leader      string   `toml:"leader"`
	Peers       []string `toml:"peers"`
	StepTimeout Duration `toml:"step_timeout"`
}

// validateGroups checks the [[group]] entries (against the [[vm]] ones)
// and makes c.groups, the groups' options.
func (c *SenderConfig) validateGroups() error {
	vms := map[string]groupcut.LocalVM{}
	for _, v := range c.vms {
		vms[v.Name] = groupcut.LocalVM{Live: v.Live(), OwnPacing: v.Mode != agent.Continuous || v.RPOTarget != 0}
	}
	c.groups = nil
	for i, g := range c.Groups {
		for _, a := range []struct{ k, v string }{{"listen", g.Listen}, {"leader", g.Leader}} {
			if err := transport.CheckAddress(a.v, a.k == "listen"); a.v != "" && err != nil {
				return &configError{c.file, fmt.Sprintf("group[%d].%s", i, a.k), err}
			}
		}
		c.groups = append(c.groups, groupcut.Options{Name: g.Name, Members: g.VMs, RPO: g.RPO.D(), Listen: g.Listen, Leader: g.Leader, Peers: g.Peers, StepTimeout: g.StepTimeout.D()})
	}
	var oe *groupcut.OptionError
	if err := groupcut.ValidateGroups(c.groups, vms); errors.As(err, &oe) && oe.VM != "" {
		return &configError{c.file, fmt.Sprintf("vm %q: %s", oe.VM, oe.Key), oe.Err}
	} else if oe != nil {
		return &configError{c.file, fmt.Sprintf("group[%d].%s", oe.Index, oe.Key), oe.Err}
	}
	return nil
}
