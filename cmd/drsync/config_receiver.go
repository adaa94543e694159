package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
)

// Receiver defaults and bounds. The acknowledgement interval bounds what a
// broken link makes the sender send again; below the minimum the replica
// would spend its time in fsync.
const (
	defaultAckEvery = Size(receiver.DefaultAckBytes)
	minAckEvery     = Size(64 << 10)
	maxAckEvery     = Size(1 << 30)
)

// ReceiverConfig is the receiver's configuration file.
type ReceiverConfig struct {
	Listen string `toml:"listen"`
	// Metrics, if set, is the host:port of a Prometheus endpoint (/metrics).
	Metrics  string `toml:"metrics"`
	AckEvery Size   `toml:"ack_every"`
	CA       string `toml:"ca"`
	// IdleTimeout declares a connection dead after this long without
	// hearing from the sender (the smaller of both sides' values applies).
	IdleTimeout Duration       `toml:"idle_timeout"`
	Identity    IdentityConfig `toml:"identity"`
	Storage     StorageConfig  `toml:"storage"`
	Senders     []SenderEntry  `toml:"sender"`

	file string
}

// StorageConfig is the [storage] table.
type StorageConfig struct {
	// Dir holds one replica directory per VM.
	Dir string `toml:"dir"`
	// WarmPages keeps each VM's hot RAM pages (written in recent epochs)
	// pinned in memory, so a failover never waits on cold storage for
	// them; WarmMax caps it per RAM block (default a quarter of the block).
	WarmPages *bool `toml:"warm_pages"`
	WarmMax   Size  `toml:"warm_max"`
	// KeepPoints retains this many epochs before the newest as recovery
	// points a failover can resume (--epoch, --before). Each costs the
	// data its next epoch overwrote.
	KeepPoints int `toml:"keep_points"`
}

// warm reports whether hot pages are kept pinned (the default).
func (s *StorageConfig) warm() bool { return s.WarmPages == nil || *s.WarmPages }

// SenderEntry is one [[sender]]: a sender and the VMs it may write.
type SenderEntry struct {
	// Name is informational for a pinned sender; in CA mode (no
	// fingerprint) it must equal the certificate's common name.
	Name        string   `toml:"name"`
	Fingerprint string   `toml:"fingerprint"`
	VMs         []string `toml:"vms"`
}

