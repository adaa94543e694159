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
