package main

import (
	"errors"
	"path/filepath"

	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/runbook"
	"github.com/drsync/drsync/takeover"
)

// RunbookConfig is a failover runbook file (drsync failover --runbook).
type RunbookConfig struct {
	Name string `toml:"name"`
	// ReceiverConfig is the DR site's receiver configuration: where the
	// replicas are, and which VMs this site holds replicas for.
	ReceiverConfig string         `toml:"receiver_config"`
	WorkDir        string         `toml:"work_dir"`
	Log            string         `toml:"log"`
	Hooks          []RunbookHook  `toml:"hook"`
	Groups         []RunbookGroup `toml:"group"`
	VMs            []RunbookVM    `toml:"vm"`

	file string
}

// RunbookHook is one [[hook]].
type RunbookHook struct {
	Name    string   `toml:"name"`
	When    string   `toml:"when"`
	Run     []string `toml:"run"`
	Timeout Duration `toml:"timeout"`
}

// RunbookGroup is one [[group]].
type RunbookGroup struct {
	Name string   `toml:"name"`
	VMs  []string `toml:"vms"`
}

// RunbookVM is one [[vm]]: how the VM runs at the DR site.
type RunbookVM struct {
	Name    string `toml:"name"`
	QEMU    string `toml:"qemu"`
	Machine string `toml:"machine"`
	CPUs    int    `toml:"cpus"`
	Accel   string `toml:"accel"`
	// NICs are the network options (-netdev/-device pairs) at the DR site.
	NICs []string `toml:"nics"`
	// Args are the other QEMU options: devices in the same order as at
	// the protected site, firmware, kernel, serial console.
	Args            []string           `toml:"args"`
	MainRAM         string             `toml:"main_ram"`
	Disks           []RunbookDisk      `toml:"disk"`
	Checks          []RunbookCheckConf `toml:"check"`
	runbook.Libvirt                    // or a libvirt domain: libvirt, domain, [vm.network]
}

// RunbookDisk maps a replica disk to the VM's block node.
type RunbookDisk struct {
	Replica string `toml:"replica"`
	Node    string `toml:"node"`
}

// RunbookCheckConf is one [[vm.check]].
type RunbookCheckConf struct {
	Kind    string   `toml:"kind"`
	Match   string   `toml:"match"`
	File    string   `toml:"file"`
	Address string   `toml:"address"`
	Timeout Duration `toml:"timeout"`
}

// loadRunbook reads a runbook and the receiver configuration it names, and
// returns the validated plan and its run log path.
func loadRunbook(path string) (*runbook.Runbook, string, error) {
	var c RunbookConfig
	dir, err := decodeStrict(path, &c)
	if err != nil {
		return nil, "", err
	}
	c.file = path
	if c.ReceiverConfig == "" {
		return nil, "", &configError{path, "receiver_config", errors.New("missing: the DR site's receiver configuration (where the replicas are)")}
	}
	rc, err := loadReceiverConfig(resolvePath(dir, c.ReceiverConfig))
	if err != nil {
		return nil, "", err
	}
	if c.WorkDir == "" {
		return nil, "", &configError{path, "work_dir", errors.New("missing: a directory for the VMs' disk overlays and sockets")}
	}
	rb := &runbook.Runbook{Name: c.Name, Replicas: rc.Storage.Dir, WorkDir: resolvePath(dir, c.WorkDir), Authorized: rc.vmNames(), KeepPoints: rc.Storage.KeepPoints}
	if b := rc.Storage.Backend; b.Kind == "rbd" { // the receiver's replicas are in Ceph
		rb.RBD = &rbdstore.Config{Pool: b.Pool, CephConf: b.CephConf, Client: b.Client}
	}
	logPath := resolvePath(dir, c.Log)
	if logPath == "" {
		logPath = filepath.Join(rb.WorkDir, "run.log")
	}
	for _, h := range c.Hooks {
		rb.Hooks = append(rb.Hooks, runbook.Hook{Name: h.Name, When: h.When, Command: h.Run, Timeout: h.Timeout.D()})
	}
	for _, g := range c.Groups {
		rb.Groups = append(rb.Groups, runbook.Group{Name: g.Name, VMs: g.VMs})
	}
	for _, v := range c.VMs {
		vm := runbook.VM{Name: v.Name, QEMU: v.QEMU, MainRAM: v.MainRAM, NICs: v.NICs, Args: runbook.QEMUArgs(v.Accel, v.Machine, v.CPUs, v.Args), Libvirt: v.Libvirt}
		for _, d := range v.Disks {
			vm.Disks = append(vm.Disks, takeover.Disk{Target: d.Replica, Node: d.Node})
		}
		for _, ch := range v.Checks {
			vm.Checks = append(vm.Checks, runbook.Check{Kind: ch.Kind, Match: ch.Match, File: resolvePath(dir, ch.File), Address: ch.Address, Timeout: ch.Timeout.D()})
		}
		rb.VMs = append(rb.VMs, vm)
	}
	if err := rb.Validate(); err != nil {
		return nil, "", configErr(path, err)
	}
	return rb, logPath, nil
}
