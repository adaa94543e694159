package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os/exec"
	"path"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// Store is where a site keeps its VMs' replicas, as the receiver, a
// takeover and a runbook need them. FileStore (a directory per VM, this
// package) is one implementation; every implementation passes the
// conformance suite in replica/replicatest. The staging rules (stage.go)
// and the manifest's shape are shared by all of them.
type Store interface {
	// Open locks vm's replica and recovers it from whatever a crash left
	// (see Open). A replica held by someone else is waited for up to
	// o.LockWait, then refused with ErrLocked saying what holds it; a
	// taken-over one is refused with ErrTakenOver unless o.AllowTakenOver.
	Open(ctx context.Context, vm string, o OpenOptions) (Handle, error)
	// Manifest reads vm's committed manifest without taking the lock or
	// changing anything; fs.ErrNotExist if nothing was committed yet.
	Manifest(vm string) (*Manifest, error)
	// WaitUnlocked waits up to wait for whoever holds vm's replica to let
	// go, without taking it (ErrLocked, saying what holds it).
	WaitUnlocked(ctx context.Context, vm string, wait time.Duration) error
	// Points lists the epochs of vm that can be restored, oldest first,
	// the committed one last.
	Points(vm string) ([]Point, error)
	// TakenOver returns vm's takeover mark, nil if it has none.
	TakenOver(vm string) (*TakeoverMark, error)
	// Verify rereads every image of vm's replica against its tables and
	// manifest, under the lock, changing nothing.
	Verify(vm string) (*Report, error)
	// Where names vm's replica in messages (a directory, a pool).
	Where(vm string) string
	// VMs lists the VMs the store holds a replica of (for recovery at
	// start); a store that does not exist yet holds none.
	VMs() ([]string, error)
}

// OpenOptions say who opens a replica and how patiently.
type OpenOptions struct {
	// Holder names the opener in the note a refused locker reads.
	Holder string
	// LockWait is how long Open waits for another holder to let go.
	LockWait time.Duration
	// AllowTakenOver opens a replica a takeover marked.
	AllowTakenOver bool
}

// Handle is an open, locked replica.
type Handle interface {
	// Manifest is the committed epoch (do not modify it).
	Manifest() *Manifest
	// Position is the committed epoch and the staged durable count.
	Position() wire.Position
	// Table is a target's committed block table, nil if there is none.
	Table(kind vmspec.TargetKind, name string) *blockhash.Table

	// Begin, Append, Sync and Commit stage and commit an epoch (see
	// Replica.Commit for what each guarantees). Append must not keep the
	// item's data once it returns: the receiver decodes every item into
	// one buffer.
	Begin(b *wire.EpochBegin) error
	Append(it wire.Item) error
	Sync() (uint64, error)
	Commit(c *wire.EpochCommit) error

	// Release lets go of the lock while the user waits, keeping what is
	// staged; Reacquire takes it back (see Replica.Release).
	Release() error
	Released() bool
	Reacquire(ctx context.Context, wait time.Duration) error

	// MarkTakenOver durably fences the replica: Open refuses it from now
	// on unless AllowTakenOver.
	MarkTakenOver(m TakeoverMark) error
	// Export makes epoch (the committed one, or a retained recovery point)
	// something QEMU can open. Without a copy the committed epoch is
	// exported in place; a recovery point, or a copy (keep selects the
	// targets copied, with the device state), is built in scratch, whose
	// old content is replaced and which belongs to the caller afterwards.
	Export(epoch uint64, scratch string, keep func(TargetEntry) bool) (Image, error)

	// Close releases the replica; a staged epoch stays staged.
	Close() error
}

// Image is one epoch of a replica as QEMU reads it.
type Image interface {
	Manifest() *Manifest
	// Location is where QEMU opens t's bytes: a file name here, an
	// "rbd:pool/image@snap" for an RBD store.
	Location(t *TargetEntry) string
	// OpenTarget reads t's bytes.
	OpenTarget(t *TargetEntry) (ReaderAtCloser, error)
	// DeviceState is the epoch's device-state blob; nil if it has none.
	DeviceState() ([]byte, error)
}

// ReaderAtCloser reads a target's image.
type ReaderAtCloser interface {
	io.ReaderAt
	io.Closer
}

// FileStore keeps each VM's replica in a directory of its own under Root
// (see the package comment for the layout).
type FileStore struct {
	FS            vfs.FS
	Root          string
	Now           func() time.Time
	Logger        *slog.Logger
	KeepPoints    int // Options.KeepPoints of every replica opened
	MaxTargetSize uint64

	one string // DirStore: the only replica, whatever VM its manifest names
}

// DirStore is the store holding just the replica in dir (a takeover or a
// runbook given a replica directory). Its VM is the one the manifest
// names: pass "" as the VM to its methods.
func DirStore(fsys vfs.FS, dir string) FileStore {
	return FileStore{FS: fsys, Root: path.Dir(dir), Now: time.Now, KeepPoints: KeepInherited, one: dir}
}

// Dir is the directory of vm's replica.
func (s FileStore) Dir(vm string) string {
	if s.one != "" {
		return s.one
	}
	return path.Join(s.Root, vm)
}

// Where names vm's replica: its directory.
func (s FileStore) Where(vm string) string { return s.Dir(vm) }

