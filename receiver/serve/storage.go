package serve

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/vfs"
)

// Backend is where a receiver keeps its replicas, as the [storage] keys
// backend, pool, ceph_conf and client of its configuration state it. With
// backend "rbd" the replicas are RBD images in a Ceph pool (package
// replica/rbdstore) and the storage directory keeps only the receiver's
// lock and status files.
type Backend struct {
	// Kind is "" or "file" (files under the storage directory), or "rbd".
	Kind     string `toml:"backend"`
	Pool     string `toml:"pool"`
	CephConf string `toml:"ceph_conf"`
	Client   string `toml:"client"`
}

func (b Backend) rbd() rbdstore.Config {
	return rbdstore.Config{Pool: b.Pool, CephConf: b.CephConf, Client: b.Client}
}

// Validate checks b; errors are *field.Error naming the key.
func (b Backend) Validate() error {
	switch b.Kind {
	case "", "file":
		for _, kv := range [][2]string{{"pool", b.Pool}, {"ceph_conf", b.CephConf}, {"client", b.Client}} {
			if kv[1] != "" {
				return field.Errorf("storage."+kv[0], "set, but backend is not \"rbd\"")
			}
		}
		return nil
	case "rbd":
		if b.CephConf != "" && !filepath.IsAbs(b.CephConf) {
			return field.Errorf("storage.ceph_conf", "%q: want an absolute path (or none: Ceph's default search path)", b.CephConf)
		}
		return field.Under("storage", ".", b.rbd().Validate())
	default:
		return field.Errorf("storage.backend", "%q: want \"file\" (the default) or \"rbd\"", b.Kind)
	}
}

// openStore returns the store b names, and what closes it; a nil store
// for files, which the receiver opens itself.
func (b Backend) openStore(keepPoints int, log *slog.Logger) (replica.Store, func(), error) {
	if b.Kind != "rbd" {
		return nil, func() {}, nil
	}
	s, closeFn, err := rbdstore.Open(b.rbd(), keepPoints, log)
	if err != nil {
		return nil, nil, fmt.Errorf("storage backend rbd: %w", err)
	}
	return s, closeFn, nil
}

// OpenStore opens the store b names for a reader of the replicas (drsync
// status, verify): the replica directories under dir, or the RBD pool.
// close releases it. A reader commits no epoch of its own; an apply it
// finishes keeps the recovery points the receiver's rule keeps.
func (b Backend) OpenStore(dir string, log *slog.Logger) (s replica.Store, close func(), err error) {
	if b.Kind != "rbd" {
		return replica.FileStore{FS: vfs.Default, Root: dir, Now: time.Now, Logger: log, KeepPoints: replica.KeepInherited}, func() {}, nil
	}
	return b.openStore(replica.KeepInherited, log)
}
