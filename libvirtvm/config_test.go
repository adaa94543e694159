package libvirtvm

import (
	"strings"
	"testing"

	"github.com/drsync/drsync/livecut"
)

func TestSelect(t *testing.T) {
	found := []Disk{
		{Target: "vda", Node: "libvirt-3-format"},
		{Target: "vdb", Node: "libvirt-2-format"},
		{Target: "vdc", Node: "libvirt-1-format", ReadOnly: true},
	}
	tests := []struct {
		name    string
		listed  []livecut.Disk
		exclude []string
		want    string // disks as name=node, or the error's substring
	}{
		{"all writable", nil, nil, "vda=libvirt-3-format vdb=libvirt-2-format"},
		{"excluded", nil, []string{"vdb"}, "vda=libvirt-3-format"},
		{"all excluded", nil, []string{"vda", "vdb"}, "no writable disk left"},
		{"unknown exclusion", nil, []string{"sdz"}, `no disk "sdz" (it has [vda vdb vdc])`},
		{"listed, node found", []livecut.Disk{{Name: "vdb"}}, nil, "vdb=libvirt-2-format"},
		{"listed, node given", []livecut.Disk{{Name: "vda", Node: "mine"}}, nil, "vda=mine"},
		{"listed read-only", []livecut.Disk{{Name: "vdc"}}, nil, "vdc=libvirt-1-format"},
		{"listed unknown", []livecut.Disk{{Name: "sda"}}, nil, `no disk "sda"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Libvirt: "qemu:///system", Domain: "web-2", ExcludeDisks: tc.exclude}
			disks, err := c.Select(found, tc.listed)
			var got []string
			for _, d := range disks {
				got = append(got, d.Name+"="+d.Node)
			}
			if err != nil {
				got = []string{err.Error()}
			}
			if s := strings.Join(got, " "); !strings.Contains(s, tc.want) || (err == nil && s != tc.want) {
				t.Errorf("got %q, want %q", s, tc.want)
			}
		})
	}
}
