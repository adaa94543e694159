package rbdstore

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/rbd"
)

// Config is where a receiver keeps its replicas in Ceph, as the [storage]
// keys pool, ceph_conf and client state it.
type Config struct {
	// Pool is the RBD pool holding the replicas.
	Pool string
	// CephConf is the ceph.conf naming the monitors and the keyring (""
	// reads Ceph's default search path).
	CephConf string
	// Client is the cephx user, without "client." ("" is "admin").
	Client string
	// Prefix starts every name the store creates in the pool ("").
	Prefix string
}

// Validate checks what can be checked without the cluster. Errors are
// *field.Error naming the key.
func (c Config) Validate() error {
	if c.Pool == "" {
		return field.Errorf("pool", "missing: the RBD pool that holds the replicas")
	}
	if strings.ContainsAny(c.Pool, "/@: \t\n") {
		return field.Errorf("pool", "%q: a pool name has no '/', '@', ':' or blanks", c.Pool)
	}
	if err := (rbd.Config{ConfFile: c.CephConf, Client: c.Client}).Validate(); err != nil {
		return field.Wrap("client", err)
	}
	if strings.ContainsAny(c.Prefix, "/@: \t\n") {
		return field.Errorf("prefix", "%q: no '/', '@', ':' or blanks", c.Prefix)
	}
	return nil
}

// Open connects to the cluster and returns a store over c.Pool; close
// disconnects. A binary built without the ceph tag fails with
// rbd.ErrUnsupported.
func Open(c Config, keepPoints int, log *slog.Logger) (s *Store, close func(), err error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	conn, err := rbd.Connect(rbd.Config{ConfFile: c.CephConf, Client: c.Client})
	if err != nil {
		return nil, nil, fmt.Errorf("connect to Ceph as client.%s: %w", clientName(c.Client), err)
	}
	p, err := conn.OpenPool(c.Pool)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("open pool %s: %w", c.Pool, err)
	}
	s = &Store{Pool: p, Prefix: c.Prefix, Now: time.Now, Logger: log, KeepPoints: keepPoints,
		Cluster: rbd.Config{ConfFile: c.CephConf, Client: c.Client}}
	return s, func() { p.Close(); conn.Close() }, nil
}

func clientName(c string) string {
	if c == "" {
		return "admin"
	}
	return c
}
