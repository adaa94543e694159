package runbook

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/vmspec"
)

// Runbook is a validated recovery plan.
type Runbook struct {
	Name     string
	Replicas string // the receiver's storage directory
	// RBD, if set, is the Ceph pool the receiver keeps the replicas in
	// (its [storage] backend = "rbd"); Replicas then holds only its lock,
	// status files and drill results. The VMs run on clones of the
	// replica's images in the pool.
	RBD *rbdstore.Config
	// KeepPoints is the receiver's keep_points: a store the runbook opens
	// must prune recovery points by the same rule as the receiver.
	KeepPoints int
	WorkDir    string // per-VM work directories
	// Authorized, if set, lists the VMs the DR site's receiver holds
	// replicas for; a runbook naming another VM is refused.
	Authorized []string
	Hooks      []Hook
	Groups     []Group
	VMs        []VM
	// Drill runs the plan as a DR test: each VM starts from a copy of its
	// replica, without NICs and without hooks, replication goes on, and
	// everything is torn down at the end.
	Drill bool
	// Epoch or Before pick a retained recovery point instead of the
	// newest epoch (see takeover.Options).
	Epoch  uint64
	Before time.Time
	// Pinned, set by PinConsistencyGroup, is the epoch each member of a
	// consistency group resumes (by VM name), overriding Epoch and Before
	// for those VMs.
	Pinned map[string]uint64
}

// point is the recovery point vm resumes: an epoch, or the newest cut
// before a time, or (both zero) the newest epoch.
func (rb *Runbook) point(vm string) (uint64, time.Time) {
	if e, ok := rb.Pinned[vm]; ok {
		return e, time.Time{}
	}
	return rb.Epoch, rb.Before
}

// When a hook runs.
const (
	Before = "before" // before any VM starts: fence the failed site
	After  = "after"  // once every group is up and healthy: switch DNS
)

// Hook is a command run at a point of the plan.
type Hook struct {
	Name    string
	When    string
	Command []string
	Timeout time.Duration
}

// Group is VMs that come up together; a group starts only once the
// previous one passed its checks.
type Group struct {
	Name string
	VMs  []string
}

// VM is how one VM comes up at the DR site.
type VM struct {
	Name    string
	QEMU    string
	Args    []string // machine, CPUs, devices; see takeover.Options.Args
	NICs    []string // network options, left out in a drill
	Disks   []takeover.Disk
	MainRAM string
	Checks  []Check
	Libvirt Libvirt // a libvirt domain at the DR site
}

// Check kinds.
const (
	CheckRunning = "running" // QEMU reports the guest running
	CheckSerial  = "serial"  // a line of the serial console log matches
	CheckTCP     = "tcp"     // a TCP port accepts connections
)

// Check is a health check of a started VM.
type Check struct {
	Kind    string
	Match   string // serial: regular expression a line must match
	File    string // serial: the console log file (the VM's -serial file:)
	Address string // tcp: host:port
	Timeout time.Duration
}

