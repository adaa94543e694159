package groupcut

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidateGroups(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("AB", 32)
	vms := map[string]LocalVM{"a": {Live: true}, "b": {Live: true}, "f": {}, "p": {Live: true, OwnPacing: true}}
	tests := []struct {
		name   string
		groups []Options
		key    string // "" if valid
		index  int
		vm     string
	}{
		{name: "one host", groups: []Options{{Name: "g", Members: []string{"b", "a"}, RPO: time.Minute}}},
		{name: "leader", groups: []Options{{Name: "g", Members: []string{"a", "x"}, RPO: time.Minute, Listen: ":1", Peers: []string{fp}}}},
		{name: "bad peer", groups: []Options{{Name: "g", Members: []string{"a", "x"}, RPO: time.Minute, Listen: ":1", Peers: []string{"sha256:12"}}}, key: "peers[0]"},
		{name: "VM in two groups", groups: []Options{{Name: "g", Members: []string{"a"}, RPO: time.Minute}, {Name: "h", Members: []string{"a", "b"}, RPO: time.Minute}}, key: "vms", index: 1},
		{name: "name twice", groups: []Options{{Name: "g", Members: []string{"a"}, RPO: time.Minute}, {Name: "g", Members: []string{"b"}, RPO: time.Minute}}, key: "name", index: 1},
		{name: "not live", groups: []Options{{Name: "g", Members: []string{"a", "f"}, RPO: time.Minute}}, key: "vms"},
		{name: "own pacing", groups: []Options{{Name: "g", Members: []string{"a", "p"}, RPO: time.Minute}}, key: "rpo_target", vm: "p"},
		{name: "no rpo", groups: []Options{{Name: "g", Members: []string{"a"}}}, key: "rpo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateGroups(tc.groups, vms)
			if tc.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, g := range tc.groups {
					for _, p := range g.Peers {
						if p != strings.ToLower(fp) {
							t.Errorf("peer %q not normalised", p)
						}
					}
				}
				return
			}
			var oe *OptionError
			if !errors.As(err, &oe) || !errors.Is(err, ErrConfig) || oe.Key != tc.key || oe.Index != tc.index || oe.VM != tc.vm {
				t.Fatalf("error %v (%+v); want key %q index %d vm %q", err, oe, tc.key, tc.index, tc.vm)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	groups := []Options{{Name: "g", Local: []string{"a", "b"}}, {Name: "h", Local: []string{"c"}}}
	only := func(names ...string) func(string) bool {
		return func(vm string) bool { return slices.Contains(names, vm) }
	}
	for _, tc := range []struct {
		sel   func(string) bool
		final bool
		want  []string
	}{
		{only("a", "b", "c"), false, []string{"g", "h"}},
		{only("a", "c"), false, []string{"h"}},
		{only("a", "b", "c"), true, nil},
	} {
		var got []string
		for _, g := range Select(groups, tc.sel, tc.final) {
			got = append(got, g.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Select = %v; want %v", got, tc.want)
		}
	}
}
