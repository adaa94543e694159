package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

// SeedTarget is an image a seeded replica starts from.
type SeedTarget struct {
	Kind      vmspec.TargetKind
	Name      string
	Size      int64
	BlockSize int
	Reader    io.ReaderAt
}

// Seed creates a replica in dir from images already at this site: the
// protected site's own disks when a failed-over VM comes back (failback).
// The replica holds them as epoch 1; a sender whose VM has moved on since
// then fetches its block tables and sends only the blocks that differ,
// instead of everything. dir must not hold a replica yet.
func Seed(fsys vfs.FS, dir, vm string, targets []SeedTarget, now func() time.Time) (*Manifest, error) {
	if err := vmspec.ValidVMName(vm); err != nil {
		return nil, err
	}
	if _, err := fsys.Stat(path.Join(dir, manifestName)); err == nil {
		return nil, fmt.Errorf("seed %s: a replica is already there", dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("seed %s: %w", dir, err)
	}
	if err := vfs.MkdirAllDurable(fsys, dir, dirPerm); err != nil {
		return nil, fmt.Errorf("seed %s: %w (%w)", dir, err, ErrStorage)
	}
	unlock, err := lock(context.Background(), fsys, path.Join(dir, "LOCK"), fmt.Sprintf("drsync seed (pid %d) is creating it", os.Getpid()), 0)
	if err != nil {
		return nil, err
	}
	defer unlock.Close()
	m := &Manifest{Format: manifestFormat, VM: vm, Epoch: 1, Cut: now().UTC(), Applied: now().UTC()}
	n := map[vmspec.TargetKind]int{}
	buf := make([]byte, 1<<20)
	for _, t := range targets {
		if err := vmspec.ValidTargetName(t.Name); err != nil {
			return nil, err
		}
		if t.Size <= 0 || t.BlockSize < 512 || (1<<20)%t.BlockSize != 0 {
			return nil, fmt.Errorf("seed %s: %s: size %d, block size %d", dir, t.Name, t.Size, t.BlockSize)
		}
		e := TargetEntry{Kind: kindName(t.Kind), Name: t.Name, Size: t.Size, BlockSize: t.BlockSize,
			File: fmt.Sprintf("%s-%d.img", kindName(t.Kind), n[t.Kind]), Table: fmt.Sprintf("%s-%d.bht", kindName(t.Kind), n[t.Kind])}
		n[t.Kind]++
		f, err := fsys.Create(path.Join(dir, e.File))
		if err != nil {
			return nil, fmt.Errorf("seed %s: %w (%w)", dir, err, ErrStorage)
		}
		tab := blockhash.NewZero(t.Size, t.BlockSize)
		for off := int64(0); off < t.Size; off += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), t.Size-off)]
			if _, err := t.Reader.ReadAt(b, off); err != nil && err != io.EOF {
				f.Close()
				return nil, fmt.Errorf("seed %s: read %s at %d: %w", dir, t.Name, off, err)
			}
			for i := 0; i < len(b); i += t.BlockSize {
				tab.Hashes[(off+int64(i))/int64(t.BlockSize)] = blockhash.Hash(b[i:min(i+t.BlockSize, len(b))])
			}
			if !blockhash.IsZero(b) { // holes stay holes
				if _, err := f.WriteAt(b, off); err != nil {
					f.Close()
					return nil, fmt.Errorf("seed %s: %w (%w)", dir, err, ErrStorage)
				}
			}
		}
		err = f.Truncate(t.Size)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = writeFileSync(fsys, path.Join(dir, e.Table), tab.Marshal())
		}
		if err != nil {
			return nil, fmt.Errorf("seed %s: %w (%w)", dir, err, ErrStorage)
		}
		e.Digest = tab.Digest()
		m.Targets = append(m.Targets, e)
	}
	m.StateID = m.ComputeStateID()
	b, err := m.Marshal()
	if err == nil {
		err = vfs.WriteFileDurable(fsys, path.Join(dir, manifestName), b, filePerm)
	}
	if err != nil {
		return nil, fmt.Errorf("seed %s: %w (%w)", dir, err, ErrStorage)
	}
	return m, nil
}
