package guest

import (
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// Domain is the protected test guest run as a transient libvirt domain
// (type qemu: TCG) on hosttools.LibvirtURI.
type Domain struct {
	Name   string
	Dir    string // short-named; holds vda.raw, vdb.qcow2 and serial.log
	Serial string // the console log file
}

// ProtectedDomain is Protected as a libvirt domain: the same kernel,
// workload and disks (vda raw with the record ring, vdb qcow2), its
// console in Dir/serial.log. It starts the tests' libvirtd
// (hosttools.Libvirtd), returns once the workload ticks, and destroys the
// domain when the test ends.
func ProtectedDomain(t testing.TB, memMiB int, args map[string]string) *Domain {
	t.Helper()
	return protectedDomain(t, memMiB, args, "")
}

// ProtectedSharedDomain is ProtectedDomain with the guest's RAM in a
// shared memfd backend (<memoryBacking> source memfd, access shared), as
// tracked RAM capture needs.
func ProtectedSharedDomain(t testing.TB, memMiB int, args map[string]string) *Domain {
	t.Helper()
	return protectedDomain(t, memMiB, args, "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>")
}

func protectedDomain(t testing.TB, memMiB int, args map[string]string, backing string) *Domain {
	t.Helper()
	hosttools.Need(t, "qemu-system-x86_64", "qemu-img")
	hosttools.Libvirtd(t)
	kernel, initrd := Build(t)
	dir := hosttools.ShortTempDir(t, "lvg")
	d := &Domain{Name: "drsync-" + filepath.Base(dir), Dir: dir, Serial: filepath.Join(dir, "serial.log")}
	raw, qcow := filepath.Join(dir, "vda.raw"), filepath.Join(dir, "vdb.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M")
	cmdline := "console=ttyS0 panic=-1 quiet no_timer_check"
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		cmdline += " drsync." + strings.TrimPrefix(k, "drsync.") + "=" + args[k]
	}
	x := html.EscapeString
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>%s
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`, x(d.Name), memMiB, backing, x(kernel), x(initrd), x(cmdline), x(raw), x(qcow), x(d.Serial))
	path := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(path, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "create", path)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d.Serial)
			t.Logf("domain %s console:\n%s", d.Name, tail(string(b), 40))
		}
		// Gone already if the test destroyed it.
		exec.Command("virsh", "-c", hosttools.LibvirtURI, "destroy", d.Name).Run()
	})
	if _, err := d.WaitTicks(10, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	return d
}

// Ticks are the TICK lines of the console so far, without times.
func (d *Domain) Ticks() []Tick {
	b, _ := os.ReadFile(d.Serial)
	return ParseTicks(b)
}

// WaitTicks waits until the console shows at least n ticks.
func (d *Domain) WaitTicks(n int, timeout time.Duration) ([]Tick, error) {
	deadline := time.Now().Add(timeout)
	for {
		tk := d.Ticks()
		if len(tk) >= n {
			return tk, nil
		}
		if time.Now().After(deadline) {
			return tk, fmt.Errorf("domain %s: %d ticks after %v, want %d", d.Name, len(tk), timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// CheckCleanView fails the test if the domain shows anything of drsync's
// beyond what an idle sender keeps: libvirt's view (virsh domblklist,
// blockjob, checkpoint-list) must be the domain's own disks and nothing
// else, and QEMU's must hold no drsync node, job or export and at most
// bitmaps per disk (the one recording changes since the last cut).
func (d *Domain) CheckCleanView(t testing.TB, bitmaps int) {
	t.Helper()
	disks := map[string]string{"vda": filepath.Join(d.Dir, "vda.raw"), "vdb": filepath.Join(d.Dir, "vdb.qcow2")}
	out := hosttools.Virsh(t, "domblklist", d.Name)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2+len(disks) {
		t.Errorf("domblklist: want the domain's %d disks:\n%s", len(disks), out)
	}
	for _, l := range lines[min(2, len(lines)):] {
		if f := strings.Fields(l); len(f) != 2 || disks[f[0]] != f[1] {
			t.Errorf("domblklist: unexpected line %q\n%s", l, out)
		}
	}
	for dev := range disks {
		if out := hosttools.Virsh(t, "blockjob", d.Name, dev); !strings.Contains(out, "No current block job") {
			t.Errorf("blockjob %s: %s", dev, out)
		}
	}
	if out := strings.TrimSpace(hosttools.Virsh(t, "checkpoint-list", d.Name, "--name")); out != "" {
		t.Errorf("checkpoint-list: %s", out)
	}
	// QEMU's own view, which QMP passed through libvirt could change
	// behind libvirt's back.
	qmp := func(cmd string) string {
		return hosttools.Virsh(t, "qemu-monitor-command", d.Name, `{"execute":"`+cmd+`"}`)
	}
	if out := qmp("query-named-block-nodes"); strings.Contains(out, `"node-name":"drsync-`) {
		t.Errorf("QEMU still holds drsync block nodes: %.500s", out)
	}
	if out := qmp("query-block-jobs"); !strings.Contains(out, `"return":[]`) {
		t.Errorf("QEMU still runs block jobs: %s", out)
	}
	if out := qmp("query-block"); strings.Count(out, `"name":"drsync-`) > bitmaps*len(disks) {
		t.Errorf("QEMU holds more than %d drsync bitmaps per disk: %.800s", bitmaps, out)
	}
}