// loadReceiverConfig reads, resolves and validates a receiver configuration.
func loadReceiverConfig(path string) (*ReceiverConfig, error) {
	var c ReceiverConfig
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

func (c *ReceiverConfig) resolve(dir string) {
	c.Identity.resolve(dir)
	c.CA = resolvePath(dir, c.CA)
	c.Storage.Dir = resolvePath(dir, c.Storage.Dir)
}

// Validate checks everything that can be checked without touching files,
// and fills in defaults.
func (c *ReceiverConfig) Validate() error {
	f := c.file
	if c.Listen == "" {
		return &configError{f, "listen", errors.New("missing: the UDP host:port to listen on, e.g. \"0.0.0.0:7447\"")}
	}
	if err := checkHostPort(c.Listen, true); err != nil {
		return &configError{f, "listen", err}
	}
	if c.AckEvery == 0 {
		c.AckEvery = defaultAckEvery
	}
	if c.AckEvery < minAckEvery || c.AckEvery > maxAckEvery {
		return &configError{f, "ack_every", fmt.Errorf("%s is outside %s..%s", c.AckEvery, minAckEvery, maxAckEvery)}
	}
	if err := checkIdleTimeout(c.IdleTimeout); err != nil {
		return &configError{f, "idle_timeout", err}
	}
	if err := c.Identity.validate(f); err != nil {
		return err
	}
	if c.Storage.Dir == "" {
		return &configError{f, "storage.dir", errors.New("missing: the directory holding the replicas")}
	}
	if k := c.Storage.KeepPoints; k < 0 || k > 1000 {
		return &configError{f, "storage.keep_points", fmt.Errorf("%d: want 0 (none) to 1000", k)}
	}
	if len(c.Senders) == 0 {
		return &configError{f, "sender", errors.New("no [[sender]] entries: every sender would be refused")}
	}
	names := map[string]bool{}
	fps := map[string]string{}
	writer := map[string]string{} // VM -> sender allowed to write it
	for i := range c.Senders {
		s := &c.Senders[i]
		key := fmt.Sprintf("sender[%d]", i)
		if s.Name == "" || strings.TrimSpace(s.Name) != s.Name || strings.ContainsFunc(s.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return &configError{f, key + ".name", fmt.Errorf("%q: want a non-empty name without surrounding spaces or control characters", s.Name)}
		}
		if names[s.Name] {
			return &configError{f, key + ".name", fmt.Errorf("sender %q is listed twice", s.Name)}
		}
		names[s.Name] = true
		key = fmt.Sprintf("sender %q", s.Name)
		if s.Fingerprint == "" {
			if c.CA == "" {
				return &configError{f, key + ": fingerprint", errors.New("missing: pin the sender's certificate (drsync keygen prints it), or set a top-level ca to admit it by common name")}
			}
		} else {
			n, err := tlsid.ParseFingerprint(s.Fingerprint)
			if err != nil {
				return &configError{f, key + ": fingerprint", err}
			}
			if other, dup := fps[n]; dup {
				return &configError{f, key + ": fingerprint", fmt.Errorf("same certificate as sender %q; each sender needs its own key pair", other)}
			}
			fps[n] = s.Name
			s.Fingerprint = n
		}
		if len(s.VMs) == 0 {
			return &configError{f, key + ": vms", errors.New("empty: list the VMs this sender may write")}
		}
		for _, vm := range s.VMs {
			if err := vmspec.ValidVMName(vm); err != nil {
				return &configError{f, key + ": vms", err}
			}
			// Two writers of one replica would overwrite each other's
			// epochs and force full comparison passes on every switch.
			if other, dup := writer[vm]; dup {
				return &configError{f, key + ": vms", fmt.Errorf("VM %q is already writable by sender %q; a replica has a single writer", vm, other)}
			}
			writer[vm] = s.Name
		}
	}
	return nil
}

// trust is what the receiver's TLS layer admits: every pinned sender
// certificate, plus certificates signed by the CA if one is configured.
func (c *ReceiverConfig) trust() (tlsid.Trust, error) {
	var t tlsid.Trust
	for _, s := range c.Senders {
		if s.Fingerprint != "" {
			t.Fingerprints = append(t.Fingerprints, s.Fingerprint)
		}
	}
	if c.CA != "" {
		if err := t.LoadCAFile(c.CA); err != nil {
			return t, &configError{c.file, "ca", err}
		}
	}
	if err := t.Validate(); err != nil {
		return t, &configError{c.file, "sender", err}
	}
	return t, nil
}

// transportOptions are the connections' liveness settings.
func (c *ReceiverConfig) transportOptions() transport.Options {
	return transport.Options{IdleTimeout: c.IdleTimeout.D()}
}

// vmNames lists every VM some sender may write, sorted.
func (c *ReceiverConfig) vmNames() []string {
	var vms []string
	for _, s := range c.Senders {
		vms = append(vms, s.VMs...)
	}
	slices.Sort(vms)
	return slices.Compact(vms)
}

func (c *ReceiverConfig) replicaDir(vm string) string { return filepath.Join(c.Storage.Dir, vm) }

// authorizer decides which VMs a connected sender may write.
type authorizer struct {
	byFingerprint map[string]*SenderEntry
	// byName holds the CA-mode entries (those without a fingerprint).
	byName map[string]*SenderEntry
}

func newAuthorizer(c *ReceiverConfig) *authorizer {
	a := &authorizer{byFingerprint: map[string]*SenderEntry{}, byName: map[string]*SenderEntry{}}
	for i := range c.Senders {
		s := &c.Senders[i]
		if s.Fingerprint != "" {
			a.byFingerprint[s.Fingerprint] = s
		} else if c.CA != "" {
			a.byName[s.Name] = s
		}
	}
	return a
}

// authorize implements receiver.Options.Authorize. A pinned certificate is
// judged by its entry only, whatever name it carries. The common name is
// looked at only for certificates that are not pinned: the TLS layer admits
// exactly the pinned ones and those the CA signed, so such a certificate
// was signed by the CA and its name can be believed.
func (a *authorizer) authorize(p receiver.Peer, vm string) error {
	e := a.byFingerprint[p.Fingerprint]
	if e == nil {
		e = a.byName[p.Name]
	}
	if e == nil {
		return fmt.Errorf("%w: certificate %s (CN %q) matches no [[sender]] entry", receiver.ErrUnauthorized, p.Fingerprint, p.Name)
	}
	if !slices.Contains(e.VMs, vm) {
		return fmt.Errorf("%w: sender %q may not write VM %q (allowed: %s)", receiver.ErrUnauthorized, e.Name, vm, strings.Join(e.VMs, ", "))
	}
	return nil
}
