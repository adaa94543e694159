package main

import (
	"strings"
	"testing"

	"github.com/drsync/drsync/libvirtvm"
)

const libvirtVM = `
[[vm]]
name = "web-2"
libvirt = "qemu:///system"
domain = "web-2"
exclude_disks = ["vdc"]
`

func TestSenderConfigLibvirt(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // substrings of the error; nil means valid
	}{
		{"valid", baseSender + libvirtVM, nil},
		{"valid with disks listed, nodes found", baseSender + strings.Replace(libvirtVM, `exclude_disks = ["vdc"]`, "[[vm.disk]]\nname = \"vda\"\n[[vm.disk]]\nname = \"vdb\"\nblock_size = \"256KiB\"", 1), nil},
		{"no domain", baseSender + strings.Replace(libvirtVM, `domain = "web-2"`, "", 1), []string{`vm "web-2": domain`, "missing"}},
		{"domain without libvirt", baseSender + strings.Replace(libvirtVM, `libvirt = "qemu:///system"`, "", 1), []string{`vm "web-2": libvirt`, "missing"}},
		{"qmp and libvirt", baseSender + strings.Replace(libvirtVM, `domain = "web-2"`, "domain = \"web-2\"\nqmp = \"/run/q.sock\"", 1), []string{`vm "web-2": qmp`, "remove qmp or libvirt"}},
		{"listed and excluded", baseSender + strings.Replace(libvirtVM, `["vdc"]`, "[\"vda\"]\n[[vm.disk]]\nname = \"vda\"", 1), []string{"exclude_disks", `"vda" is both listed and excluded`}},
		{"RAM files", baseSender + libvirtVM + "[[vm.ram]]\nname = \"pc.ram\"\npath = \"x\"\n", []string{`vm "web-2": ram`, "comes from QEMU"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, "sender.toml", tc.text)
			c, err := loadSenderConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				v := &c.VMs[len(c.VMs)-1]
				o := v.liveOptions(c.stateDir(v.Name), nil)
				if uri, dom, ok := libvirtvm.ParseAddress(o.QMPSocket); !ok || uri != "qemu:///system" || dom != "web-2" || o.Dial == nil {
					t.Errorf("live options: monitor %q", o.QMPSocket)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want one mentioning %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSelectLibvirtDisks(t *testing.T) {
	found := []libvirtvm.Disk{
		{Target: "vda", Node: "libvirt-3-format"},
		{Target: "vdb", Node: "libvirt-2-format"},
		{Target: "vdc", Node: "libvirt-1-format", ReadOnly: true},
	}
	tests := []struct {
		name    string
		listed  []DiskConfig
		exclude []string
		want    string // disks as name=node, or the error's substring
	}{
		{"all writable", nil, nil, "vda=libvirt-3-format vdb=libvirt-2-format"},
		{"excluded", nil, []string{"vdb"}, "vda=libvirt-3-format"},
		{"all excluded", nil, []string{"vda", "vdb"}, "no writable disk left"},
		{"unknown exclusion", nil, []string{"sdz"}, `no disk "sdz" (it has [vda vdb vdc])`},
		{"listed, node found", []DiskConfig{{Name: "vdb"}}, nil, "vdb=libvirt-2-format"},
		{"listed, node given", []DiskConfig{{Name: "vda", Node: "mine"}}, nil, "vda=mine"},
		{"listed read-only", []DiskConfig{{Name: "vdc"}}, nil, "vdc=libvirt-1-format"},
		{"listed unknown", []DiskConfig{{Name: "sda"}}, nil, `no disk "sda"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := VMConfig{Name: "web-2", Disks: tc.listed, LibvirtVMConfig: LibvirtVMConfig{Libvirt: "qemu:///system", Domain: "web-2", ExcludeDisks: tc.exclude}}
			disks, err := v.selectDisks(found)
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
