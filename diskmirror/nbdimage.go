package diskmirror

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/drsync/drsync/nbd"
)

// NBDImage is an image read through an NBD export: one served by QEMU
// itself (see OpenNBD) or by a private qemu-nbd (see OpenQcow2).
type NBDImage struct {
	c    *nbd.Client
	name string   // what errors call the image
	proc *qemuNBD // private server behind the image, if any

	closeOnce sync.Once
	closeErr  error
}

// OpenNBD opens export on the NBD server listening at socketPath. The
// base:allocation context is always selected, for Extents; metaContexts
// adds more, such as nbd.DirtyBitmapContext("b0") for DirtyExtents. ctx
// bounds the connection and handshake only.
func OpenNBD(ctx context.Context, socketPath, export string, metaContexts ...string) (*NBDImage, error) {
	contexts := []string{nbd.ContextBaseAllocation}
	for _, m := range metaContexts {
		if !slices.Contains(contexts, m) {
			contexts = append(contexts, m)
		}
	}
	c, err := nbd.Dial(ctx, "unix", socketPath, nbd.Options{Export: export, MetaContexts: contexts})
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open %w", err)
	}
	return &NBDImage{c: c, name: fmt.Sprintf("NBD export %q at %s", export, socketPath)}, nil
}

func (m *NBDImage) Size() int64 { return m.c.Size() }

func (m *NBDImage) ReadAt(p []byte, off int64) (int, error) { return m.c.ReadAt(p, off) }

// ReadAtContext is ReadAt bounded by ctx. An interrupted read leaves the
// image unusable.
func (m *NBDImage) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	return m.c.ReadAtContext(ctx, p, off)
}

// Extents reports base:allocation: extents the server marks as reading
// zeros are Zero. Unallocated extents without the zero flag (their content
// is undefined for the server) are reported as data.
func (m *NBDImage) Extents(ctx context.Context, off, n int64) ([]Extent, error) {
	if err := checkRange(m.Size(), off, n); err != nil {
		return nil, fmt.Errorf("diskmirror: extents of %s: %w", m.name, err)
	}
	ext, err := m.c.BlockStatus(ctx, nbd.ContextBaseAllocation, off, n)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: extents of %s: %w", m.name, err)
	}
	out := make([]Extent, 0, len(ext))
	for _, e := range ext {
		out = appendExtent(out, Extent{Off: e.Off, Len: e.Len, Zero: e.Flags&nbd.StateZero != 0})
	}
	return out, nil
}

// DirtyExtents describes [off, off+n) in the dirty bitmap named bitmap,
// whose context must have been selected when the image was opened
// (errors.Is(err, nbd.ErrMetaContextUnavailable) otherwise). Callers
// should bound n: a fragmented bitmap yields one extent per granule.
func (m *NBDImage) DirtyExtents(ctx context.Context, bitmap string, off, n int64) ([]DirtyExtent, error) {
	if err := checkRange(m.Size(), off, n); err != nil {
		return nil, fmt.Errorf("diskmirror: dirty extents of %s: %w", m.name, err)
	}
	ext, err := m.c.BlockStatus(ctx, nbd.DirtyBitmapContext(bitmap), off, n)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: dirty extents of %s, bitmap %q: %w", m.name, bitmap, err)
	}
	out := make([]DirtyExtent, 0, len(ext))
	for _, e := range ext {
		d := DirtyExtent{Off: e.Off, Len: e.Len, Dirty: e.Flags&nbd.StateDirty != 0}
		if k := len(out); k > 0 && out[k-1].Dirty == d.Dirty && out[k-1].Off+out[k-1].Len == d.Off {
			out[k-1].Len += d.Len
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// Close disconnects, and for images from OpenQcow2 stops qemu-nbd and
// removes its directory.
func (m *NBDImage) Close() error {
	m.closeOnce.Do(func() {
		err := m.c.Close()
		if m.proc != nil {
			err = errors.Join(err, m.proc.stop())
		}
		if err != nil {
			m.closeErr = fmt.Errorf("diskmirror: close %s: %w", m.name, err)
		}
	})
	return m.closeErr
}
