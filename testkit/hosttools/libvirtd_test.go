package hosttools_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drsync/drsync/testkit/hosttools"
)

// TestLibvirtd runs a transient domain of type qemu (TCG) under the
// libvirtd the tests start, and asks its QEMU for its status.
func TestLibvirtd(t *testing.T) {
	hosttools.Libvirtd(t)
	dir := hosttools.ShortTempDir(t, "lv")
	xml := filepath.Join(dir, "d.xml")
	name := "drsync-probe-" + filepath.Base(dir)
	if err := os.WriteFile(xml, []byte(`<domain type='qemu'><name>`+name+`</name>
<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>`), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "create", xml)
	t.Cleanup(func() { hosttools.Virsh(t, "destroy", name) })
	out := hosttools.Virsh(t, "qemu-monitor-command", name, `{"execute":"query-status"}`)
	if !strings.Contains(out, `"running"`) {
		t.Fatalf("query-status: %s", out)
	}
}