// Validate reports what is wrong with rb and fills in defaults. Errors
// are *field.Error naming the group, VM, hook or check as a runbook file
// does ("vm \"db-1\": check[1].address").
func (rb *Runbook) Validate() error {
	if rb.Name == "" {
		return field.Errorf("name", "missing: the runbook's name")
	}
	if rb.Replicas == "" || rb.WorkDir == "" {
		return errors.New("runbook: needs the replica storage directory and a work directory")
	}
	if rb.RBD != nil {
		if err := rb.RBD.Validate(); err != nil {
			return field.Under("storage", ".", err)
		}
	}
	vms := map[string]*VM{}
	for i := range rb.VMs {
		v := &rb.VMs[i]
		if err := vmspec.ValidVMName(v.Name); err != nil {
			return field.Wrap(fmt.Sprintf("vm[%d].name", i), err)
		}
		if vms[v.Name] != nil {
			return field.Errorf(fmt.Sprintf("vm[%d].name", i), "vm %q is described twice", v.Name)
		}
		vms[v.Name] = v
		if len(rb.Authorized) > 0 && !contains(rb.Authorized, v.Name) {
			return field.Errorf(vmKey(v.Name), "this site holds no replica for it (the receiver does not authorize any sender for it)")
		}
		if len(v.Disks) == 0 {
			return field.Errorf(vmKey(v.Name), "no disks")
		}
		for j := range v.Checks {
			c := &v.Checks[j]
			if c.Timeout <= 0 {
				c.Timeout = 60 * time.Second
			}
			switch c.Kind {
			case CheckRunning:
			case CheckSerial:
				if c.File == "" || c.Match == "" {
					return field.Errorf(checkKey(v.Name, j), "a serial check needs file and match")
				}
				if _, err := regexp.Compile(c.Match); err != nil {
					return field.Wrap(checkKey(v.Name, j)+".match", err)
				}
			case CheckTCP:
				if c.Address == "" {
					return field.Errorf(checkKey(v.Name, j)+".address", "a tcp check needs an address")
				}
			default:
				return field.Errorf(checkKey(v.Name, j)+".kind", "unknown kind %q (want running, serial or tcp)", c.Kind)
			}
		}
	}
	placed := map[string]string{}
	for gi, g := range rb.Groups {
		if g.Name == "" {
			return field.Errorf(fmt.Sprintf("group[%d].name", gi), "missing")
		}
		if len(g.VMs) == 0 {
			return field.Errorf(fmt.Sprintf("group %q: vms", g.Name), "empty: list the VMs the group starts")
		}
		for _, name := range g.VMs {
			if vms[name] == nil {
				return field.Errorf(fmt.Sprintf("group %q: vms", g.Name), "group %q names vm %q, which no [[vm]] describes", g.Name, name)
			}
			if other, ok := placed[name]; ok {
				return field.Errorf(fmt.Sprintf("group %q: vms", g.Name), "vm %q is in groups %q and %q", name, other, g.Name)
			}
			placed[name] = g.Name
		}
	}
	for name := range vms {
		if _, ok := placed[name]; !ok {
			return field.Errorf("group", "vm %q is in no group, so it would never start", name)
		}
	}
	seen := map[string]bool{}
	for i := range rb.Hooks {
		h := &rb.Hooks[i]
		if h.Name == "" || len(h.Command) == 0 {
			return field.Errorf(fmt.Sprintf("hook[%d]", i), "a hook needs a name and a command")
		}
		if h.When != Before && h.When != After {
			return field.Errorf(fmt.Sprintf("hook %q: when", h.Name), "when = %q (want before or after)", h.When)
		}
		if seen[h.Name] {
			return field.Errorf(fmt.Sprintf("hook[%d].name", i), "hook %q is defined twice", h.Name)
		}
		seen[h.Name] = true
		if h.Timeout <= 0 {
			h.Timeout = 5 * time.Minute
		}
	}
	return nil
}

func vmKey(vm string) string { return fmt.Sprintf("vm %q", vm) }

func checkKey(vm string, j int) string { return fmt.Sprintf("vm %q: check[%d]", vm, j) }

// QEMUArgs are a VM's machine options: the accelerator (default kvm), the
// machine type and CPU count if set, then args.
func QEMUArgs(accel, machine string, cpus int, args []string) []string {
	if accel == "" {
		accel = "kvm"
	}
	out := []string{"-accel", accel}
	if machine != "" {
		out = append(out, "-machine", machine)
	}
	if cpus > 0 {
		out = append(out, "-smp", fmt.Sprint(cpus))
	}
	return append(out, args...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// vm returns the VM named name.
func (rb *Runbook) vm(name string) *VM {
	for i := range rb.VMs {
		if rb.VMs[i].Name == name {
			return &rb.VMs[i]
		}
	}
	return nil
}

// StepKind says what a step does.
type StepKind string

const (
	StepHook  StepKind = "hook"
	StepStart StepKind = "start"
	StepCheck StepKind = "check"
)

// Step is one unit of the plan. ID is stable across runs of the same
// runbook, which is what lets an interrupted run resume.
type Step struct {
	ID    string
	Kind  StepKind
	Group string
	VM    string
	Hook  *Hook
	Check *Check
}

// Steps lays the runbook out in order: before-hooks, then per group its
// VMs' starts and then their checks, then after-hooks.
func (rb *Runbook) Steps() []Step {
	var out []Step
	for i := range rb.Hooks {
		if h := &rb.Hooks[i]; h.When == Before && !rb.Drill {
			out = append(out, Step{ID: "hook:" + h.Name, Kind: StepHook, Hook: h})
		}
	}
	for _, g := range rb.Groups {
		for _, name := range g.VMs {
			out = append(out, Step{ID: "start:" + name, Kind: StepStart, Group: g.Name, VM: name})
		}
		for _, name := range g.VMs {
			v := rb.vm(name)
			for j := range v.Checks {
				c := &v.Checks[j]
				out = append(out, Step{ID: fmt.Sprintf("check:%s:%d:%s", name, j, c.Kind), Kind: StepCheck, Group: g.Name, VM: name, Check: c})
			}
		}
	}
	for i := range rb.Hooks {
		if h := &rb.Hooks[i]; h.When == After && !rb.Drill {
			out = append(out, Step{ID: "hook:" + h.Name, Kind: StepHook, Hook: h})
		}
	}
	return out
}
