package dist

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drsync/drsync/testkit"
)

// installedBinary is where the units expect drsync; make install rewrites
// it to its BINDIR.
const installedBinary = "/usr/local/bin/drsync"

func unitFiles(t *testing.T) []string {
	t.Helper()
	var units []string
	for _, pat := range []string{"systemd/*.service", "systemd/*.timer"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		units = append(units, m...)
	}
	if len(units) < 6 {
		t.Fatalf("found only %v", units)
	}
	return units
}

// directives returns the Key=value lines of a unit file, in order.
func directives(t *testing.T, path string) [][2]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

// TestUnitsVerify runs systemd-analyze verify on every unit, with ExecStart
// pointing at a freshly built drsync (verify checks that it exists and is
// executable); any warning it prints fails the test.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd); the units are not verified")
	}
	bin := testkit.Drsync(t)
	dir := t.TempDir()
	units := unitFiles(t)
	// Timers name their services: every unit is in the directory verify
	// loads them from.
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(strings.ReplaceAll(string(b), installedBinary, bin)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		cmd := exec.Command(sa, "verify", filepath.Join(dir, filepath.Base(u)))
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
	}
}

// TestUnitsCommandLines checks each unit's ExecStart against the binary:
// the subcommand exists and takes those flags (parsed up to -h, which
// stops before anything runs). Only the sender daemon, which reads its
// configuration again on SIGHUP, has a reload, and every service is
// hardened.
func TestUnitsCommandLines(t *testing.T) {
	bin := testkit.Drsync(t)
	for _, u := range unitFiles(t) {
		var execs []string
		has := map[string]string{}
		for _, d := range directives(t, u) {
			has[d[0]] = d[1]
			if d[0] == "ExecStart" {
				execs = append(execs, d[1])
			}
		}
		reload, ok := has["ExecReload"]
		switch {
		case strings.HasSuffix(u, "drsync-send.service"):
			if reload != "/bin/kill -HUP $MAINPID" {
				t.Errorf("%s: ExecReload=%q, want SIGHUP to the sender", u, reload)
			}
		case ok:
			t.Errorf("%s: ExecReload, but only drsync send reloads", u)
		}
		if !strings.HasSuffix(u, ".service") {
			continue
		}
		for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies", "LimitNOFILE", "StateDirectory"} {
			if _, ok := has[k]; !ok {
				t.Errorf("%s: no %s=", u, k)
			}
		}
		if has["Type"] != "oneshot" && (has["Restart"] != "on-failure" || has["RestartSec"] == "") {
			t.Errorf("%s: a daemon without Restart=on-failure and RestartSec=", u)
		}
		if len(execs) != 1 {
			t.Fatalf("%s: %d ExecStart lines", u, len(execs))
		}
		args := strings.Fields(execs[0])
		if args[0] != installedBinary {
			t.Errorf("%s: ExecStart runs %s, not %s", u, args[0], installedBinary)
			continue
		}
		out, err := exec.Command(bin, append(args[1:], "-h")...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage: drsync "+args[1]) {
			t.Errorf("%s: %s -h: %v\n%s", u, strings.Join(args, " "), err, out)
		}
	}
}

// TestSysusers checks the drsync account's sysusers.d entry with
// systemd-sysusers, in an empty root and without writing anything.
func TestSysusers(t *testing.T) {
	su, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Skip("systemd-sysusers not installed (Debian package systemd); the sysusers.d entry is not checked")
	}
	root := t.TempDir()
	b, err := os.ReadFile("systemd/drsync.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(root, "drsync.conf")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(su, "--dry-run", "--root", root, conf).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(line, "Creating ") && !strings.HasPrefix(line, "Would write ") {
			t.Errorf("systemd-sysusers: %s", line)
		}
	}
	if err != nil || !strings.Contains(string(out), "Creating user 'drsync'") {
		t.Errorf("systemd-sysusers --dry-run: %v\n%s", err, out)
	}
}
