package dirtylog

import (
	"errors"
	"testing"
)

// TestCheckKernel agrees with what tracking finds: on a kernel that can
// track (the one the other tests of this package run on) it passes, and
// anything else must say ErrUnsupported rather than some other failure.
func TestCheckKernel(t *testing.T) {
	err := CheckKernel()
	if err != nil && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("CheckKernel: %v, want nil or ErrUnsupported", err)
	}
	t.Logf("CheckKernel: %v", err)
}
