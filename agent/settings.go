package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Settings defaults and bounds. Continuous replication restarts at most
// DefaultMinInterval often, so a VM whose scan is quick does not keep the
// source disks and the link busy comparing blocks that did not change.
const (
	DefaultMinInterval = 10 * time.Second
	DefaultCompression = "fast"
	// AutoCompression lets adaptive epochs choose the level.
	AutoCompression = "auto"
	// MinScheduleGap is the shortest schedule of scheduled epochs.
	MinScheduleGap = time.Second
	// MinEpochInterval is the shortest min_interval of continuous epochs:
	// a guest cut in O(dirty) (tracked RAM) can take several a second.
	MinEpochInterval = 100 * time.Millisecond
)

// PeerSettings say where a sender sends and how it recognises the
// receiver, as its configuration states them. Errors are *field.Error
// naming the setting.
type PeerSettings struct {
	Address      string
	Fingerprints []string
	HasCA        bool // a CA file is configured
	IdleTimeout  time.Duration
	Connections  int // 0: auto (see DialOptions)
}

// Validate checks p, normalises the fingerprints as tlsid prints them and
// fills in defaults.
func (p *PeerSettings) Validate() error {
	if p.Address == "" {
		return field.Errorf("receiver.address", "missing: the receiver's host:port")
	}
	if err := transport.CheckAddress(p.Address, false); err != nil {
		return field.Wrap("receiver.address", err)
	}
	if len(p.Fingerprints) == 0 && !p.HasCA {
		return field.Errorf("receiver", "no way to recognise the receiver: set fingerprints = [\"sha256:...\"] (printed by drsync keygen on the receiver) or ca = \"ca.pem\"")
	}
	for i, fp := range p.Fingerprints {
		n, err := tlsid.ParseFingerprint(fp)
		if err != nil {
			return field.Wrap(fmt.Sprintf("receiver.fingerprints[%d]", i), err)
		}
		p.Fingerprints[i] = n
	}
	if err := transport.CheckIdleTimeout(p.IdleTimeout); err != nil {
		return field.Wrap("receiver.idle_timeout", err)
	}
	if p.Connections < 0 || p.Connections > stripe.MaxCount {
		return field.Errorf("receiver.connections", "%d: want \"auto\" or 1 to %d QUIC connections per VM", p.Connections, stripe.MaxCount)
	}
	return nil
}

// ValidateVMs checks the VMs a sender protects (see VMSettings.Validate)
// and that no VM is listed twice.
func ValidateVMs(vms []VMSettings) error {
	if len(vms) == 0 {
		return field.Errorf("vm", "no [[vm]] entries: nothing to replicate")
	}
	seen := map[string]bool{}
	for i := range vms {
		if err := vms[i].Validate(i); err != nil {
			return err
		}
		if seen[vms[i].Name] {
			return field.Errorf(fmt.Sprintf("vm[%d].name", i), "VM %q is listed twice", vms[i].Name)
		}
		seen[vms[i].Name] = true
	}
	return nil
}

// VMSettings are one protected VM's settings as a sender's configuration
// states them: which images or which running guest, and how its epochs
// are paced. Validate checks them and fills in defaults; Options turns
// them into the agent's VM.
type VMSettings struct {
	Name        string
	Mode        Mode // "": Scheduled if Schedule is set, else Continuous
	MinInterval time.Duration
	RPOTarget   time.Duration
	MaxInterval time.Duration
	Schedule    time.Duration
	Compression string // a level, or AutoCompression; "": DefaultCompression
	DeviceState string
	Disks       []DiskSettings
	RAM         []sender.FileRAM
	// QMP, when set, makes this a running QEMU guest (package livecut).
	QMP string
	// Libvirt, when enabled, makes this a running libvirt domain whose
	// monitor is reached through libvirt instead of a QMP socket.
	Libvirt           libvirtvm.Config
	WorkDir           string // a live VM's; "": <state dir>/live
	AllowUntestedQEMU bool
	Dedup             *bool // nil: true
	// RAMCapture is how a live VM's cuts take its RAM: RAMCaptureAuto
	// (""), RAMCaptureTracked or RAMCaptureFull (see ramcapture.go).
	RAMCapture string

	compression wire.Compression
}

