//go:build ceph && cgo

package rbdstore_test

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/rbd/rbdfault"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/replica/replicatest"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/errorfs"
)

func TestMain(m *testing.M) { testkit.Main(m) }

var (
	connOnce sync.Once
	shared   rbd.Pool
	connErr  error
	backends atomic.Int64
)

// sharedPool is one connection to the test cluster for the whole binary:
// backends keep apart by the prefix of their names.
func sharedPool(t testing.TB) rbd.Pool {
	c := testkit.CephCluster(t)
	connOnce.Do(func() {
		var conn *rbd.Conn
		if conn, connErr = rbd.Connect(rbd.Config{ConfFile: c.Conf, Client: c.Client}); connErr == nil {
			shared, connErr = conn.OpenPool(c.Pool)
		}
	})
	if connErr != nil {
		t.Fatal(connErr)
	}
	return shared
}

// backend is a replica store's storage in the test pool. Each store
// opened over it is a client of its own as far as locks go (every image
// handle owns its exclusive lock apart); Crash closes every image its
// stores opened, which lets their locks go as a dead process's would, and
// fails whatever the stores do afterwards.
type backend struct {
	pool   rbd.Pool
	prefix string
	n      int
	mu     sync.Mutex
	gates  []*gate
}

func newBackend(t *testing.T) replicatest.Backend {
	return &backend{pool: sharedPool(t), prefix: fmt.Sprintf("b%d-", backends.Add(1))}
}

// CrashPoints: each crash case on the test cluster takes seconds (up to
// 13 with recovery points to prune), so make test fails a sample of an
// epoch's operations, evenly spread; DRSYNC_RBD_EVERY_OP=1 fails every one.
func (b *backend) CrashPoints(n int, short bool) int {
	switch {
	case os.Getenv("DRSYNC_RBD_EVERY_OP") != "":
		return n
	case short:
		return 6
	}
	return 16
}

func (b *backend) Store(t *testing.T, keep int, inj errorfs.Injector) replica.Store {
	g := &gate{Pool: b.pool}
	b.mu.Lock()
	b.gates = append(b.gates, g)
	b.mu.Unlock()
	t.Cleanup(g.crash)
	var p rbd.Pool = g
	if inj != nil {
		p = rbdfault.Wrap(g, inj)
	}
	return &rbdstore.Store{Pool: p, Prefix: b.prefix, KeepPoints: keep, Now: time.Now}
}

func (b *backend) Crash(t *testing.T) {
	b.mu.Lock()
	gs := b.gates
	b.gates = nil
	b.mu.Unlock()
	for _, g := range gs {
		g.crash()
	}
}

func (b *backend) Scratch(t *testing.T) string {
	b.n++
	return fmt.Sprintf("%sscratch%d", b.prefix, b.n)
}

var errDead = &rbd.Error{Op: "use after a crash", Errno: syscall.EIO}

// gate passes a store's calls through until crash.
type gate struct {
	rbd.Pool
	mu     sync.Mutex
	dead   bool
	images []*gateImage
}

func (g *gate) crash() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dead = true
	for _, im := range g.images {
		im.close()
	}
	g.images = nil
}

func (g *gate) alive() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		return errDead
	}
	return nil
}

func (g *gate) Close() {}

func (g *gate) CreateImage(name string, size uint64) error {
	if err := g.alive(); err != nil {
		return err
	}
	return g.Pool.CreateImage(name, size)
}

func (g *gate) RemoveImage(name string) error {
	if err := g.alive(); err != nil {
		return err
	}
	return g.Pool.RemoveImage(name)
}

func (g *gate) ListImages() ([]string, error) {
	if err := g.alive(); err != nil {
		return nil, err
	}
	return g.Pool.ListImages()
}

func (g *gate) Clone(parent, snap, child string) error {
	if err := g.alive(); err != nil {
		return err
	}
	return g.Pool.Clone(parent, snap, child)
}

