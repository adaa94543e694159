package rbdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vmspec"
)

// Store keeps each VM's replica in an RBD pool (see the package comment
// for the names and layout).
type Store struct {
	Pool rbd.Pool
	// Prefix starts the name of everything the store creates, so several
	// stores can share a pool ("" for none).
	Prefix        string
	Now           func() time.Time
	Logger        *slog.Logger
	KeepPoints    int
	MaxTargetSize uint64
	// Cluster is how QEMU reaches the cluster (its user and ceph.conf),
	// for the rbd: file names of Image.Location.
	Cluster rbd.Config
}

const (
	holderKey   = "drsync.holder"
	lockImgSize = 4096
)

func (s *Store) base(vm string) string { return s.Prefix + vm }

func (s *Store) name(vm, what string) string { return s.base(vm) + "." + what }

// Where names vm's replica: its pool and the prefix of its images.
func (s *Store) Where(vm string) string { return "rbd:" + s.Pool.Name() + "/" + s.base(vm) }

func storageErr(what string, err error) error {
	return fmt.Errorf("%s: %w (%w)", what, err, replica.ErrStorage)
}

func notExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// Manifest reads vm's committed manifest (see replica.Store).
func (s *Store) Manifest(vm string) (*replica.Manifest, error) {
	b, err := s.Pool.ReadObject(s.name(vm, "manifest"))
	if err != nil {
		return nil, err
	}
	return replica.ParseManifest(b)
}

// TakenOver returns vm's takeover mark (see replica.Store).
func (s *Store) TakenOver(vm string) (*replica.TakeoverMark, error) {
	b, err := s.Pool.ReadObject(s.name(vm, "takenover"))
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr("read takeover mark", err)
	}
	var m replica.TakeoverMark
	if err := json.Unmarshal(b, &m); err != nil {
		// A mark that cannot be read still marks.
		return &replica.TakeoverMark{Reason: "unreadable mark: " + err.Error()}, nil
	}
	return &m, nil
}

// VMs lists the VMs with a replica in the pool: those with a lock image.
func (s *Store) VMs() ([]string, error) {
	names, err := s.Pool.ListImages()
	if err != nil {
		return nil, storageErr("list images", err)
	}
	var out []string
	for _, n := range names {
		vm, ok := strings.CutSuffix(n, ".lock")
		if !ok || !strings.HasPrefix(vm, s.Prefix) {
			continue
		}
		vm = vm[len(s.Prefix):]
		if vmspec.ValidVMName(vm) == nil {
			out = append(out, vm)
		}
	}
	return out, nil
}

// lockImage opens vm's lock image, creating it if create.
func (s *Store) lockImage(vm string, create bool) (rbd.Image, error) {
	name := s.name(vm, "lock")
	if create {
		if err := s.Pool.CreateImage(name, lockImgSize); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, storageErr("create lock image", err)
		}
	}
	im, err := s.Pool.OpenImage(name, "")
	if err != nil {
		if notExist(err) {
			return nil, err
		}
		return nil, storageErr("open lock image", err)
	}
	return im, nil
}

// refused is the ErrLocked error saying what holds vm's replica.
func (s *Store) refused(vm string, im rbd.Image) error {
	note, err := im.Metadata(holderKey)
	if err != nil || note == "" {
		note = "held by a client that does not say what it does"
	}
	return fmt.Errorf("%s: %w: %s", s.Where(vm), replica.ErrLocked, note)
}

