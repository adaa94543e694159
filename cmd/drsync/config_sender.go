package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Sender defaults. Continuous replication restarts at most this often, so a
// VM whose scan is quick does not keep the source disks and the link busy
// comparing blocks that did not change.
const (
	defaultMinInterval = 10 * time.Second
	defaultCompression = "fast"
	defaultDiskFormat  = diskmirror.FormatAuto
	minScheduleGap     = time.Second

	modeContinuous = string(agent.Continuous)
	modeScheduled  = string(agent.Scheduled)

	compressionAuto = "auto"
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

	file string // where it was loaded from, for messages
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
	// lossy link (default 1).
	Connections int `toml:"connections"`
}

// StateConfig is the [state] table.
type StateConfig struct {
	// Dir holds, per VM, what the sender knows the replica holds, and the
	// sender's status file.
	Dir string `toml:"dir"`
}

// VMConfig is one [[vm]] entry.
type VMConfig struct {
	Name        string   `toml:"name"`
	Mode        string   `toml:"mode"`
	MinInterval Duration `toml:"min_interval"`
	// RPOTarget turns on adaptive epochs (continuous mode): each epoch's
	// length, between min_interval and max_interval, and with compression
	// = "auto" its level, are chosen from the measured goodput, dirty rate
	// and dedup so that the replica's lag stays below this.
	RPOTarget   Duration     `toml:"rpo_target"`
	MaxInterval Duration     `toml:"max_interval"`
	Schedule    Duration     `toml:"schedule"`
	Compression string       `toml:"compression"`
	DeviceState string       `toml:"device_state"`
	Disks       []DiskConfig `toml:"disk"`
	RAM         []RAMConfig  `toml:"ram"`
	// QMP, when set, makes this a running QEMU guest: each epoch cuts its
	// memory and disks at one instant through this monitor socket, and the
	// disks are named by QEMU block node instead of path.
	QMP string `toml:"qmp"`
	// WorkDir holds a live VM's fleecing overlays and sockets; default
	// <state dir>/<vm>/live.
	WorkDir           string `toml:"work_dir"`
	AllowUntestedQEMU bool   `toml:"allow_untested_qemu"`
	// Dedup sends memory pages that equal a disk page of the same cut
	// (the guest's page cache) as references (default true).
	Dedup *bool `toml:"dedup"`

	compression wire.Compression
}

// dedup reports whether memory pages may travel as references.
func (v *VMConfig) dedup() bool { return v.Dedup == nil || *v.Dedup }

// live reports whether the VM is a running QEMU guest.
func (v *VMConfig) live() bool { return v.QMP != "" }

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
	c.resolve(dir)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// resolve makes every path absolute against dir.
func (c *SenderConfig) resolve(dir string) {
	c.Identity.resolve(dir)
	c.Receiver.CA = resolvePath(dir, c.Receiver.CA)
	c.State.Dir = resolvePath(dir, c.State.Dir)
	for i := range c.VMs {
		v := &c.VMs[i]
		v.DeviceState = resolvePath(dir, v.DeviceState)
		v.QMP = resolvePath(dir, v.QMP)
		v.WorkDir = resolvePath(dir, v.WorkDir)
		for j := range v.Disks {
			v.Disks[j].Path = resolvePath(dir, v.Disks[j].Path)
		}
		for j := range v.RAM {
			v.RAM[j].Path = resolvePath(dir, v.RAM[j].Path)
		}
	}
}

// Validate checks everything that can be checked without touching files,
// and fills in defaults.
func (c *SenderConfig) Validate() error {
	f := c.file
	if err := c.Identity.validate(f); err != nil {
		return err
	}
	r := &c.Receiver
	if r.Address == "" {
		return &configError{f, "receiver.address", errors.New("missing: the receiver's host:port")}
	}
	if err := checkHostPort(r.Address, false); err != nil {
		return &configError{f, "receiver.address", err}
	}
	if len(r.Fingerprints) == 0 && r.CA == "" {
		return &configError{f, "receiver", errors.New("no way to recognise the receiver: set fingerprints = [\"sha256:...\"] (printed by drsync keygen on the receiver) or ca = \"ca.pem\"")}
	}
	for i, fp := range r.Fingerprints {
		n, err := tlsid.ParseFingerprint(fp)
		if err != nil {
			return &configError{f, fmt.Sprintf("receiver.fingerprints[%d]", i), err}
		}
		r.Fingerprints[i] = n
	}
	if err := checkIdleTimeout(r.IdleTimeout); err != nil {
		return &configError{f, "receiver.idle_timeout", err}
	}
	if r.Connections == 0 {
		r.Connections = 1
	}
	if r.Connections < 1 || r.Connections > stripe.MaxCount {
		return &configError{f, "receiver.connections", fmt.Errorf("%d: want 1 to %d QUIC connections per VM", r.Connections, stripe.MaxCount)}
	}
	if c.State.Dir == "" {
		return &configError{f, "state.dir", errors.New("missing: a directory where the sender records what each replica holds")}
	}
	if len(c.VMs) == 0 {
		return &configError{f, "vm", errors.New("no [[vm]] entries: nothing to replicate")}
	}
	seen := map[string]bool{}
	for i := range c.VMs {
		v := &c.VMs[i]
		if err := v.validate(f, i); err != nil {
			return err
		}
		if seen[v.Name] {
			return &configError{f, fmt.Sprintf("vm[%d].name", i), fmt.Errorf("VM %q is listed twice", v.Name)}
		}
		seen[v.Name] = true
	}
	return c.validateGroups()
}

