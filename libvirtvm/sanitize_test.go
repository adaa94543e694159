package libvirtvm

import (
	"errors"
	"strings"
	"testing"
)

func TestSanitize(t *testing.T) {
	wrap := func(devices string) string {
		return "<domain type='qemu'><name>web-1</name><devices>" + devices + "</devices></domain>"
	}
	for _, tc := range []struct {
		name string
		in   string
		want string // the whole output, if set
		keep []string
		drop []string
		err  error
	}{
		{
			name: "disk source and backing chain go, the rest stays",
			in:   wrap(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web.qcow2' index='2'/><backingStore type='file'><source file='/base.img'/></backingStore><target dev='vda' bus='virtio'/><address type='pci' slot='0x04'/></disk>`),
			want: `<domain type="qemu"><name>web-1</name><devices><disk type="file" device="disk"><driver name="qemu" type="qcow2"></driver><target dev="vda" bus="virtio"></target><address type="pci" slot="0x04"></address></disk></devices></domain>`,
		},
		{
			name: "serial file, channel socket, console pty paths go",
			in:   wrap(`<serial type='file'><source path='/srv/web/serial.log'/><log file='/var/log/x.log'/><target port='0'/></serial><channel type='unix'><source mode='bind' path='/run/qga.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel><console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='serial' port='0'/></console>`),
			keep: []string{`<serial type="file"><target port="0"></target></serial>`, `name="org.qemu.guest_agent.0"`, `<target type="serial" port="0">`},
			drop: []string{"/srv/web", "/run/qga.sock", "/var/log/x.log", "<source"},
		},
		{
			name: "seclabels, emulator, nvram, tap names and the runtime id go",
			in:   `<domain type='kvm' id='7'><name>db</name><uuid>0b6a1c2e-95b5-4d3a-9c55-3a1e4a8f0f11</uuid><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><nvram>/var/lib/libvirt/qemu/nvram/db_VARS.fd</nvram></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator><interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-prod'/><target dev='vnet3'/><model type='virtio'/></interface><disk type='block' device='disk'><source dev='/dev/vg/db'><seclabel model='dac' relabel='no'/></source><target dev='vda'/></disk></devices><seclabel type='dynamic' model='apparmor'/></domain>`,
			keep: []string{`<domain type="kvm">`, `<uuid>0b6a1c2e-95b5-4d3a-9c55-3a1e4a8f0f11</uuid>`, `<mac address="52:54:00:12:34:56">`, `<source bridge="br-prod">`, `<model type="virtio">`, `/usr/share/OVMF/OVMF_CODE.fd`, `machine="pc-q35-7.2"`},
			drop: []string{"id=", "nvram", "emulator", "vnet3", "seclabel", "/dev/vg/db"},
		},
		{
			name: "machine definition stays: CPU, memory, kernel, qemu namespace",
			in:   `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>a</name><memory unit='KiB'>262144</memory><vcpu placement='static'>2</vcpu><cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu><os><type arch='x86_64' machine='pc'>hvm</type><kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd</initrd><cmdline>console=ttyS0</cmdline></os><qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline></domain>`,
			keep: []string{`<memory unit="KiB">262144</memory>`, `<vcpu placement="static">2</vcpu>`, `<model fallback="forbid">qemu64</model>`, `<kernel>/boot/vmlinuz</kernel>`, `<initrd>/boot/initrd</initrd>`, `<cmdline>console=ttyS0</cmdline>`, `xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"`, `<qemu:commandline><qemu:arg value="-no-hpet"></qemu:arg></qemu:commandline>`},
		},
		{
			name: "comments go, text is escaped again",
			in:   `<!-- generated --><domain type='qemu'><name>a&amp;b</name><description>x &lt; y</description></domain>`,
			want: `<domain type="qemu"><name>a&amp;b</name><description>x &lt; y</description></domain>`,
		},
		{name: "not a domain", in: `<network><name>default</name></network>`, err: ErrDomainXML},
		{name: "truncated", in: `<domain type='qemu'><name>a</name>`, err: ErrDomainXML},
		{name: "empty", in: ``, err: ErrDomainXML},
		{name: "two domains", in: `<domain/><domain/>`, err: ErrDomainXML},
		{name: "malformed", in: `<domain><name>a</nam></domain>`, err: ErrDomainXML},
	} {
		got, err := Sanitize([]byte(tc.in))
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		s := string(got)
		if tc.want != "" && s != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, s, tc.want)
		}
		for _, k := range tc.keep {
			if !strings.Contains(s, k) {
				t.Errorf("%s: lost %s:\n%s", tc.name, k, s)
			}
		}
		for _, d := range tc.drop {
			if strings.Contains(s, d) {
				t.Errorf("%s: kept %s:\n%s", tc.name, d, s)
			}
		}
		// Sanitizing is idempotent: the DR site may sanitize again.
		if again, err := Sanitize(got); err != nil || string(again) != s {
			t.Errorf("%s: sanitizing again: %v\n%s", tc.name, err, again)
		}
	}
}