func (g *gate) WriteObject(oid string, data []byte) error {
	if err := g.alive(); err != nil {
		return err
	}
	return g.Pool.WriteObject(oid, data)
}

func (g *gate) ReadObject(oid string) ([]byte, error) {
	if err := g.alive(); err != nil {
		return nil, err
	}
	return g.Pool.ReadObject(oid)
}

func (g *gate) RemoveObject(oid string) error {
	if err := g.alive(); err != nil {
		return err
	}
	return g.Pool.RemoveObject(oid)
}

func (g *gate) OpenImage(name, snap string) (rbd.Image, error) {
	if err := g.alive(); err != nil {
		return nil, err
	}
	im, err := g.Pool.OpenImage(name, snap)
	if err != nil {
		return nil, err
	}
	gi := &gateImage{Image: im, g: g}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		im.Close()
		return nil, errDead
	}
	g.images = append(g.images, gi)
	return gi, nil
}

// gateImage is an image a gate opened; every call fails once the gate
// crashed, and the image is closed exactly once.
type gateImage struct {
	rbd.Image
	g      *gate
	once   sync.Once
	closed atomic.Bool
}

func (m *gateImage) close() {
	m.once.Do(func() { m.closed.Store(true); m.Image.Close() })
}

func (m *gateImage) ok() error {
	if m.closed.Load() {
		return errDead
	}
	return m.g.alive()
}

func (m *gateImage) Close() error {
	if err := m.ok(); err != nil {
		return nil
	}
	m.g.mu.Lock()
	for i, x := range m.g.images {
		if x == m {
			m.g.images = append(m.g.images[:i], m.g.images[i+1:]...)
			break
		}
	}
	m.g.mu.Unlock()
	m.close()
	return nil
}

func (m *gateImage) Size() (uint64, error) {
	if err := m.ok(); err != nil {
		return 0, err
	}
	return m.Image.Size()
}

func (m *gateImage) Resize(size uint64) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.Resize(size)
}

func (m *gateImage) ReadAt(p []byte, off int64) (int, error) {
	if err := m.ok(); err != nil {
		return 0, err
	}
	return m.Image.ReadAt(p, off)
}

func (m *gateImage) WriteAt(p []byte, off int64) (int, error) {
	if err := m.ok(); err != nil {
		return 0, err
	}
	return m.Image.WriteAt(p, off)
}

func (m *gateImage) WriteZeroes(off, n uint64) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.WriteZeroes(off, n)
}

func (m *gateImage) Flush() error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.Flush()
}

func (m *gateImage) CreateSnap(name string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.CreateSnap(name)
}

func (m *gateImage) RemoveSnap(name string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.RemoveSnap(name)
}

func (m *gateImage) Snaps() ([]rbd.Snap, error) {
	if err := m.ok(); err != nil {
		return nil, err
	}
	return m.Image.Snaps()
}

func (m *gateImage) ProtectSnap(name string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.ProtectSnap(name)
}

func (m *gateImage) UnprotectSnap(name string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.UnprotectSnap(name)
}

func (m *gateImage) RollbackSnap(name string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.RollbackSnap(name)
}

func (m *gateImage) Acquire() error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.Acquire()
}

func (m *gateImage) Release() error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.Release()
}

func (m *gateImage) Owners() ([]string, error) {
	if err := m.ok(); err != nil {
		return nil, err
	}
	return m.Image.Owners()
}

func (m *gateImage) BreakLock(owner string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.BreakLock(owner)
}

func (m *gateImage) Metadata(key string) (string, error) {
	if err := m.ok(); err != nil {
		return "", err
	}
	return m.Image.Metadata(key)
}

func (m *gateImage) SetMetadata(key, value string) error {
	if err := m.ok(); err != nil {
		return err
	}
	return m.Image.SetMetadata(key, value)
}

func TestRBDStoreConformance(t *testing.T) {
	replicatest.Run(t, newBackend)
}