func (v *VMConfig) validate(file string, i int) error {
	key := fmt.Sprintf("vm[%d]", i)
	if err := vmspec.ValidVMName(v.Name); err != nil {
		return &configError{file, key + ".name", fmt.Errorf("%w (letters, digits, '.', '_' and '-'; it names the replica directory)", err)}
	}
	key = fmt.Sprintf("vm %q", v.Name)
	bad := func(k string, format string, a ...any) error {
		return &configError{file, key + ": " + k, fmt.Errorf(format, a...)}
	}
	if v.Mode == "" {
		v.Mode = modeContinuous
		if v.Schedule != 0 {
			v.Mode = modeScheduled
		}
	}
	switch v.Mode {
	case modeContinuous:
		if v.Schedule != 0 {
			return bad("schedule", "only used with mode = %q; use min_interval to space continuous epochs", modeScheduled)
		}
		if v.MinInterval == 0 && v.RPOTarget == 0 {
			v.MinInterval = Duration(defaultMinInterval)
		}
		if v.MinInterval != 0 && v.MinInterval.D() < minScheduleGap {
			return bad("min_interval", "%s is shorter than %s", v.MinInterval, minScheduleGap)
		}
		if v.MaxInterval != 0 && v.RPOTarget == 0 {
			return bad("max_interval", "only used with rpo_target (adaptive epochs)")
		}

	case modeScheduled:
		if v.Schedule == 0 {
			return bad("schedule", "missing: mode = %q needs an interval such as \"15m\"", modeScheduled)
		}
		if v.Schedule.D() < minScheduleGap {
			return bad("schedule", "%s is shorter than %s", v.Schedule, minScheduleGap)
		}
		if v.MinInterval != 0 {
			return bad("min_interval", "only used with mode = %q; scheduled epochs start every schedule interval", modeContinuous)
		}
		if v.RPOTarget != 0 || v.MaxInterval != 0 {
			return bad("rpo_target", "adaptive epochs need mode = %q; a schedule fixes the interval", modeContinuous)
		}
	default:
		return bad("mode", "%q is not a mode (want %q or %q)", v.Mode, modeContinuous, modeScheduled)
	}
	if v.Compression == "" {
		v.Compression = defaultCompression
	}
	if v.Compression == compressionAuto {
		if v.RPOTarget == 0 {
			return bad("compression", "%q lets adaptive epochs choose the level; it needs rpo_target", compressionAuto)
		}
		v.compression = wire.CompressFast // until the first choice
	} else if err := v.compression.UnmarshalText([]byte(v.Compression)); err != nil {
		return bad("compression", "%q is not a level (want none, fast, default, better or auto)", v.Compression)
	}
	if v.adaptive() {
		if _, err := v.pacing().Controller(0); err != nil {
			return bad("rpo_target", "%v", err)
		}
	}
	if v.live() {
		return v.validateLive(bad)
	}
	if v.WorkDir != "" || v.AllowUntestedQEMU {
		return bad("qmp", "missing: work_dir and allow_untested_qemu only apply to a live VM (qmp = \"/path/to/qmp.sock\")")
	}
	if len(v.Disks)+len(v.RAM) == 0 {
		return bad("disk", "no [[vm.disk]] and no [[vm.ram]]: nothing to replicate")
	}
	names := map[string]bool{}
	for j := range v.Disks {
		d := &v.Disks[j]
		k, err := checkTargetName("disk", j, d.Name, names, bad)
		if err != nil {
			return err
		}
		if d.Node != "" {
			return bad(k+".node", "only for a live VM (set qmp); an image file is named by path")
		}
		if d.Path == "" {
			return bad(k+".path", "missing: the disk image file")
		}
		if d.Format == "" {
			d.Format = defaultDiskFormat
		}
		switch d.Format {
		case diskmirror.FormatRaw, diskmirror.FormatQcow2, diskmirror.FormatAuto:
		default:
			return bad(k+".format", "%q is not a format (want raw, qcow2 or auto)", d.Format)
		}
		if d.BlockSize == 0 {
			d.BlockSize = sender.DefaultDiskBlock
		}
		if bs := d.BlockSize; bs < 4<<10 || bs > wire.MaxData || bs&(bs-1) != 0 {
			return bad(k+".block_size", "%s: want a power of two from 4KiB to 4MiB", bs)
		}
	}
	for j := range v.RAM {
		r := &v.RAM[j]
		k, err := checkTargetName("ram", j, r.Name, names, bad)
		if err != nil {
			return err
		}
		if r.Path == "" {
			return bad(k+".path", "missing: the guest RAM file")
		}
	}
	return nil
}

