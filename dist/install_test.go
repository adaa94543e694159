package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall stages make install in a DESTDIR: the binary runs, the
// units start it from BINDIR, and the rules, dashboard, sysusers entry and
// example configurations are in place.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drsync; skipped in -short mode")
	}
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	cmd := exec.Command(mk, "--no-print-directory", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/opt/drsync", "BIN="+filepath.Join(t.TempDir(), "drsync"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{
		"opt/drsync/bin/drsync",
		"opt/drsync/lib/sysusers.d/drsync.conf",
		"opt/drsync/share/drsync/prometheus/drsync-rules.yml",
		"opt/drsync/share/drsync/grafana/drsync.json",
		"etc/drsync/sender.toml.example", "etc/drsync/receiver.toml.example", "etc/drsync/runbook.toml.example",
	} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	out, err := exec.Command(filepath.Join(dest, "opt/drsync/bin/drsync"), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "protocol") {
		t.Errorf("installed drsync version: %v\n%s", err, out)
	}
	for _, u := range unitFiles(t) {
		b, err := os.ReadFile(filepath.Join(dest, "opt/drsync/lib/systemd/system", filepath.Base(u)))
		if err != nil {
			t.Errorf("unit not installed: %v", err)
			continue
		}
		if strings.Contains(string(b), installedBinary) || strings.HasSuffix(u, ".service") && !strings.Contains(string(b), "ExecStart=/opt/drsync/bin/drsync ") {
			t.Errorf("%s: ExecStart not pointed at the installed binary:\n%s", u, b)
		}
	}
}
