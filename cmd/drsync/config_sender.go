package main

import (
	"errors"
	"path/filepath"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
)

// SenderConfig is the sender's configuration file.
type SenderConfig struct {
	// Metrics, if set, is the host:port of a Prometheus endpoint (/metrics).
	Metrics  string             `toml:"metrics"`
	Identity IdentityConfig     `toml:"identity"`
	Receiver ReceiverPeerConfig `toml:"receiver"`
	State    StateConfig        `toml:"state"`
	VMs      []VMConfig         `toml:"vm"`
	Groups   []GroupConfig      `toml:"group"`
	groups   []groupcut.Options // validated Groups (config_group.go)

	file string             // where it was loaded from, for messages
	vms  []agent.VMSettings // VMs, validated, with defaults
	peer agent.PeerSettings // Receiver, validated
}

// ReceiverPeerConfig is the [receiver] table: where to send and how to
// recognise the receiver's certificate.
type ReceiverPeerConfig struct {
	Address      string   `toml:"address"`
	Fingerprints []string `toml:"fingerprints"`
	CA           string   `toml:"ca"`
	// IdleTimeout declares the connection dead after this long without
	// hearing from the receiver; the sender then reconnects and resumes.
	IdleTimeout Duration `toml:"idle_timeout"`
	// BandwidthCap caps what this sender writes to the receiver, all VMs
	// together (0: no cap). Adaptive epochs plan with it.
	BandwidthCap Rate `toml:"bandwidth_cap"`
	// Connections stripes each VM's stream over this many QUIC
	// connections, each with its own congestion control, to fill a long,
	// lossy link; "auto" (the default) uses as many, up to 8, as raise
	// goodput.
	Connections agent.ConnectionCount `toml:"connections"`
}

// StateConfig is the [state] table.
type StateConfig struct {
	// Dir holds, per VM, what the sender knows the replica holds, and the
	// sender's status file.
	Dir string `toml:"dir"`
}

// VMConfig is one [[vm]] entry (agent.VMSettings says what each key does).
type VMConfig struct {
	Name              string       `toml:"name"`
	Mode              string       `toml:"mode"`
	MinInterval       Duration     `toml:"min_interval"`
	RPOTarget         Duration     `toml:"rpo_target"`
	MaxInterval       Duration     `toml:"max_interval"`
	Schedule          Duration     `toml:"schedule"`
	Compression       string       `toml:"compression"`
	DeviceState       string       `toml:"device_state"`
	Disks             []DiskConfig `toml:"disk"`
	RAM               []RAMConfig  `toml:"ram"`
	QMP               string       `toml:"qmp"`
	libvirtvm.Config               // or a libvirt domain: libvirt, domain, exclude_disks
	WorkDir           string       `toml:"work_dir"`
	AllowUntestedQEMU bool         `toml:"allow_untested_qemu"`
	Dedup             *bool        `toml:"dedup"`
	RAMCapture        string       `toml:"ram_capture"` // auto, tracked or full
}

// DiskConfig is one [[vm.disk]] entry.
type DiskConfig struct {
	Name      string `toml:"name"`
	Path      string `toml:"path"`
	Node      string `toml:"node"` // QEMU block node of a live VM's disk
	Format    string `toml:"format"`
	BlockSize Size   `toml:"block_size"`
}

// RAMConfig is one [[vm.ram]] entry.
type RAMConfig struct {
	Name string `toml:"name"`
	Path string `toml:"path"`
}

// loadSenderConfig reads, resolves and validates a sender configuration.
func loadSenderConfig(path string) (*SenderConfig, error) {
	var c SenderConfig
	dir, err := decodeStrict(path, &c)
	if err != nil {
		return nil, err
	}
	c.file = path
	c.Identity.resolve(dir)
	c.Receiver.CA = resolvePath(dir, c.Receiver.CA)
	c.State.Dir = resolvePath(dir, c.State.Dir)
	if err := c.Identity.validate(c.file); err != nil {
		return nil, err
	}
	c.peer = agent.PeerSettings{Address: c.Receiver.Address, Fingerprints: c.Receiver.Fingerprints, HasCA: c.Receiver.CA != "", IdleTimeout: c.Receiver.IdleTimeout.D(), Connections: int(c.Receiver.Connections)}
	if err := c.peer.Validate(); err != nil {
		return nil, configErr(c.file, err)
	}
	if c.State.Dir == "" {
		return nil, &configError{c.file, "state.dir", errors.New("missing: a directory where the sender records what each replica holds")}
	}
	for _, v := range c.VMs {
		s := agent.VMSettings{Name: v.Name, Mode: agent.Mode(v.Mode), MinInterval: v.MinInterval.D(), RPOTarget: v.RPOTarget.D(),
			MaxInterval: v.MaxInterval.D(), Schedule: v.Schedule.D(), Compression: v.Compression, DeviceState: resolvePath(dir, v.DeviceState),
			QMP: resolvePath(dir, v.QMP), WorkDir: resolvePath(dir, v.WorkDir), AllowUntestedQEMU: v.AllowUntestedQEMU, Dedup: v.Dedup,
			Libvirt: v.Config, RAMCapture: v.RAMCapture}
		for _, d := range v.Disks {
			s.Disks = append(s.Disks, agent.DiskSettings{Name: d.Name, Path: resolvePath(dir, d.Path), Node: d.Node, Format: d.Format, BlockSize: uint64(d.BlockSize)})
		}
		for _, r := range v.RAM {
			s.RAM = append(s.RAM, sender.FileRAM{Name: r.Name, Path: resolvePath(dir, r.Path)})
		}
		c.vms = append(c.vms, s)
	}
	if err := agent.ValidateVMs(c.vms); err != nil {
		return nil, configErr(c.file, err)
	}
	if err := c.validateGroups(); err != nil {
		return nil, err
	}
	return &c, nil
}

// stateDir is the VM's directory under [state] dir.
func (c *SenderConfig) stateDir(vm string) string { return filepath.Join(c.State.Dir, vm) }

// transportOptions are the connection's liveness settings.
func (c *SenderConfig) transportOptions() transport.Options {
	return transport.Options{IdleTimeout: c.Receiver.IdleTimeout.D()}
}

// trust loads what the sender accepts from the receiver.
func (c *SenderConfig) trust() (tlsid.Trust, error) {
	t := tlsid.Trust{Fingerprints: c.peer.Fingerprints}
	if c.Receiver.CA != "" {
		if err := t.LoadCAFile(c.Receiver.CA); err != nil {
			return t, &configError{c.file, "receiver.ca", err}
		}
	}
	if err := t.Validate(); err != nil {
		return t, &configError{c.file, "receiver", err}
	}
	return t, nil
}
