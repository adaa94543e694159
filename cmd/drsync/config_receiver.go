package main

import (
	"path/filepath"

	"github.com/drsync/drsync/receiver/serve"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/transport"
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
	set  serve.Settings // validated, with defaults
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
	serve.Backend
}

// warm reports whether hot pages are kept pinned (the default).
func (s *StorageConfig) warm() bool { return s.WarmPages == nil || *s.WarmPages }

// SenderEntry is one [[sender]]: a sender and the VMs it may write.
type SenderEntry struct {
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
	c.Identity.resolve(dir)
	c.CA = resolvePath(dir, c.CA)
	c.Storage.Dir = resolvePath(dir, c.Storage.Dir)
	if err := c.Identity.validate(c.file); err != nil {
		return nil, err
	}
	c.set = serve.Settings{Listen: c.Listen, AckBytes: uint64(c.AckEvery), IdleTimeout: c.IdleTimeout.D(), StorageDir: c.Storage.Dir,
		KeepPoints: c.Storage.KeepPoints, Backend: c.Storage.Backend, Access: serve.Access{CA: c.CA != ""}}
	for _, s := range c.Senders {
		c.set.Access.Senders = append(c.set.Access.Senders, serve.Sender{Name: s.Name, Fingerprint: s.Fingerprint, VMs: s.VMs})
	}
	if err := c.set.Validate(); err != nil {
		return nil, configErr(c.file, err)
	}
	return &c, nil
}

// trust is what the receiver's TLS layer admits: every pinned sender
// certificate, plus certificates signed by the CA if one is configured.
func (c *ReceiverConfig) trust() (tlsid.Trust, error) {
	t := tlsid.Trust{Fingerprints: c.set.Access.Fingerprints()}
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
func (c *ReceiverConfig) vmNames() []string { return c.set.Access.VMs() }

func (c *ReceiverConfig) replicaDir(vm string) string { return filepath.Join(c.Storage.Dir, vm) }
