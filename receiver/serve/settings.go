package serve

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
	"github.com/drsync/drsync/vmspec"
)

// Bounds of the acknowledgement interval. It bounds what a broken link
// makes the sender send again; below the minimum the replica would spend
// its time in fsync.
const (
	MinAckBytes = 64 << 10
	MaxAckBytes = 1 << 30
	// MaxKeepPoints bounds the retained recovery points per replica.
	MaxKeepPoints = 1000
)

// Settings are a receiver's settings as its configuration states them,
// checked by Validate before anything starts. Errors are *field.Error
// naming the setting.
type Settings struct {
	Listen      string
	AckBytes    uint64 // 0: receiver.DefaultAckBytes
	IdleTimeout time.Duration
	StorageDir  string
	KeepPoints  int
	Backend     Backend
	Access      Access
}

// Validate checks s and fills in defaults.
func (s *Settings) Validate() error {
	if s.Listen == "" {
		return field.Errorf("listen", "missing: the UDP host:port to listen on, e.g. \"0.0.0.0:7447\"")
	}
	if err := transport.CheckAddress(s.Listen, true); err != nil {
		return field.Wrap("listen", err)
	}
	if s.AckBytes == 0 {
		s.AckBytes = receiver.DefaultAckBytes
	}
	if s.AckBytes < MinAckBytes || s.AckBytes > MaxAckBytes {
		return field.Errorf("ack_every", "%s is outside %s..%s", units.FormatBytes(s.AckBytes), units.FormatBytes(MinAckBytes), units.FormatBytes(MaxAckBytes))
	}
	if err := transport.CheckIdleTimeout(s.IdleTimeout); err != nil {
		return field.Wrap("idle_timeout", err)
	}
	if s.StorageDir == "" {
		return field.Errorf("storage.dir", "missing: the directory holding the replicas")
	}
	if k := s.KeepPoints; k < 0 || k > MaxKeepPoints {
		return field.Errorf("storage.keep_points", "%d: want 0 (none) to %d", k, MaxKeepPoints)
	}
	if err := s.Backend.Validate(); err != nil {
		return err
	}
	return s.Access.Validate()
}

// Sender is a sender and the VMs it may write.
type Sender struct {
	// Name is informational for a pinned sender; in CA mode (no
	// fingerprint) it must equal the certificate's common name.
	Name        string
	Fingerprint string
	VMs         []string
}

// Access is who may write which replica: the senders, and whether a CA
// admits senders that are not pinned, by common name.
type Access struct {
	Senders []Sender
	CA      bool
}

// Validate checks a and normalises the fingerprints as tlsid prints them.
func (a *Access) Validate() error {
	if len(a.Senders) == 0 {
		return field.Errorf("sender", "no [[sender]] entries: every sender would be refused")
	}
	names := map[string]bool{}
	fps := map[string]string{}
	writer := map[string]string{} // VM -> sender allowed to write it
	for i := range a.Senders {
		s := &a.Senders[i]
		key := fmt.Sprintf("sender[%d]", i)
		if s.Name == "" || strings.TrimSpace(s.Name) != s.Name || strings.ContainsFunc(s.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return field.Errorf(key+".name", "%q: want a non-empty name without surrounding spaces or control characters", s.Name)
		}
		if names[s.Name] {
			return field.Errorf(key+".name", "sender %q is listed twice", s.Name)
		}
		names[s.Name] = true
		key = fmt.Sprintf("sender %q: ", s.Name)
		if s.Fingerprint == "" {
			if !a.CA {
				return field.Errorf(key+"fingerprint", "missing: pin the sender's certificate (drsync keygen prints it), or set a top-level ca to admit it by common name")
			}
		} else {
			n, err := tlsid.ParseFingerprint(s.Fingerprint)
			if err != nil {
				return field.Wrap(key+"fingerprint", err)
			}
			if other, dup := fps[n]; dup {
				return field.Errorf(key+"fingerprint", "same certificate as sender %q; each sender needs its own key pair", other)
			}
			fps[n] = s.Name
			s.Fingerprint = n
		}
		if len(s.VMs) == 0 {
			return field.Wrap(key+"vms", errors.New("empty: list the VMs this sender may write"))
		}
		for _, vm := range s.VMs {
			if err := vmspec.ValidVMName(vm); err != nil {
				return field.Wrap(key+"vms", err)
			}
			// Two writers of one replica would overwrite each other's
			// epochs and force full comparison passes on every switch.
			if other, dup := writer[vm]; dup {
				return field.Errorf(key+"vms", "VM %q is already writable by sender %q; a replica has a single writer", vm, other)
			}
			writer[vm] = s.Name
		}
	}
	return nil
}

// Fingerprints are the pinned senders' certificates.
func (a *Access) Fingerprints() []string {
	var fps []string
	for _, s := range a.Senders {
		if s.Fingerprint != "" {
			fps = append(fps, s.Fingerprint)
		}
	}
	return fps
}

// VMs lists every VM some sender may write, sorted.
func (a *Access) VMs() []string {
	var vms []string
	for _, s := range a.Senders {
		vms = append(vms, s.VMs...)
	}
	slices.Sort(vms)
	return slices.Compact(vms)
}

// Authorizer is Options.Authorize for a validated a. A pinned certificate
// is judged by its entry only, whatever name it carries. The common name
// is looked at only for certificates that are not pinned: the TLS layer
// admits exactly the pinned ones and those the CA signed, so such a
// certificate was signed by the CA and its name can be believed.
func (a *Access) Authorizer() func(p receiver.Peer, vm string) error {
	byFingerprint, byName := map[string]*Sender{}, map[string]*Sender{}
	for i := range a.Senders {
		s := &a.Senders[i]
		if s.Fingerprint != "" {
			byFingerprint[s.Fingerprint] = s
		} else if a.CA {
			byName[s.Name] = s
		}
	}
	return func(p receiver.Peer, vm string) error {
		e := byFingerprint[p.Fingerprint]
		if e == nil {
			e = byName[p.Name]
		}
		if e == nil {
			return fmt.Errorf("%w: certificate %s (CN %q) matches no [[sender]] entry", receiver.ErrUnauthorized, p.Fingerprint, p.Name)
		}
		if !slices.Contains(e.VMs, vm) {
			return fmt.Errorf("%w: sender %q may not write VM %q (allowed: %s)", receiver.ErrUnauthorized, e.Name, vm, strings.Join(e.VMs, ", "))
		}
		return nil
	}
}
