package rbdfault_test

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/rbd/rbdfault"
	"github.com/drsync/drsync/vfs/errorfs"
)

// memPool is just enough of a pool to see whether an operation reached it.
type memPool struct {
	rbd.Pool // the methods the test does not call
	images   map[string]*memImage
}

func (p *memPool) Name() string { return "mem" }

func (p *memPool) CreateImage(name string, size uint64) error {
	p.images[name] = &memImage{data: make([]byte, size)}
	return nil
}

func (p *memPool) OpenImage(name, snap string) (rbd.Image, error) {
	m, ok := p.images[name]
	if !ok {
		return nil, &rbd.Error{Op: "open image", Name: name, Errno: syscall.ENOENT}
	}
	return m, nil
}

type memImage struct {
	rbd.Image
	data   []byte
	snaps  []string
	closed bool
}

func (m *memImage) WriteAt(p []byte, off int64) (int, error) { return copy(m.data[off:], p), nil }
func (m *memImage) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m.data[off:]), nil }
func (m *memImage) Flush() error                             { return nil }
func (m *memImage) CreateSnap(name string) error             { m.snaps = append(m.snaps, name); return nil }
func (m *memImage) Close() error                             { m.closed = true; return nil }

func TestInjection(t *testing.T) {
	for _, tc := range []struct {
		name string
		inj  func() errorfs.Injector
		// want: which step fails ("" none) and what its error matches
		fails string
		is    []error
		text  string
	}{
		{"none", func() errorfs.Injector { return &errorfs.Counter{} }, "", nil, ""},
		{"open fails", func() errorfs.Injector { return errorfs.OnIndex(0, errorfs.ErrInjected) }, "open", []error{errorfs.ErrInjected}, "injected"},
		{"write fails", func() errorfs.Injector { return errorfs.OnIndex(1, errorfs.ErrInjected) }, "write", []error{errorfs.ErrInjected}, "writeat vda"},
		{"pool full at the write", func() errorfs.Injector {
			return errorfs.When(errorfs.Ops(errorfs.OpWriteAt), errorfs.FromIndex(0, syscall.EDQUOT))
		}, "write", []error{errorfs.ErrInjected, rbd.ErrNoSpace, syscall.EDQUOT}, "disk quota exceeded"},
		{"snapshot fails", func() errorfs.Injector {
			return errorfs.When(errorfs.Ops(errorfs.OpRename), errorfs.FromIndex(0, syscall.ENOSPC))
		}, "snap", []error{errorfs.ErrInjected, rbd.ErrNoSpace}, "@e1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := &memPool{images: map[string]*memImage{}}
			inner.CreateImage("vda", 16)
			p := rbdfault.Wrap(inner, tc.inj())
			failed, err := "", error(nil)
			im, err := p.OpenImage("vda", "")
			if err != nil {
				failed = "open"
			} else if _, err = im.WriteAt([]byte("new"), 4); err != nil {
				failed = "write"
			} else if err = im.CreateSnap("e1"); err != nil {
				failed = "snap"
			}
			if failed != tc.fails {
				t.Fatalf("failed at %q (%v), want %q", failed, err, tc.fails)
			}
			for _, want := range tc.is {
				if !errors.Is(err, want) {
					t.Errorf("%v does not match %v", err, want)
				}
			}
			if !strings.Contains(errString(err), tc.text) {
				t.Errorf("%v does not say %q", err, tc.text)
			}
			// A failed operation did nothing.
			wrote := bytes.Contains(inner.images["vda"].data, []byte("new"))
			if wrote != (failed == "" || failed == "snap") {
				t.Errorf("failed at %q, yet the image holds the write: %v", failed, wrote)
			}
			if snapped := len(inner.images["vda"].snaps) > 0; snapped != (failed == "") {
				t.Errorf("failed at %q, yet snapshots: %v", failed, inner.images["vda"].snaps)
			}
			if im != nil {
				im.Close()
				if !inner.images["vda"].closed {
					t.Error("the image was not closed")
				}
			}
		})
	}
}

func TestCloseClosesWhenFailed(t *testing.T) {
	inner := &memPool{images: map[string]*memImage{}}
	inner.CreateImage("vda", 16)
	p := rbdfault.Wrap(inner, errorfs.When(errorfs.Ops(errorfs.OpClose), errorfs.FromIndex(0, errorfs.ErrInjected)))
	im, err := p.OpenImage("vda", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); !errors.Is(err, errorfs.ErrInjected) || !inner.images["vda"].closed {
		t.Fatalf("close: %v, closed %v; want the injected error and the image closed", err, inner.images["vda"].closed)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
