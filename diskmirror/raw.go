package diskmirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawImage is a raw image in a regular file or a block device. Its size
// is fixed when opened.
type rawImage struct {
	f    *os.File
	rc   syscall.RawConn
	path string
	size int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// OpenRaw opens a raw image read-only. Extents come from the file
// system's SEEK_DATA/SEEK_HOLE; where those are unsupported the whole
// image is reported as data.
func OpenRaw(path string) (Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("diskmirror: open raw: %w", err)
	}
	img, err := newRaw(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("diskmirror: open raw %s: %w", path, err)
	}
	return img, nil
}

func newRaw(f *os.File) (*rawImage, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	switch mode := st.Mode(); {
	case mode.IsRegular():
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		// Stat reports 0 for block devices; their end is their size.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("not a regular file or block device (%v)", mode.Type())
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &rawImage{f: f, rc: rc, path: f.Name(), size: size}, nil
}

func (r *rawImage) Size() int64 { return r.size }

func (r *rawImage) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, fmt.Errorf("diskmirror: read %s: %w", r.path, os.ErrClosed)
	}
	return readAtWithin(r.size, p, off, func(p []byte, off int64) (int, error) {
		n, err := r.f.ReadAt(p, off)
		if err == io.EOF {
			// Within the size fixed at open: the file shrank under us.
			return n, fmt.Errorf("diskmirror: %s shrank below %d bytes: %w", r.path, off+int64(len(p)), io.ErrUnexpectedEOF)
		}
		return n, err
	})
}

func (r *rawImage) Extents(ctx context.Context, off, n int64) ([]Extent, error) {
	if err := checkRange(r.size, off, n); err != nil {
		return nil, fmt.Errorf("diskmirror: extents of %s: %w", r.path, err)
	}
	var out []Extent
	end := off + n
	for pos := off; pos < end; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := r.seek(pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			// No data at or after pos.
			data = end
		case unsupportedSeek(err):
			return appendExtent(out, Extent{Off: pos, Len: end - pos}), nil
		case err != nil:
			return nil, fmt.Errorf("diskmirror: extents of %s: SEEK_DATA at %d: %w", r.path, pos, err)
		}
		data = max(min(data, end), pos)
		out = appendExtent(out, Extent{Off: pos, Len: data - pos, Zero: true})
		if data == end {
			break
		}
		hole, err := r.seek(data, unix.SEEK_HOLE)
		switch {
		case errors.Is(err, unix.ENXIO), unsupportedSeek(err):
			hole = end
		case err != nil:
			return nil, fmt.Errorf("diskmirror: extents of %s: SEEK_HOLE at %d: %w", r.path, data, err)
		}
		// Guarantee progress even if the file changes between the calls.
		if hole <= data || hole > end {
			hole = end
		}
		out = appendExtent(out, Extent{Off: data, Len: hole - data})
		pos = hole
	}
	return out, nil
}

// seek runs lseek directly so that concurrent callers do not disturb each
// other through os.File's offset bookkeeping; ReadAt uses pread and does
// not care where the offset is left.
func (r *rawImage) seek(off int64, whence int) (int64, error) {
	var res int64
	var serr error
	if err := r.rc.Control(func(fd uintptr) { res, serr = unix.Seek(int(fd), off, whence) }); err != nil {
		return 0, err
	}
	return res, serr
}

func unsupportedSeek(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}

func (r *rawImage) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		r.closeErr = r.f.Close()
	})
	return r.closeErr
}
