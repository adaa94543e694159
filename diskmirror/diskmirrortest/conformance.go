// Package diskmirrortest checks implementations of diskmirror.Image
// against the interface's contract.
package diskmirrortest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/drsync/drsync/diskmirror"
)

// Run checks that img honours the diskmirror.Image contract and holds
// exactly want. It closes img at the end.
func Run(t *testing.T, img diskmirror.Image, want []byte) {
	t.Helper()
	size := int64(len(want))
	ctx := t.Context()

	t.Run("Size", func(t *testing.T) {
		if got := img.Size(); got != size {
			t.Fatalf("Size = %d, want %d", got, size)
		}
	})

	t.Run("ReadAll", func(t *testing.T) {
		got := make([]byte, size)
		if n, err := img.ReadAt(got, 0); n != len(got) || (err != nil && !(err == io.EOF && size == 0)) {
			t.Fatalf("ReadAt(whole) = %d, %v", n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("content differs at offset %d", firstDiff(got, want))
		}
	})

	t.Run("ReadAtRandom", func(t *testing.T) {
		if size == 0 {
			t.Skip("empty image")
		}
		r := rand.New(rand.NewPCG(uint64(size), 1))
		for range 64 {
			off := r.Int64N(size)
			p := make([]byte, r.Int64N(min(size-off, 1<<20))+1)
			n, err := img.ReadAt(p, off)
			if n != len(p) || err != nil {
				t.Fatalf("ReadAt(%d, %d) = %d, %v", off, len(p), n, err)
			}
			if !bytes.Equal(p, want[off:off+int64(n)]) {
				t.Fatalf("ReadAt(%d, %d): content differs", off, len(p))
			}
		}
	})

	t.Run("ReadAtEnd", func(t *testing.T) {
		p := make([]byte, 100)
		if size > 10 {
			n, err := img.ReadAt(p, size-10)
			if n != 10 || err != io.EOF || !bytes.Equal(p[:10], want[size-10:]) {
				t.Errorf("ReadAt across end = %d, %v; want 10, io.EOF", n, err)
			}
		}
		if n, err := img.ReadAt(p, size); n != 0 || err != io.EOF {
			t.Errorf("ReadAt(at end) = %d, %v; want 0, io.EOF", n, err)
		}
		if n, err := img.ReadAt(p, size+4096); n != 0 || err != io.EOF {
			t.Errorf("ReadAt(past end) = %d, %v; want 0, io.EOF", n, err)
		}
		if _, err := img.ReadAt(p, -1); err == nil || err == io.EOF {
			t.Errorf("ReadAt(-1) = %v, want an error", err)
		}
	})

	t.Run("ExtentsWhole", func(t *testing.T) {
		ext, err := img.Extents(ctx, 0, size)
		if err != nil {
			t.Fatal(err)
		}
		checkExtents(t, ext, want, 0, size)
	})

	t.Run("ExtentsRandom", func(t *testing.T) {
		r := rand.New(rand.NewPCG(uint64(size), 2))
		for range 64 {
			off := r.Int64N(size + 1)
			n := r.Int64N(size - off + 1)
			ext, err := img.Extents(ctx, off, n)
			if err != nil {
				t.Fatalf("Extents(%d, %d): %v", off, n, err)
			}
			checkExtents(t, ext, want, off, n)
		}
	})

	t.Run("ExtentsOutOfRange", func(t *testing.T) {
		for _, r := range [][2]int64{{-1, 1}, {0, -1}, {0, size + 1}, {size, 1}, {size + 1, 0}, {1, size}} {
			if _, err := img.Extents(ctx, r[0], r[1]); !errors.Is(err, diskmirror.ErrOutOfRange) {
				t.Errorf("Extents(%d, %d) = %v, want ErrOutOfRange", r[0], r[1], err)
			}
		}
	})

	t.Run("ExtentsCanceled", func(t *testing.T) {
		if size == 0 {
			t.Skip("empty image")
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := img.Extents(cctx, 0, size); !errors.Is(err, context.Canceled) {
			t.Errorf("Extents with canceled context = %v, want context.Canceled", err)
		}
		// A call refused before it started must not harm the image.
		if _, err := img.Extents(ctx, 0, size); err != nil {
			t.Errorf("Extents after a canceled call: %v", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		if size == 0 {
			t.Skip("empty image")
		}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 3))
				for range 16 {
					off := r.Int64N(size)
					n := r.Int64N(min(size-off, 256<<10)) + 1
					if g%2 == 0 {
						p := make([]byte, n)
						if _, err := img.ReadAt(p, off); err != nil || !bytes.Equal(p, want[off:off+n]) {
							t.Errorf("concurrent ReadAt(%d, %d): %v or content differs", off, n, err)
							return
						}
					} else if _, err := img.Extents(ctx, off, n); err != nil {
						t.Errorf("concurrent Extents(%d, %d): %v", off, n, err)
						return
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("Close", func(t *testing.T) {
		if err := img.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := img.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := img.ReadAt(make([]byte, 1), 0); err == nil || err == io.EOF {
			t.Errorf("ReadAt after Close = %v, want an error", err)
		}
		if size > 0 {
			if _, err := img.Extents(ctx, 0, 1); err == nil {
				t.Error("Extents after Close succeeded")
			}
		}
	})
}

// checkExtents verifies that ext tiles [off, off+n) and that runs marked
// Zero really read as zeros in want.
func checkExtents(t *testing.T, ext []diskmirror.Extent, want []byte, off, n int64) {
	t.Helper()
	pos := off
	for i, e := range ext {
		if e.Off != pos || e.Len <= 0 {
			t.Fatalf("Extents(%d, %d): extent %d %+v does not continue at %d: %v", off, n, i, e, pos, ext)
		}
		if i > 0 && ext[i-1].Zero == e.Zero {
			t.Errorf("Extents(%d, %d): extents %d and %d not merged", off, n, i-1, i)
		}
		if e.Zero {
			if d := firstNonZero(want[e.Off : e.Off+e.Len]); d >= 0 {
				t.Fatalf("Extents(%d, %d): zero extent %+v has data at %d", off, n, e, e.Off+int64(d))
			}
		}
		pos += e.Len
	}
	if pos != off+n {
		t.Fatalf("Extents(%d, %d) end at %d: %v", off, n, pos, ext)
	}
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