// DiskSettings are a disk: an image file (Path, Format) or, of a running
// guest, a QEMU block node (Node).
type DiskSettings struct {
	Name, Path, Node, Format string
	BlockSize                uint64 // 0: the source's default
}

// Live reports whether the VM is a running QEMU guest.
func (v *VMSettings) Live() bool { return v.QMP != "" || v.Libvirt.Enabled() }

// Validate checks v and fills in defaults. Errors are *field.Error naming
// the setting: "vm[i].name" for a bad name, else relative to the VM.
func (v *VMSettings) Validate(i int) error {
	if err := vmspec.ValidVMName(v.Name); err != nil {
		return field.Errorf(fmt.Sprintf("vm[%d].name", i), "%w (letters, digits, '.', '_' and '-'; it names the replica directory)", err)
	}
	if err := v.validate(); err != nil {
		return field.Under(fmt.Sprintf("vm %q", v.Name), ": ", err)
	}
	return nil
}

func (v *VMSettings) validate() error {
	if err := v.validatePacing(); err != nil {
		return err
	}
	if err := v.validateRAMCapture(); err != nil {
		return err
	}
	if k, err := v.Libvirt.Check(v.QMP, len(v.Disks)); err != nil {
		return field.Wrap(k, err)
	}
	if v.Live() {
		return v.validateLive()
	}
	if v.WorkDir != "" || v.AllowUntestedQEMU {
		return field.Errorf("qmp", "missing: work_dir and allow_untested_qemu only apply to a live VM (qmp = \"/path/to/qmp.sock\")")
	}
	if len(v.Disks)+len(v.RAM) == 0 {
		return field.Errorf("disk", "no [[vm.disk]] and no [[vm.ram]]: nothing to replicate")
	}
	names := map[string]bool{}
	for j := range v.Disks {
		d := &v.Disks[j]
		k, err := targetKey("disk", j, d.Name, names)
		if err != nil {
			return err
		}
		switch {
		case d.Node != "":
			return field.Errorf(k+".node", "only for a live VM (set qmp); an image file is named by path")
		case d.Path == "":
			return field.Errorf(k+".path", "missing: the disk image file")
		case d.Format == "":
			d.Format = diskmirror.FormatAuto
		}
		switch d.Format {
		case diskmirror.FormatRaw, diskmirror.FormatQcow2, diskmirror.FormatAuto:
		default:
			return field.Errorf(k+".format", "%q is not a format (want raw, qcow2 or auto)", d.Format)
		}
		if err := checkBlockSize(&d.BlockSize, sender.DefaultDiskBlock, 4<<10); err != nil {
			return field.Wrap(k+".block_size", err)
		}
	}
	for j, r := range v.RAM {
		k, err := targetKey("ram", j, r.Name, names)
		if err != nil {
			return err
		}
		if r.Path == "" {
			return field.Errorf(k+".path", "missing: the guest RAM file")
		}
	}
	return nil
}

