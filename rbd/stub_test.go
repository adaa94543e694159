//go:build !ceph || !cgo

package rbd_test

import (
	"errors"
	"testing"

	"github.com/drsync/drsync/rbd"
)

// TestWithoutCeph: a binary built without the ceph tag says so.
func TestWithoutCeph(t *testing.T) {
	if _, err := rbd.Connect(rbd.Config{Client: "drsync"}); !errors.Is(err, rbd.ErrUnsupported) || rbd.Supported {
		t.Fatalf("connect without Ceph support: %v, want ErrUnsupported", err)
	}
}
