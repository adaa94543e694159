package libvirtvm

import (
	"errors"
	"strings"
	"testing"
)

func TestForDR(t *testing.T) {
	// As Sanitize leaves a definition.
	def := `<domain type="qemu"><name>web-1</name><uuid>0b6a1c2e-95b5-4d3a-9c55-3a1e4a8f0f11</uuid><memory unit="KiB">131072</memory><devices>` +
		`<disk type="block" device="disk"><driver name="qemu" type="raw"></driver><target dev="vda" bus="virtio"></target></disk>` +
		`<disk type="file" device="disk"><target dev="vdb" bus="virtio"></target></disk>` +
		`<disk type="file" device="cdrom"><target dev="sda" bus="sata"></target><readonly></readonly></disk>` +
		`<interface type="bridge"><mac address="52:54:00:12:34:56"></mac><source bridge="br-prod"></source><model type="virtio"></model></interface>` +
		`<interface type="network"><mac address="52:54:00:12:34:57"></mac><source network="backend"></source></interface>` +
		`<interface type="user"><mac address="52:54:00:12:34:58"></mac></interface>` +
		`<serial type="file"><target port="0"></target></serial><channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"></target></channel><console type="pty"><target type="serial" port="0"></target></console><parallel type="dev"><target port="0"></target></parallel>` +
		`</devices></domain>`
	disks := map[string]string{"vda": "/dr/web-1/vda.qcow2", "vdb": "/dr/web-1/vdb.qcow2"}
	nets := map[string]string{"br-prod": "br-dr", "backend": "dr-backend"}
	for _, tc := range []struct {
		name string
		def  string
		o    DRDefinition
		keep []string
		drop []string
		err  error
	}{
		{
			name: "failover: same name, disks on overlays, networks mapped, chardevs in the work dir",
			o:    DRDefinition{Disks: disks, Networks: nets, Dir: "/dr/web-1"},
			keep: []string{
				`<name>web-1</name>`, `<uuid>0b6a1c2e-95b5-4d3a-9c55-3a1e4a8f0f11</uuid>`, `<memory unit="KiB">131072</memory>`,
				`<disk type="file" device="disk"><driver name="qemu" type="qcow2"></driver><source file="/dr/web-1/vda.qcow2"></source><target dev="vda" bus="virtio"></target></disk>`,
				`<disk type="file" device="disk"><driver name="qemu" type="qcow2"></driver><source file="/dr/web-1/vdb.qcow2"></source><target dev="vdb" bus="virtio"></target></disk>`,
				`<disk type="file" device="cdrom"><target dev="sda" bus="sata"></target><readonly></readonly></disk>`,
				`<mac address="52:54:00:12:34:56"></mac><source bridge="br-dr"></source><model type="virtio"></model>`,
				`<source network="dr-backend"></source>`, `<interface type="user"><mac address="52:54:00:12:34:58"></mac></interface>`,
				`<serial type="file"><source path="/dr/web-1/serial0.log"></source><target port="0"></target></serial>`,
				`<channel type="unix"><source mode="bind" path="/dr/web-1/channel0.sock"></source>`,
				`<console type="pty"><target type="serial" port="0"></target></console>`, `<parallel type="pty">`,
			},
			drop: []string{"br-prod", `"backend"`, `type="block"`},
		},
		{
			name: "drill: renamed, new UUID, interfaces on no network",
			o:    DRDefinition{Name: "web-1-drill", Disks: disks, Isolated: true, Dir: "/dr/_drill/web-1"},
			keep: []string{`<name>web-1-drill</name>`, `<interface type="ethernet"><mac address="52:54:00:12:34:56"></mac><model type="virtio"></model></interface>`, `<interface type="ethernet"><mac address="52:54:00:12:34:58"></mac></interface>`, `/dr/_drill/web-1/serial0.log`},
			drop: []string{"<uuid>", "<source bridge", "<source network", "web-1<"},
		},
		{name: "unmapped bridge", o: DRDefinition{Disks: disks, Networks: map[string]string{"backend": "x"}}, err: ErrDRDefinition},
		{name: "disk without a replica", o: DRDefinition{Disks: map[string]string{"vda": "/a"}, Networks: nets}, err: ErrDRDefinition},
		{name: "replica of a disk the definition lacks", o: DRDefinition{Disks: map[string]string{"vda": "/a", "vdb": "/b", "vdc": "/c"}, Networks: nets}, err: ErrDRDefinition},
		{name: "not a domain", def: `<network></network>`, err: ErrDomainXML},
		{name: "no devices", def: `<domain><name>a</name></domain>`, err: ErrDomainXML},
		{name: "malformed", def: `<domain><name>a</domain>`, err: ErrDomainXML},
	} {
		in := def
		if tc.def != "" {
			in = tc.def
		}
		got, err := ForDR([]byte(in), tc.o)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
			continue
		}
		s := string(got)
		for _, k := range tc.keep {
			if !strings.Contains(s, k) {
				t.Errorf("%s: missing %s:\n%s", tc.name, k, s)
			}
		}
		for _, d := range tc.drop {
			if strings.Contains(s, d) {
				t.Errorf("%s: kept %s:\n%s", tc.name, d, s)
			}
		}
	}
}