// validatePacing checks when epochs start and how they are compressed.
func (v *VMSettings) validatePacing() error {
	if v.Mode == "" {
		v.Mode = Continuous
		if v.Schedule != 0 {
			v.Mode = Scheduled
		}
	}
	switch v.Mode {
	case Continuous:
		if v.Schedule != 0 {
			return field.Errorf("schedule", "only used with mode = %q; use min_interval to space continuous epochs", Scheduled)
		}
		if v.MinInterval == 0 && v.RPOTarget == 0 {
			v.MinInterval = DefaultMinInterval
		}
		if v.MinInterval != 0 && v.MinInterval < MinEpochInterval {
			return field.Errorf("min_interval", "%s is shorter than %s", v.MinInterval, MinEpochInterval)
		}
		if v.MaxInterval != 0 && v.RPOTarget == 0 {
			return field.Errorf("max_interval", "only used with rpo_target (adaptive epochs)")
		}
	case Scheduled:
		switch {
		case v.Schedule == 0:
			return field.Errorf("schedule", "missing: mode = %q needs an interval such as \"15m\"", Scheduled)
		case v.Schedule < MinScheduleGap:
			return field.Errorf("schedule", "%s is shorter than %s", v.Schedule, MinScheduleGap)
		case v.MinInterval != 0:
			return field.Errorf("min_interval", "only used with mode = %q; scheduled epochs start every schedule interval", Continuous)
		case v.RPOTarget != 0 || v.MaxInterval != 0:
			return field.Errorf("rpo_target", "adaptive epochs need mode = %q; a schedule fixes the interval", Continuous)
		}
	default:
		return field.Errorf("mode", "%q is not a mode (want %q or %q)", v.Mode, Continuous, Scheduled)
	}
	if v.Compression == "" {
		v.Compression = DefaultCompression
	}
	if v.Compression == AutoCompression {
		if v.RPOTarget == 0 {
			return field.Errorf("compression", "%q lets adaptive epochs choose the level; it needs rpo_target", AutoCompression)
		}
		v.compression = wire.CompressFast // until the first choice
	} else if err := v.compression.UnmarshalText([]byte(v.Compression)); err != nil {
		return field.Errorf("compression", "%q is not a level (want none, fast, default, better or auto)", v.Compression)
	}
	if p := v.Pacing(); p.Adaptive() {
		if _, err := p.Controller(0); err != nil {
			return field.Wrap("rpo_target", err)
		}
	}
	return nil
}

// validateLive checks a running QEMU guest: disks by node, RAM and device
// state from the guest itself.
func (v *VMSettings) validateLive() error {
	if len(v.RAM) > 0 {
		return field.Errorf("ram", "a live VM's RAM comes from QEMU itself; remove the [[vm.ram]] entries")
	}
	if v.DeviceState != "" {
		return field.Errorf("device_state", "a live VM's device state comes from QEMU itself; remove device_state")
	}
	names, nodes := map[string]bool{}, map[string]bool{}
	for j := range v.Disks {
		d := &v.Disks[j]
		k, err := targetKey("disk", j, d.Name, names)
		if err != nil {
			return err
		}
		switch {
		case d.Path != "" || d.Format != "":
			return field.Errorf(k+".path", "a live VM's disk is named by its QEMU block node (node = \"disk0\"), not by path or format")
		case d.Node == "" && !v.Libvirt.Enabled():
			return field.Errorf(k+".node", "missing: the QEMU block node the guest writes through (query-named-block-nodes lists them)")
		case d.Node != "" && nodes[d.Node]:
			return field.Errorf(k+".node", "node %q is listed twice", d.Node)
		}
		nodes[d.Node] = true
		// QEMU's dirty bitmaps track no finer than 64 KiB here.
		if err := checkBlockSize(&d.BlockSize, livecut.DefaultBlockSize, 64<<10); err != nil {
			return field.Wrap(k+".block_size", err)
		}
	}
	return nil
}

// checkBlockSize fills in def for 0 and checks that *bs is a power of two
// from least to wire.MaxData.
func checkBlockSize(bs *uint64, def int, least uint64) error {
	if *bs == 0 {
		*bs = uint64(def)
	}
	if b := *bs; b < least || b > wire.MaxData || b&(b-1) != 0 {
		return fmt.Errorf("%s: want a power of two from %dKiB to %dMiB", units.FormatBytes(b), least>>10, wire.MaxData>>20)
	}
	return nil
}

// targetKey checks the name of entry j of the disks or RAM files and that
// no other entry of its kind has it; it returns the path that later
// errors about the entry use.
func targetKey(kind string, j int, name string, seen map[string]bool) (string, error) {
	if err := vmspec.ValidTargetName(name); err != nil {
		return "", field.Wrap(fmt.Sprintf("%s[%d].name", kind, j), err)
	}
	k := fmt.Sprintf("%s %q", kind, name)
	if seen[kind+"/"+name] {
		return "", field.Wrap(k, errors.New("listed twice"))
	}
	seen[kind+"/"+name] = true
	return k, nil
}