// checkTargetName checks the name of entry j of a [[vm.disk]] or [[vm.ram]]
// list and that no other entry of its kind has it; it returns the key that
// later messages about the entry use.
func checkTargetName(kind string, j int, name string, seen map[string]bool, bad func(k, format string, a ...any) error) (string, error) {
	if err := vmspec.ValidTargetName(name); err != nil {
		return "", bad(fmt.Sprintf("%s[%d].name", kind, j), "%v", err)
	}
	k := fmt.Sprintf("%s %q", kind, name)
	if seen[kind+"/"+name] {
		return "", bad(k, "listed twice")
	}
	seen[kind+"/"+name] = true
	return k, nil
}

// validateLive checks a running QEMU guest's entry: disks by node, RAM and
// device state from the guest itself.
func (v *VMConfig) validateLive(bad func(k, format string, a ...any) error) error {
	if len(v.RAM) > 0 {
		return bad("ram", "a live VM's RAM comes from QEMU itself; remove the [[vm.ram]] entries")
	}
	if v.DeviceState != "" {
		return bad("device_state", "a live VM's device state comes from QEMU itself; remove device_state")
	}
	names, nodes := map[string]bool{}, map[string]bool{}
	for j := range v.Disks {
		d := &v.Disks[j]
		k, err := checkTargetName("disk", j, d.Name, names, bad)
		if err != nil {
			return err
		}
		if d.Path != "" || d.Format != "" {
			return bad(k+".path", "a live VM's disk is named by its QEMU block node (node = \"disk0\"), not by path or format")
		}
		if d.Node == "" {
			return bad(k+".node", "missing: the QEMU block node the guest writes through (query-named-block-nodes lists them)")
		}
		if nodes[d.Node] {
			return bad(k+".node", "node %q is listed twice", d.Node)
		}
		nodes[d.Node] = true
		if d.BlockSize == 0 {
			d.BlockSize = livecut.DefaultBlockSize
		}
		if bs := d.BlockSize; bs < 64<<10 || bs > wire.MaxData || bs&(bs-1) != 0 {
			return bad(k+".block_size", "%s: want a power of two from 64KiB to 4MiB", bs)
		}
	}
	return nil
}

// liveOptions converts a live VM's entry to the live source's options.
func (v *VMConfig) liveOptions(stateDir string, now func() time.Time) livecut.Options {
	o := livecut.Options{QMPSocket: v.QMP, WorkDir: v.WorkDir, Now: now, AllowUntestedQEMU: v.AllowUntestedQEMU}
	if o.WorkDir == "" {
		o.WorkDir = filepath.Join(stateDir, "live")
	}
	for _, d := range v.Disks {
		o.Disks = append(o.Disks, livecut.Disk{Name: d.Name, Node: d.Node, BlockSize: int(d.BlockSize)})
	}
	return o
}

// adaptive reports whether epoch lengths follow an RPO target.
func (v *VMConfig) adaptive() bool { return v.RPOTarget != 0 }

// pacing converts the VM's pacing keys to the agent's options.
func (v *VMConfig) pacing() agent.Pacing {
	return agent.Pacing{Mode: agent.Mode(v.Mode), MinInterval: v.MinInterval.D(), Schedule: v.Schedule.D(), RPOTarget: v.RPOTarget.D(),
		MaxInterval: v.MaxInterval.D(), Compression: v.compression, AutoCompression: v.Compression == compressionAuto}
}

// stateDir is the VM's directory under [state] dir.
func (c *SenderConfig) stateDir(vm string) string { return filepath.Join(c.State.Dir, vm) }

// fileSourceOptions converts the VM's images to the sender's source options.
func (v *VMConfig) fileSourceOptions(now func() time.Time) sender.FileSourceOptions {
	o := sender.FileSourceOptions{DeviceState: v.DeviceState, Now: now}
	for _, d := range v.Disks {
		o.Disks = append(o.Disks, sender.FileDisk{Name: d.Name, Path: d.Path, Format: d.Format, BlockSize: int(d.BlockSize)})
	}
	for _, r := range v.RAM {
		o.RAM = append(o.RAM, sender.FileRAM{Name: r.Name, Path: r.Path})
	}
	return o
}

// transportOptions are the connection's liveness settings.
func (c *SenderConfig) transportOptions() transport.Options {
	return transport.Options{IdleTimeout: c.Receiver.IdleTimeout.D()}
}

// trust loads what the sender accepts from the receiver.
func (c *SenderConfig) trust() (tlsid.Trust, error) {
	t := tlsid.Trust{Fingerprints: c.Receiver.Fingerprints}
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
