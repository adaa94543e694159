package replica

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/vmspec"
)

// withTrailer makes a manifest file of a JSON body.
func withTrailer(body string) []byte {
	b := []byte(body + "\n")
	return fmt.Appendf(b, "xxh64 %016x\n", xxhash.Sum64(b))
}

func TestManifestGroupTag(t *testing.T) {
	m := &Manifest{Format: manifestFormat, VM: "db", Epoch: 3, Group: &GroupTag{vmspec.GroupCut{Group: "shop", Cut: 12, Members: []string{"app-1", "db"}}}}
	m.StateID = m.ComputeStateID()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"group": {`) || !strings.Contains(string(b), `"members": [`) || !strings.Contains(string(b), `"cut": 12`) {
		t.Fatalf("manifest JSON does not use the manifest's names:\n%s", b)
	}
	got, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if g := got.Tag(); g == nil || g.Group != "shop" || g.Cut != 12 || len(g.Members) != 2 {
		t.Fatalf("tag read back as %+v", g)
	}
	sid := fmt.Sprint(m.StateID)
	for _, tc := range []struct{ name, body, want string }{
		{"unknown field", `{"format": 1, "vm": "db", "epoch": 3, "cut": "2026-01-01T00:00:00Z", "applied": "2026-01-01T00:00:00Z", "state_id": ` + sid + `, "targets": [], "group": {"group": "shop", "cut": 1, "members": ["db"], "extra": 1}}`, "unknown field"},
		{"not a member", `{"format": 1, "vm": "db", "epoch": 3, "cut": "2026-01-01T00:00:00Z", "applied": "2026-01-01T00:00:00Z", "state_id": ` + sid + `, "targets": [], "group": {"group": "shop", "cut": 1, "members": ["app-1"]}}`, "db carries the cut but is not a member"},
		{"cut 0", `{"format": 1, "vm": "db", "epoch": 3, "cut": "2026-01-01T00:00:00Z", "applied": "2026-01-01T00:00:00Z", "state_id": ` + sid + `, "targets": [], "group": {"group": "shop", "cut": 0, "members": ["db"]}}`, "cut 0"},
	} {
		if _, err := ParseManifest(withTrailer(tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestManifestTableEpochs(t *testing.T) {
	for _, tc := range []struct {
		base, patch uint64
		ok          bool
	}{
		{0, 0, true}, {3, 0, true}, {2, 0, true}, {2, 3, true}, {1, 2, true},
		{4, 0, false}, // after the manifest
		{2, 4, false}, // likewise
		{0, 2, false}, // a patch over the manifest epoch's whole table
		{2, 2, false}, // a patch not after its base
		{3, 2, false},
	} {
		m := &Manifest{Format: manifestFormat, VM: "db", Epoch: 3, Targets: []TargetEntry{{
			Kind: "ram", Name: "pc.ram", Size: 1 << 20, BlockSize: vmspec.PageSize, File: "ram-0.img", Table: "ram-0.bht",
			TableBase: tc.base, TablePatch: tc.patch,
		}}}
		m.StateID = m.ComputeStateID()
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseManifest(b)
		switch {
		case tc.ok && err != nil:
			t.Errorf("base %d patch %d: %v", tc.base, tc.patch, err)
		case tc.ok && (got.Targets[0].TableBase != tc.base || got.Targets[0].TablePatch != tc.patch):
			t.Errorf("base %d patch %d read back as %d, %d", tc.base, tc.patch, got.Targets[0].TableBase, got.Targets[0].TablePatch)
		case !tc.ok && err == nil:
			t.Errorf("base %d patch %d at epoch 3 accepted", tc.base, tc.patch)
		}
	}
}