// Pacing is the validated VM's pacing.
func (v *VMSettings) Pacing() Pacing {
	return Pacing{Mode: v.Mode, MinInterval: v.MinInterval, Schedule: v.Schedule, RPOTarget: v.RPOTarget,
		MaxInterval: v.MaxInterval, Compression: v.compression, AutoCompression: v.Compression == AutoCompression}
}

// LiveOptions are a validated live VM's source options, its work
// directory by default under stateDir.
func (v *VMSettings) LiveOptions(stateDir string, now func() time.Time) livecut.Options {
	o := livecut.Options{QMPSocket: v.QMP, WorkDir: v.WorkDir, Now: now, AllowUntestedQEMU: v.AllowUntestedQEMU}
	if o.WorkDir == "" {
		o.WorkDir = filepath.Join(stateDir, "live")
	}
	for _, d := range v.Disks {
		o.Disks = append(o.Disks, livecut.Disk{Name: d.Name, Node: d.Node, BlockSize: int(d.BlockSize)})
	}
	v.Libvirt.Apply(&o)
	return o
}

// FileOptions are a validated image-file VM's source options.
func (v *VMSettings) FileOptions(now func() time.Time) sender.FileSourceOptions {
	o := sender.FileSourceOptions{DeviceState: v.DeviceState, Now: now, RAM: v.RAM}
	for _, d := range v.Disks {
		o.Disks = append(o.Disks, sender.FileDisk{Name: d.Name, Path: d.Path, Format: d.Format, BlockSize: int(d.BlockSize)})
	}
	return o
}

// Options is the validated VM as the agent runs it, its state in stateDir.
func (v *VMSettings) Options(stateDir string, now func() time.Time) VM {
	vm := VM{Name: v.Name, StateDir: stateDir, Pacing: v.Pacing(), Dedup: v.Dedup == nil || *v.Dedup}
	if v.Live() {
		lo := v.LiveOptions(stateDir, now)
		vm.Live, vm.Libvirt, vm.RAMCapture = &lo, v.Libvirt, v.RAMCapture
	} else {
		fo := v.FileOptions(now)
		vm.Files = &fo
	}
	return vm
}

// CheckImages makes a missing or misnamed image of a validated image-file
// VM a settings error at start, rather than a retried failure at the first
// epoch.
func (v *VMSettings) CheckImages() error {
	check := func(key, path string) error {
		st, err := os.Stat(path)
		if err != nil {
			return field.Wrap(fmt.Sprintf("vm %q: %s", v.Name, key), err)
		}
		if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
			return field.Errorf(fmt.Sprintf("vm %q: %s", v.Name, key), "%s is neither a file nor a block device", path)
		}
		return nil
	}
	for _, d := range v.Disks {
		if err := check(fmt.Sprintf("disk %q.path", d.Name), d.Path); err != nil {
			return err
		}
	}
	for _, r := range v.RAM {
		if err := check(fmt.Sprintf("ram %q.path", r.Name), r.Path); err != nil {
			return err
		}
	}
	if v.DeviceState != "" {
		return check("device_state", v.DeviceState)
	}
	return nil
}

// ConnectionCount is a configuration's receiver.connections: "auto" (0)
// or a number, which PeerSettings.Validate checks. It decodes from a TOML
// value (BurntSushi/toml's Unmarshaler).
type ConnectionCount int

// UnmarshalTOML implements toml.Unmarshaler.
func (c *ConnectionCount) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		*c = ConnectionCount(max(min(v, 1<<20), -1)) // out of range either way
		return nil
	case string:
		if v == "auto" {
			*c = 0
			return nil
		}
	}
	return fmt.Errorf("connections = %#v: want \"auto\" or a number of connections", v)
}
