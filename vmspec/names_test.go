package vmspec

import (
	"errors"
	"strings"
	"testing"
)

func TestValidVMName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"web-01", true},
		{"db.prod_2", true},
		{"a", true},
		{"9", true},
		{"A.b-c_d", true},
		{"a.", true},
		{strings.Repeat("v", MaxVMNameLen), true},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"a/b", false},
		{"../x", false},
		{"a..b", false},
		{"a..", false},
		{strings.Repeat("v", MaxVMNameLen+1), false},
		{"-x", false},
		{"_x", false},
		{"a b", false},
		{"a\\b", false},
		{"a:b", false},
		{"café", false},
		{"a\x00b", false},
		{"a\n", false},
	} {
		err := ValidVMName(c.name)
		if (err == nil) != c.ok {
			t.Errorf("ValidVMName(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidVMName(%q) error %v does not wrap ErrInvalidName", c.name, err)
		}
	}
}

func TestValidTargetName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"vda", true},
		{"pc.ram", true},
		{"0000:00:02.0/vga.vram", true},
		{"/rom@etc/acpi/tables", true},
		{"..", true}, // never a path, so dots are harmless
		{"!~", true},
		{strings.Repeat("r", MaxTargetNameLen), true},
		{"", false},
		{strings.Repeat("r", MaxTargetNameLen+1), false},
		{"pc ram", false},
		{"pc\tram", false},
		{"a\x00", false},
		{"a\x7f", false},
		{"ramé", false},
	} {
		err := ValidTargetName(c.name)
		if (err == nil) != c.ok {
			t.Errorf("ValidTargetName(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidTargetName(%q) error %v does not wrap ErrInvalidName", c.name, err)
		}
	}
}

func TestGroupCutValidate(t *testing.T) {
	ok := GroupCut{Group: "shop", Cut: 3, Members: []string{"app", "db"}}
	if err := ok.Validate("db"); err != nil {
		t.Fatalf("valid tag refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		g    GroupCut
		vm   string
	}{
		{"bad group name", GroupCut{Group: "../x", Cut: 1, Members: []string{"db"}}, "db"},
		{"cut zero", GroupCut{Group: "shop", Cut: 0, Members: []string{"db"}}, "db"},
		{"no members", GroupCut{Group: "shop", Cut: 1}, "db"},
		{"unsorted", GroupCut{Group: "shop", Cut: 1, Members: []string{"db", "app"}}, "db"},
		{"duplicate", GroupCut{Group: "shop", Cut: 1, Members: []string{"db", "db"}}, "db"},
		{"carrier not a member", GroupCut{Group: "shop", Cut: 1, Members: []string{"app"}}, "db"},
		{"bad member name", GroupCut{Group: "shop", Cut: 1, Members: []string{"a/b", "db"}}, "db"},
	} {
		if err := tc.g.Validate(tc.vm); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}
