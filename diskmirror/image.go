package diskmirror

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Extent is a run of an image. Zero means it reads as zeros (a hole or a
// zero-allocated region) and need not be read; otherwise the data must be
// read, though it may still happen to be zeros.
type Extent struct {
	Off, Len int64
	Zero     bool
}

// DirtyExtent is a run of a dirty bitmap.
type DirtyExtent struct {
	Off, Len int64
	Dirty    bool
}

// Image is a readable disk image of fixed size.
//
// ReadAt follows io.ReaderAt (reads reaching past Size return io.EOF) and
// is safe for concurrent use, as is Extents.
type Image interface {
	Size() int64
	io.ReaderAt
	// Extents describes [off, off+n): sorted, contiguous, covering the
	// range exactly, adjacent extents of the same kind merged. The range
	// must lie within the image (ErrOutOfRange otherwise).
	Extents(ctx context.Context, off, n int64) ([]Extent, error)
	// Close releases the image; later calls fail. Closing twice is harmless.
	Close() error
}

// Marker errors; test with errors.Is.
var (
	// ErrFormat marks an image whose format is not the expected or a
	// supported one.
	ErrFormat = errors.New("diskmirror: unsupported image format")
	// ErrOutOfRange marks a range outside the image.
	ErrOutOfRange = errors.New("diskmirror: range outside image")
	// ErrQemuNBD marks a failure of the qemu-nbd helper process, with its
	// own message attached.
	ErrQemuNBD = errors.New("diskmirror: qemu-nbd failed")
)

func checkRange(size, off, n int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("[%d, +%d) in an image of %d bytes: %w", off, n, size, ErrOutOfRange)
	}
	return nil
}

// appendExtent appends e, merging it into the last extent when they touch
// and are of the same kind.
func appendExtent(out []Extent, e Extent) []Extent {
	if e.Len == 0 {
		return out
	}
	if n := len(out); n > 0 && out[n-1].Zero == e.Zero && out[n-1].Off+out[n-1].Len == e.Off {
		out[n-1].Len += e.Len
		return out
	}
	return append(out, e)
}

// readAtWithin adapts a reader of exactly size bytes to io.ReaderAt's
// end-of-image rules.
func readAtWithin(size int64, p []byte, off int64, read func(p []byte, off int64) (int, error)) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("diskmirror: read at negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if rem := size - off; int64(len(p)) > rem {
		want = p[:rem]
	}
	n, err := read(want, off)
	if err == nil && len(want) < len(p) {
		err = io.EOF
	}
	return n, err
}
