package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/tlsid"
)

// pair is a protected site and a DR site on this machine: keys, configs,
// source images and a replica directory, all under one temp dir.
type pair struct {
	t        testing.TB
	starts   int
	dir      string
	port     int
	sendCfg  string
	recvCfg  string
	replicas string
	rcv      *testkit.Proc
	fpA, fpB string
}

type vmSpec struct {
	name  string
	disks []diskSpec
	ram   []string // RAM file paths relative to dir
	dev   string   // device-state file, optional
	qmp   string   // a live VM's QMP socket; its disks are named by node
	extra string   // more keys of the [[vm]] table
}

type diskSpec struct{ name, path, format, node string }

func needQemu(t *testing.T) { hosttools.Need(t, "qemu-img", "qemu-nbd", "qemu-io") }

func freePort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func newPair(t testing.TB, vms []vmSpec, opts ...string) *pair {
	t.Helper()
	p := &pair{t: t, dir: t.TempDir(), port: freePort(t)}
	for _, d := range []string{"keys", "images", "state", "replicas"} {
		os.MkdirAll(filepath.Join(p.dir, d), 0o755)
	}
	testkit.MustRun(t, "keygen", "--out", filepath.Join(p.dir, "keys"), "--name", "site-a")
	testkit.MustRun(t, "keygen", "--out", filepath.Join(p.dir, "keys"), "--name", "site-b")
	p.fpA = fingerprint(t, filepath.Join(p.dir, "keys", "site-a"))
	p.fpB = fingerprint(t, filepath.Join(p.dir, "keys", "site-b"))
	p.replicas = filepath.Join(p.dir, "replicas")
	if keep := os.Getenv("DRSYNC_E2E_KEEP_FAILED"); keep != "" {
		t.Cleanup(func() {
			if t.Failed() {
				to := filepath.Join(keep, fmt.Sprintf("%s-%d", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().Unix()))
				out, err := exec.Command("cp", "-a", "--sparse=always", p.dir, to).CombinedOutput()
				t.Logf("kept %s in %s: %v %s", p.dir, to, err, out)
			}
		})
	}
	names := make([]string, len(vms))
	for i, v := range vms {
		names[i] = fmt.Sprintf("%q", v.name)
	}
	p.recvCfg = p.write("receiver.toml", fmt.Sprintf(`
listen = "127.0.0.1:%d"
ack_every = "4MiB"
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[storage]
dir = "replicas"
[[sender]]
name = "site-a"
fingerprint = %q
vms = [%s]
`, p.port, p.fpA, strings.Join(names, ", ")))
	p.sendCfg = p.senderConfig("sender.toml", "site-a", p.port, vms, strings.Join(opts, "\n"))
	return p
}

func (p *pair) senderConfig(name, key string, port int, vms []vmSpec, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
[identity]
cert = "keys/%s.crt"
key = "keys/%s.key"
[receiver]
address = "127.0.0.1:%d"
fingerprints = [%q]
%s
[state]
dir = "state"
`, key, key, port, p.fpB, extra)
	for _, v := range vms {
		fmt.Fprintf(&b, "[[vm]]\nname = %q\n", v.name)
		if !strings.Contains(v.extra, "compression") {
			b.WriteString("compression = \"fast\"\n")
		}
		if v.dev != "" {
			fmt.Fprintf(&b, "device_state = %q\n", v.dev)
		}
		if v.qmp != "" {
			fmt.Fprintf(&b, "qmp = %q\n", v.qmp)
		}
		b.WriteString(v.extra + "\n")
		for _, d := range v.disks {
			if d.node != "" {
				fmt.Fprintf(&b, "  [[vm.disk]]\n  name = %q\n  node = %q\n", d.name, d.node)
				continue
			}
			fmt.Fprintf(&b, "  [[vm.disk]]\n  name = %q\n  path = %q\n  format = %q\n", d.name, d.path, d.format)
		}
		for i, r := range v.ram {
			fmt.Fprintf(&b, "  [[vm.ram]]\n  name = \"ram%d\"\n  path = %q\n", i, r)
		}
	}
	return p.write(name, b.String())
}

func (p *pair) write(name, content string) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
	return path
}

func (p *pair) path(rel string) string { return filepath.Join(p.dir, rel) }

func fingerprint(t testing.TB, base string) string {
	id, err := tlsid.LoadIdentity(base+".crt", base+".key")
	if err != nil {
		t.Fatal(err)
	}
	return id.Fingerprint
}

// startReceiver starts (or restarts) the receiver and waits until it
// listens, which is after it recovered every replica.
func (p *pair) startReceiver() {
	p.t.Helper()
	// Each start logs to its own file, so waiting for "listening" cannot
	// match a line of the previous process.
	p.starts++
	p.rcv = testkit.Start(p.t, p.path(fmt.Sprintf("receiver-%d.log", p.starts)), "receive", "--config", p.recvCfg)
	if !p.rcv.WaitLog("listening", 30*time.Second) {
		p.t.Fatalf("receiver did not start:\n%s", p.rcv.Log())
	}
}

// manifest reads a replica's manifest.
func (p *pair) manifest(vm string) *replica.Manifest {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.replicas, vm, "MANIFEST"))
	if err != nil {
		p.t.Fatal(err)
	}
	m, err := replica.ParseManifest(b)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

// replicaFile is the path of a replica target's image.
func (p *pair) replicaFile(vm, kind, name string) string {
	p.t.Helper()
	for _, tg := range p.manifest(vm).Targets {
		if tg.Kind == kind && tg.Name == name {
			return filepath.Join(p.replicas, vm, tg.File)
		}
	}
	p.t.Fatalf("replica of %s has no %s %s", vm, kind, name)
	return ""
}

func (p *pair) verify(vm string) {
	p.t.Helper()
	dir := filepath.Join(p.replicas, vm)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return // the receiver was killed before the sender's first epoch reached it: no replica yet
	}
	testkit.MustRun(p.t, "verify", "--replica", dir, "--wait", "60s")
}

// qemuCompare checks two images have the same content (qemu-img compare
// treats a shorter image's missing tail as zeros only in non-strict mode,
// so sizes are checked too).
func qemuCompare(t *testing.T, a, aFmt, b string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", aFmt, "-F", "raw", a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}