func (s FileStore) vm(vm string) (string, error) {
	if s.one == "" || vm != "" {
		return vm, nil
	}
	m, err := s.Manifest("")
	if err != nil {
		return "", err
	}
	return m.VM, nil
}

// Open opens vm's replica (see Store).
func (s FileStore) Open(ctx context.Context, vm string, o OpenOptions) (Handle, error) {
	vm, err := s.vm(vm)
	if err != nil {
		return nil, err
	}
	now := s.Now
	if now == nil {
		now = time.Now
	}
	ro := Options{FS: s.FS, Dir: s.Dir(vm), VM: vm, Now: now, Logger: s.Logger, MaxTargetSize: s.MaxTargetSize,
		AllowTakenOver: o.AllowTakenOver, KeepPoints: s.KeepPoints, Holder: o.Holder, LockWait: o.LockWait, ctx: ctx}
	if s.one == "" {
		ro.GroupKeepFrom = func(keep int) (uint64, error) { return GroupKeepFrom(s, vm, keep) }
	}
	r, err := Open(ro)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Manifest reads vm's committed manifest (see Store).
func (s FileStore) Manifest(vm string) (*Manifest, error) {
	name := path.Join(s.Dir(vm), manifestName)
	b, err := readFile(s.FS, name)
	if err != nil {
		return nil, err
	}
	return ParseManifest(b)
}

// WaitUnlocked waits for vm's replica to be free (see Store).
func (s FileStore) WaitUnlocked(ctx context.Context, vm string, wait time.Duration) error {
	return waitUnlocked(ctx, s.FS, s.Dir(vm), wait)
}

// Points lists vm's recovery points (see Store).
func (s FileStore) Points(vm string) ([]Point, error) { return Points(s.FS, s.Dir(vm)) }

// TakenOver returns vm's takeover mark (see Store).
func (s FileStore) TakenOver(vm string) (*TakeoverMark, error) { return TakenOver(s.FS, s.Dir(vm)) }

// Verify checks vm's replica (see Store).
func (s FileStore) Verify(vm string) (*Report, error) {
	if s.one != "" {
		vm = ""
	}
	return Verify(s.FS, s.Dir(vm), vm)
}

// Present reports whether vm's directory holds a replica at all (the
// receiver creates LOCK when it first opens one, MANIFEST when it commits
// the first epoch) and whether an epoch is staged in it, so that a reader
// leaves no lock file in a directory that is not a replica.
func (s FileStore) Present(vm string) (present, staged bool) {
	has := func(name string) bool {
		_, err := s.FS.Stat(path.Join(s.Dir(vm), name))
		return !errors.Is(err, fs.ErrNotExist)
	}
	return has(manifestName) || has("LOCK"), has(journalName)
}

// VMs lists the replica directories under Root (see Store).
func (s FileStore) VMs() ([]string, error) {
	if s.one != "" {
		m, err := s.Manifest("")
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []string{m.VM}, nil
	}
	names, err := s.FS.List(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if vmspec.ValidVMName(n) == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// Export makes epoch openable by QEMU (see Handle).
func (r *Replica) Export(epoch uint64, scratch string, keep func(TargetEntry) bool) (Image, error) {
	if r.released {
		return nil, errReleased
	}
	if epoch == r.man.Epoch && keep == nil {
		return dirImage{fs: r.o.FS, dir: r.o.Dir, m: r.man}, nil
	}
	if err := r.o.FS.RemoveAll(scratch); err != nil {
		return nil, err
	}
	if epoch != r.man.Epoch {
		m, err := Materialize(r.o.FS, r.o.Dir, epoch, scratch)
		if err != nil {
			return nil, err
		}
		return dirImage{fs: r.o.FS, dir: scratch, m: m}, nil
	}
	if err := r.o.FS.MkdirAll(scratch, 0o700); err != nil {
		return nil, err
	}
	var files []string
	if d := r.man.DeviceState; d != nil {
		files = append(files, d.File)
	}
	for _, t := range r.man.Targets {
		if keep(t) {
			files = append(files, t.File)
		}
	}
	for _, f := range files {
		if err := copySparse(r.o.FS, r.p(f), path.Join(scratch, f)); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	return dirImage{fs: r.o.FS, dir: scratch, m: r.man}, nil
}

// copySparse copies a replica file, reflinked where the file system can,
// else sparse; through fsys where it is not the real file system.
func copySparse(fsys vfs.FS, from, to string) error {
	if baseFS(fsys) != vfs.Default {
		return copyFile(fsys, from, to)
	}
	cmd := exec.Command("cp", "--reflink=auto", "--sparse=always", from, to)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// dirImage is an epoch held as files in a directory.
type dirImage struct {
	fs  vfs.FS
	dir string
	m   *Manifest
}

func (d dirImage) Manifest() *Manifest { return d.m }

func (d dirImage) Location(t *TargetEntry) string { return path.Join(d.dir, t.File) }

func (d dirImage) OpenTarget(t *TargetEntry) (ReaderAtCloser, error) {
	return d.fs.Open(d.Location(t))
}

func (d dirImage) DeviceState() ([]byte, error) {
	if d.m.DeviceState == nil {
		return nil, nil
	}
	f, err := d.fs.Open(path.Join(d.dir, d.m.DeviceState.File))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

var (
	_ Store  = FileStore{}
	_ Handle = (*Replica)(nil)
)
