package libvirtvm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/hosttools"
)

var seq atomic.Int64

// probeDomain starts a transient domain with no disks and no firmware to
// speak of (32 MiB) and destroys it when the test ends.
func probeDomain(t *testing.T) string {
	t.Helper()
	dir := hosttools.ShortTempDir(t, "lvmon")
	name := fmt.Sprintf("drsync-test-%d-%d", os.Getpid(), seq.Add(1))
	xml := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xml, []byte(`<domain type='qemu'><name>`+name+`</name>
<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>`), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "create", xml)
	t.Cleanup(func() { exec.Command("virsh", "-c", hosttools.LibvirtURI, "destroy", name).Run() })
	return name
}

func TestMonitor(t *testing.T) {
	hosttools.Libvirtd(t)
	livecuttest.TestMonitor(t, func(t *testing.T) livecuttest.Target {
		name := probeDomain(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, name, qmp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return livecuttest.Target{Monitor: m, Kill: func() {
			hosttools.Virsh(t, "destroy", name)
		}}
	})
}

func TestDialErrors(t *testing.T) {
	hosttools.Libvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, "drsync-no-such-domain", qmp.Options{}); !errors.Is(err, libvirtvm.ErrNoDomain) {
		t.Errorf("unknown domain: %v", err)
	}
	// Defined but shut off: like a QEMU whose socket nobody listens on.
	dir := hosttools.ShortTempDir(t, "lvdef")
	off := fmt.Sprintf("drsync-test-%d-%d", os.Getpid(), seq.Add(1))
	xml := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xml, []byte(`<domain type='qemu'><name>`+off+`</name>
<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>`), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "define", xml)
	t.Cleanup(func() { exec.Command("virsh", "-c", hosttools.LibvirtURI, "undefine", off).Run() })
	if _, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, off, qmp.Options{}); !errors.Is(err, qmp.ErrNoSocket) || !strings.Contains(err.Error(), "not running") {
		t.Errorf("shut-off domain: %v", err)
	}

	name := probeDomain(t)
	uuid := strings.TrimSpace(hosttools.Virsh(t, "domuuid", name))
	m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, uuid, qmp.Options{})
	if err != nil {
		t.Fatalf("by UUID: %v", err)
	}
	if m.Domain() != name {
		t.Errorf("by UUID: domain %q, want %q", m.Domain(), name)
	}
	m.Close()
	old := errors.New("too new")
	if _, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, name, qmp.Options{CheckVersion: func(qmp.Version) error { return old }}); !errors.Is(err, qmp.ErrUnsupportedVersion) || !errors.Is(err, old) {
		t.Errorf("refused version: %v", err)
	}
}

// TestDisks finds a domain's disks and their block nodes; a CD-ROM is
// left out.
func TestDisks(t *testing.T) {
	hosttools.Libvirtd(t)
	hosttools.Need(t, "qemu-img")
	dir := hosttools.ShortTempDir(t, "lvdisk")
	img := filepath.Join(dir, "a.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	iso := filepath.Join(dir, "b.raw")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "raw", iso, "1M")
	name := fmt.Sprintf("drsync-test-%d-%d", os.Getpid(), seq.Add(1))
	xml := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xml, []byte(`<domain type='qemu'><name>`+name+`</name>
<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='`+img+`'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='`+iso+`'/><target dev='hdc' bus='ide'/><readonly/></disk>
</devices></domain>`), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "create", xml)
	t.Cleanup(func() { exec.Command("virsh", "-c", hosttools.LibvirtURI, "destroy", name).Run() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, name, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	disks, err := m.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 1 || disks[0].Target != "vda" || disks[0].Source != img || disks[0].Node == "" || disks[0].ReadOnly {
		t.Fatalf("disks: %+v", disks)
	}
	// The node is the one the guest writes through: a qcow2 format node.
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := m.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.NodeName == disks[0].Node && n.Drv != "qcow2" {
			t.Errorf("node %s is %s, want qcow2", n.NodeName, n.Drv)
		}
	}
	t.Logf("disks: %+v", disks)

	// A backup job (what a killed sender leaves) puts a copy-before-write
	// filter on top of the disk; the disk's node is still the format node.
	overlay := filepath.Join(dir, "fleece.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", overlay, "16M")
	for _, c := range []struct {
		cmd  string
		args map[string]any
	}{
		{"blockdev-add", map[string]any{"driver": "qcow2", "node-name": "drsync-test-fleece", "file": map[string]any{"driver": "file", "filename": overlay}, "backing": disks[0].Node}},
		{"blockdev-backup", map[string]any{"device": disks[0].Node, "target": "drsync-test-fleece", "sync": "none", "job-id": "drsync-test-job"}},
	} {
		if err := m.Execute(ctx, c.cmd, c.args, nil); err != nil {
			t.Fatalf("%s: %v", c.cmd, err)
		}
	}
	again, err := m.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0].Node != disks[0].Node {
		t.Fatalf("disks with a backup job running: %+v, want node %s", again, disks[0].Node)
	}
}
