package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Mode is how a VM's epochs follow one another.
type Mode string

const (
	// Continuous: back to back, at most one epoch start per MinInterval,
	// or with an RPO target as long as the controller decides.
	Continuous Mode = "continuous"
	// Scheduled: one epoch per Schedule interval, on a fixed grid.
	Scheduled Mode = "scheduled"
)

// Pacing says when a VM's epochs start and how they are compressed.
type Pacing struct {
	Mode        Mode
	MinInterval time.Duration // Continuous
	Schedule    time.Duration // Scheduled
	// RPOTarget turns on adaptive epochs (Continuous): each epoch's length,
	// between MinInterval and MaxInterval, and with AutoCompression its
	// level, follow the measured goodput, dirty rate and dedup.
	RPOTarget   time.Duration
	MaxInterval time.Duration
	// Compression is the level, or with AutoCompression the first level.
	Compression     wire.Compression
	AutoCompression bool
}

// Adaptive reports whether epoch lengths follow an RPO target.
func (p Pacing) Adaptive() bool { return p.RPOTarget != 0 }

// interval is the time between epoch starts without adaptive epochs.
func (p Pacing) interval() time.Duration {
	if p.Mode == Scheduled {
		return p.Schedule
	}
	return p.MinInterval
}

// Controller is the epoch controller's configuration, with share the
// VM's part of the bandwidth cap in bytes/s (0: none).
func (p Pacing) Controller(share float64) (epochctl.Config, error) {
	c := epochctl.Config{RPOTarget: p.RPOTarget, MinInterval: p.MinInterval, MaxInterval: p.MaxInterval,
		BandwidthCap: share, StartLevel: epochctl.Level(p.Compression)}
	if !p.AutoCompression {
		c.Levels = []epochctl.Level{epochctl.Level(p.Compression)}
	}
	err := c.Validate()
	return c, err
}

// Validate checks that the pacing can run.
func (p Pacing) Validate() error {
	switch p.Mode {
	case Continuous:
		if p.interval() <= 0 && !p.Adaptive() {
			return errors.New("continuous pacing needs a minimum interval or an RPO target")
		}
	case Scheduled:
		if p.Schedule <= 0 {
			return errors.New("scheduled pacing needs a schedule interval")
		}
		if p.Adaptive() {
			return errors.New("adaptive epochs need continuous pacing")
		}
	default:
		return fmt.Errorf("pacing mode %q: want %q or %q", p.Mode, Continuous, Scheduled)
	}
	if p.AutoCompression && !p.Adaptive() {
		return errors.New("automatic compression needs an RPO target")
	}
	if p.Adaptive() {
		_, err := p.Controller(0)
		return err
	}
	return nil
}

// VM is one protected VM.
type VM struct {
	Name string
	// StateDir holds what the sender knows the replica holds, its status
	// file and the guest guard's record.
	StateDir string
	Pacing   Pacing
	Dedup    bool // memory pages equal to disk pages travel as references
	// Exactly one of Live (a running QEMU guest) and Files (image files).
	Live  *livecut.Options
	Files *sender.FileSourceOptions
	// Libvirt, for a live libvirt domain, makes each snapshot carry the
	// domain's definition.
	Libvirt libvirtvm.Config
	// RAMCapture, for a live VM, says whether cuts track the guest's RAM
	// writes (RAMCaptureAuto if empty); setting up the VM fills in
	// Live.SharedRAM and Live.TrackRAM from what QEMU says.
	RAMCapture string
}

// Validate checks the VM's options.
func (v *VM) Validate() error {
	if err := vmspec.ValidVMName(v.Name); err != nil {
		return err
	}
	if v.StateDir == "" {
		return fmt.Errorf("vm %s: no state directory", v.Name)
	}
	if (v.Live == nil) == (v.Files == nil) {
		return fmt.Errorf("vm %s: want exactly one source, live or files", v.Name)
	}
	if err := v.Pacing.Validate(); err != nil {
		return fmt.Errorf("vm %s: %w", v.Name, err)
	}
	return nil
}

// Options configure an Agent.
type Options struct {
	VMs    []VM
	Dialer sender.Dialer // see Dial
	// Once sends one epoch per VM; Final (with Once, live VMs) leaves the
	// guest paused after the cut: the last epoch of a switch-back.
	Once, Final bool
	// Retries bounds the retries of a failed epoch; negative: until it
	// succeeds or fails for good.
	Retries int
	// CapShare is each VM's part of the bandwidth cap in bytes/s (0: none);
	// adaptive epochs plan with it.
	CapShare float64
	// Cap, if set, is the cap the Dialer writes under, and BandwidthCap
	// its rate in bytes/s (0: none): Reload changes it.
	Cap          *Cap
	BandwidthCap float64
	Logger       *slog.Logger
	Metrics      *metrics.Sender // nil: none
	// Receiver and Fingerprint (the sender's own) are logged at the start.
	Receiver, Fingerprint string
	Now                   func() time.Time
	// Sleep waits d or until ctx ends; default a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Progress, if set, is told the progress of each VM's epoch in flight,
	// and EpochDone when it ends (for a progress display).
	Progress  func(vm string, p sender.Progress)
	EpochDone func(vm string)
	// StartGuard, if set, is called before the first cut with the live VMs
	// the guest guard must watch (see StartGuard).
	StartGuard func(vms []GuardVM) error
	// Groups are the consistency groups whose members are among VMs (live
	// VMs, each in at most one group): their epochs are cut together.
	Groups []groupcut.Options
	// GroupIdentity is this sender's key pair towards the other senders
	// of its groups that span hosts (leader or follower); GroupTransport
	// their connections' settings (defaults if zero).
	GroupIdentity  *tlsid.Identity
	GroupTransport transport.Options
}

// Validate checks o and fills in defaults.
func (o *Options) Validate() error {
	if len(o.VMs) == 0 {
		return errors.New("no VMs")
	}
	if o.Dialer == nil {
		return errors.New("no dialer")
	}
	if o.Final && !o.Once {
		return errors.New("a final epoch is one last epoch: it needs Once")
	}
	seen := map[string]bool{}
	for i := range o.VMs {
		v := &o.VMs[i]
		if err := v.Validate(); err != nil {
			return err
		}
		if seen[v.Name] {
			return fmt.Errorf("vm %s listed twice", v.Name)
		}
		seen[v.Name] = true
		if o.Final && v.Live == nil {
			return fmt.Errorf("vm %s: a final epoch needs a live VM", v.Name)
		}
	}
	if err := o.validateGroups(); err != nil {
		return err
	}
	if o.BandwidthCap < 0 || o.CapShare < 0 {
		return fmt.Errorf("bandwidth cap %g bytes/s (a VM's share %g): must not be negative", o.BandwidthCap, o.CapShare)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = SleepCtx
	}
	return nil
}

// SetupError is a VM that cannot be set up as its options say: a source
// that cannot be opened, pacing the controller refuses.
type SetupError struct {
	VM  string
	Err error
}

func (e *SetupError) Error() string { return fmt.Sprintf("vm %q: %v", e.VM, e.Err) }
func (e *SetupError) Unwrap() error { return e.Err }

// SleepCtx waits d, or until ctx ends.
func SleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
