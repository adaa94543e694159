package epochctl_test

import (
	"testing"

	"github.com/drsync/drsync/epochctl"
	"github.com/drsync/drsync/wire"
)

// Levels convert to and from the sender's compression levels by value: the
// two lists must stay in step.
func TestLevelsMatchWire(t *testing.T) {
	for _, l := range epochctl.AllLevels() {
		c := wire.Compression(l)
		if c.Validate() != nil || c.String() != l.String() {
			t.Errorf("level %d: %s here, %s in wire", l, l, c)
		}
	}
	if wire.Compression(epochctl.NumLevels).Validate() == nil {
		t.Errorf("wire has more than %d levels", epochctl.NumLevels)
	}
}
