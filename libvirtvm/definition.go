package libvirtvm

import (
	"bytes"
	"context"
	"fmt"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vmspec"
)

// Definition is the running domain's definition as it travels to the DR
// site: libvirt's migratable, secure XML (VIR_DOMAIN_XML_MIGRATABLE|
// SECURE, what libvirt itself sends with a migration or writes into a
// save image: the live configuration, with devices plugged in since the
// domain started, which the guest's device state has; the inactive
// definition may lack them), sanitized (Sanitize).
func (m *Monitor) Definition() ([]byte, error) {
	return definition(m.conn, m.dom)
}

func definition(l *libvirt.Libvirt, dom libvirt.Domain) ([]byte, error) {
	x, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLSecure|libvirt.DomainXMLMigratable)
	if err != nil {
		return nil, fmt.Errorf("libvirt: definition of domain %q: %w", dom.Name, err)
	}
	b, err := Sanitize([]byte(x))
	if err != nil {
		return nil, fmt.Errorf("libvirt: definition of domain %q: %w", dom.Name, err)
	}
	return b, nil
}

// WithDefinition makes src's snapshots carry the domain's definition as a
// blob target (vmspec.BlobDomainXML), read just after each cut, so the
// replica keeps, per committed epoch, the definition of the machine its
// memory belongs to. src is returned as is for an entry that is not a
// libvirt domain.
func (c Config) WithDefinition(src sender.Source) sender.Source {
	if !c.Enabled() {
		return src
	}
	return &defSource{src: src, c: c}
}

type defSource struct {
	src sender.Source
	c   Config
}

func (s *defSource) Snapshot(ctx context.Context) (*sender.Snapshot, error) {
	snap, err := s.src.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.target(ctx)
	if err != nil {
		snap.Close()
		return nil, err
	}
	snap.Targets = append(snap.Targets, t)
	return snap, nil
}

func (s *defSource) target(ctx context.Context) (sender.Target, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l, err := Connect(ctx, s.c.Libvirt)
	if err != nil {
		return sender.Target{}, err
	}
	defer l.Disconnect()
	dom, err := LookupDomain(l, s.c.Libvirt, s.c.Domain)
	if err != nil {
		return sender.Target{}, err
	}
	x, err := definition(l, dom)
	if err != nil {
		return sender.Target{}, err
	}
	return DefinitionTarget(x)
}

// DefinitionTarget is a sanitized definition as a snapshot's blob target.
func DefinitionTarget(xml []byte) (sender.Target, error) {
	img, err := vmspec.EncodeBlob(xml)
	if err != nil {
		return sender.Target{}, fmt.Errorf("libvirt: domain definition: %w", err)
	}
	return sender.Target{Kind: vmspec.KindBlob, Name: vmspec.BlobDomainXML, Size: vmspec.BlobSize,
		BlockSize: vmspec.BlobBlockSize, Reader: bytes.NewReader(img)}, nil
}
