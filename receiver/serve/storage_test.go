package serve

import (
	"errors"
	"testing"

	"github.com/drsync/drsync/rbd"
)

// TestBackendWithoutCeph: a binary built without Ceph support says so
// when its configuration asks for the rbd backend, before it listens.
func TestBackendWithoutCeph(t *testing.T) {
	if rbd.Supported {
		t.Skip("built with the ceph tag")
	}
	_, _, err := Backend{Kind: "rbd", Pool: "drsync"}.openStore(0, nil)
	if !errors.Is(err, rbd.ErrUnsupported) {
		t.Fatalf("open an rbd store without Ceph support: %v, want rbd.ErrUnsupported", err)
	}
	s, closeFn, err := Backend{}.openStore(0, nil)
	if s != nil || err != nil {
		t.Fatalf("file backend: %v, %v; want no store (the receiver's own)", s, err)
	}
	closeFn()
}