// acquire takes im's exclusive lock, waiting up to wait for a live holder
// to let go; a dead holder's lock is broken by rbd.Acquire once its watch
// has expired.
func (s *Store) acquire(ctx context.Context, vm string, im rbd.Image, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := im.Acquire()
		if err == nil {
			return nil
		}
		if !errors.Is(err, rbd.ErrLocked) {
			return storageErr("lock "+s.Where(vm), err)
		}
		if time.Now().After(deadline) {
			return s.refused(vm, im)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%w)", s.refused(vm, im), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitUnlocked waits for vm's replica to be free (see replica.Store).
func (s *Store) WaitUnlocked(ctx context.Context, vm string, wait time.Duration) error {
	im, err := s.lockImage(vm, false)
	if notExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer im.Close()
	deadline := time.Now().Add(wait)
	for {
		owners, err := im.Owners()
		if err != nil {
			return storageErr("list lock owners", err)
		}
		if len(owners) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return s.refused(vm, im)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%w)", s.refused(vm, im), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func who(holder, activity string) string {
	if holder == "" {
		holder = "drsync"
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s (pid %d on %s) is %s", holder, os.Getpid(), host, activity)
}

// Open locks and opens vm's replica, recovering it (see replica.Store).
func (s *Store) Open(ctx context.Context, vm string, o replica.OpenOptions) (replica.Handle, error) {
	if err := vmspec.ValidVMName(vm); err != nil {
		return nil, fmt.Errorf("rbdstore: %w", err)
	}
	im, err := s.lockImage(vm, true)
	if err != nil {
		return nil, err
	}
	if err := s.acquire(ctx, vm, im, o.LockWait); err != nil {
		im.Close()
		return nil, err
	}
	h := &handle{s: s, vm: vm, o: o, lock: im, tables: map[string]*blockhash.Table{}}
	h.log = s.Logger
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.log = h.log.With("vm", vm)
	h.note("opening it")
	if !o.AllowTakenOver {
		mark, err := s.TakenOver(vm)
		if err == nil && mark != nil {
			err = takenOverError(vm, mark)
		}
		if err != nil {
			im.Close()
			return nil, err
		}
	}
	if err := h.load(); err != nil {
		im.Close()
		return nil, err
	}
	h.note(fmt.Sprintf("using it (committed epoch %d)", h.man.Epoch))
	return h, nil
}

func takenOverError(vm string, mark *replica.TakeoverMark) error {
	return fmt.Errorf("the replica of %s was taken over at %s from epoch %d (%s); it no longer follows the protected site: %w",
		vm, mark.At.UTC().Format(time.RFC3339), mark.Epoch, mark.Reason, replica.ErrTakenOver)
}

// Points lists vm's recovery points: the epochs whose snapshot and point
// manifest are both kept, and the committed epoch last.
func (s *Store) Points(vm string) ([]replica.Point, error) {
	cur, err := s.Manifest(vm)
	if err != nil {
		return nil, err
	}
	eps, err := s.snapEpochs(vm, cur)
	if err != nil {
		return nil, err
	}
	var out []replica.Point
	for _, e := range eps {
		if e >= cur.Epoch {
			continue
		}
		m, err := s.pointManifest(vm, e)
		if err != nil {
			continue
		}
		out = append(out, replica.Point{Manifest: m})
	}
	return append(out, replica.Point{Manifest: cur}), nil
}

func (s *Store) pointManifest(vm string, e uint64) (*replica.Manifest, error) {
	b, err := s.Pool.ReadObject(s.name(vm, pointName(e)))
	if err != nil {
		return nil, err
	}
	m, err := replica.ParseManifest(b)
	if err != nil {
		return nil, err
	}
	if m.Epoch != e {
		return nil, fmt.Errorf("point %d holds epoch %d: %w", e, m.Epoch, replica.ErrCorrupt)
	}
	return m, nil
}

func pointName(e uint64) string { return "point." + strconv.FormatUint(e, 10) }

func snapName(e uint64) string { return "e" + strconv.FormatUint(e, 10) }

// snapEpochs lists the epochs every image of m has a snapshot of, in
// ascending order.
func (s *Store) snapEpochs(vm string, m *replica.Manifest) ([]uint64, error) {
	if len(m.Targets) == 0 {
		return nil, nil
	}
	count := map[uint64]int{}
	for _, t := range m.Targets {
		im, err := s.Pool.OpenImage(s.name(vm, t.File), "")
		if err != nil {
			return nil, storageErr("open image "+t.File, err)
		}
		snaps, err := im.Snaps()
		im.Close()
		if err != nil {
			return nil, storageErr("list snapshots of "+t.File, err)
		}
		for _, sn := range snaps {
			if e, ok := parseSnap(sn.Name); ok {
				count[e]++
			}
		}
	}
	var out []uint64
	for e, n := range count {
		if n == len(m.Targets) {
			out = append(out, e)
		}
	}
	sortU64(out)
	return out, nil
}

func parseSnap(name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(name, "e")
	if !ok {
		return 0, false
	}
	e, err := strconv.ParseUint(rest, 10, 64)
	return e, err == nil
}

func sortU64(a []uint64) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// Verify rereads every image of vm's replica against its tables and
// manifest, under the lock, changing nothing.
func (s *Store) Verify(vm string) (*replica.Report, error) {
	im, err := s.lockImage(vm, false)
	if err != nil {
		return nil, err
	}
	defer im.Close()
	if err := s.acquire(context.Background(), vm, im, 0); err != nil {
		return nil, err
	}
	m, err := s.Manifest(vm)
	if err != nil {
		return nil, err
	}
	rep := &replica.Report{VM: vm, Epoch: m.Epoch}
	if _, err := s.Pool.ReadObject(s.name(vm, "journal")); err == nil {
		rep.Staged = "a journal is staged next to the replica"
	}
	for _, t := range m.Targets {
		tr := replica.TargetReport{Kind: t.Kind, Name: t.Name, Size: t.Size, Digest: t.Digest}
		got, err := s.hashImage(vm, t.File, "", t.Size, t.BlockSize)
		if err != nil {
			return nil, err
		}
		// readTable also checks the table's digest against the manifest.
		tab, _, err := readTable(func(name string) ([]byte, error) { return s.Pool.ReadObject(s.name(vm, name)) }, t, m.Epoch)
		switch {
		case err != nil:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: block table: %v", t.Kind, t.Name, err))
		case len(tab.Hashes) != len(got.Hashes):
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: block table has %d blocks, image %d", t.Kind, t.Name, len(tab.Hashes), len(got.Hashes)))
		default:
			for i := range got.Hashes {
				if got.Hashes[i] != tab.Hashes[i] {
					if tr.BadCount < 16 {
						tr.BadBlocks = append(tr.BadBlocks, int64(i))
					}
					tr.BadCount++
				}
			}
			if tr.BadCount > 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: %d blocks differ from the block table", t.Kind, t.Name, tr.BadCount))
			}
		}
		tr.OK = err == nil && tr.BadCount == 0 && got.Digest() == t.Digest
		if err == nil && tr.BadCount == 0 && got.Digest() != t.Digest {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: content digest %016x, manifest says %016x", t.Kind, t.Name, got.Digest(), t.Digest))
		}
		rep.Targets = append(rep.Targets, tr)
	}
	if d := m.DeviceState; d != nil {
		b, err := s.Pool.ReadObject(s.name(vm, d.File))
		ok := err == nil && int64(len(b)) == d.Size && xxh(b) == d.Hash
		rep.DeviceState = &replica.Check{File: d.File, OK: ok}
		if !ok {
			rep.Problems = append(rep.Problems, fmt.Sprintf("device state %s differs from the manifest", d.File))
		}
	}
	return rep, nil
}

// hashImage computes the block table of an image's first size bytes.
func (s *Store) hashImage(vm, file, snap string, size int64, bs int) (*blockhash.Table, error) {
	im, err := s.Pool.OpenImage(s.name(vm, file), snap)
	if err != nil {
		return nil, storageErr("open image "+file, err)
	}
	defer im.Close()
	tab := blockhash.NewZero(size, bs)
	step := int64(max(bs, 4<<20) / bs * bs)
	buf := make([]byte, step)
	for off := int64(0); off < size; off += step {
		n := min(step, size-off)
		if _, err := im.ReadAt(buf[:n], off); err != nil {
			return nil, storageErr("read image "+file, err)
		}
		for i := int64(0); i < n; i += int64(bs) {
			tab.Hashes[(off+i)/int64(bs)] = blockhash.Hash(buf[i:min(i+int64(bs), n)])
		}
	}
	return tab, nil
}

var _ replica.Store = (*Store)(nil)
