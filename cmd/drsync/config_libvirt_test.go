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
		{"listed and excluded", baseSender + strings.Replace(libvirtVM, `["vdc"]`, "[\"vdc\"]\n[[vm.disk]]\nname = \"vda\"", 1), []string{`vm "web-2": exclude_disks`, "not both"}},
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
				v := &c.vms[len(c.vms)-1]
				o := v.LiveOptions(c.stateDir(v.Name), nil)
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
