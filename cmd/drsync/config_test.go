package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/wire"
)

const (
	fpA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	fpB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

const baseSender = `
[identity]
cert = "keys/a.crt"
key = "keys/a.key"

[receiver]
address = "127.0.0.1:7447"
fingerprints = ["` + fpA + `"]

[state]
dir = "state"

[[vm]]
name = "web-1"
min_interval = "30s"
device_state = "/abs/dev.state"

  [[vm.disk]]
  name = "vda"
  path = "images/vda.raw"
  block_size = "128KiB"

  [[vm.ram]]
  name = "pc.ram"
  path = "images/ram"
`

const baseReceiver = `
listen = "127.0.0.1:7447"

[identity]
cert = "keys/b.crt"
key = "keys/b.key"

[storage]
dir = "replicas"

[[sender]]
name = "site-a"
fingerprint = "` + fpA + `"
vms = ["web-1", "db-1"]
`

const liveVM = `
[[vm]]
name = "app-1"
qmp = "/run/app-1/qmp.sock"
min_interval = "5s"

  [[vm.disk]]
  name = "vda"
  node = "disk0"

  [[vm.disk]]
  name = "vdb"
  node = "disk1"
  block_size = "256KiB"
`

// writeConfig writes text as a config file in a fresh directory.
func writeConfig(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// edit applies replacements (old, new pairs) to s and fails if one is not
// found, so a test cannot silently stop testing what it claims to.
func edit(t *testing.T, s string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("edit: %q not in config", pairs[i])
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestSenderConfig(t *testing.T) {
	tests := []struct {
		name string
		text func(t *testing.T) string
		want []string // substrings of the error; nil means valid
	}{
		{"valid", func(t *testing.T) string { return baseSender }, nil},
		{"valid live VM", func(t *testing.T) string { return baseSender + liveVM }, nil},
		{"live VM with a disk path", func(t *testing.T) string {
			return edit(t, baseSender+liveVM, `node = "disk0"`, `path = "images/app.raw"`)
		}, []string{`vm "app-1": disk "vda".path`, "block node"}},
		{"live VM disk without node", func(t *testing.T) string {
			return edit(t, baseSender+liveVM, `node = "disk0"`, ``)
		}, []string{`disk "vda".node`, "missing", "query-named-block-nodes"}},
		{"live VM node twice", func(t *testing.T) string {
			return edit(t, baseSender+liveVM, `node = "disk1"`, `node = "disk0"`)
		}, []string{`disk "vdb".node`, "listed twice"}},
		{"live VM with RAM files", func(t *testing.T) string {
			return baseSender + liveVM + "\n  [[vm.ram]]\n  name = \"pc.ram\"\n  path = \"x\"\n"
		}, []string{`vm "app-1": ram`, "comes from QEMU"}},
		{"live VM block size below the bitmap's", func(t *testing.T) string {
			return edit(t, baseSender+liveVM, `block_size = "256KiB"`, `block_size = "4KiB"`)
		}, []string{`disk "vdb".block_size`, "64KiB"}},
		{"node on an image-file VM", func(t *testing.T) string {
			return edit(t, baseSender, `path = "images/vda.raw"`, `path = "images/vda.raw"`+"\n  node = \"disk0\"")
		}, []string{`disk "vda".node`, "only for a live VM"}},
		{"work_dir without qmp", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `min_interval = "30s"`+"\nwork_dir = \"w\"")
		}, []string{"qmp", "missing"}},
		{"unknown top-level key", func(t *testing.T) string { return "bogus = 1\n" + baseSender }, []string{"unknown key", "bogus"}},
		{"unknown nested key", func(t *testing.T) string {
			return edit(t, baseSender, `block_size = "128KiB"`, `blocksize = "128KiB"`)
		}, []string{"unknown key", "vm.disk.blocksize"}},
		{"bad size unit", func(t *testing.T) string {
			return edit(t, baseSender, `"128KiB"`, `"128KB"`)
		}, []string{"vm.disk.block_size", "128KB", "KiB"}},
		{"bad size number", func(t *testing.T) string {
			return edit(t, baseSender, `"128KiB"`, `"lots"`)
		}, []string{"block_size", "lots"}},
		{"block size not a power of two", func(t *testing.T) string {
			return edit(t, baseSender, `"128KiB"`, `"96KiB"`)
		}, []string{`disk "vda".block_size`, "power of two"}},
		{"block size too large", func(t *testing.T) string {
			return edit(t, baseSender, `"128KiB"`, `"8MiB"`)
		}, []string{"block_size", "4MiB"}},
		{"bad duration", func(t *testing.T) string {
			return edit(t, baseSender, `"30s"`, `"30"`)
		}, []string{"min_interval", "unit"}},
		{"negative duration", func(t *testing.T) string {
			return edit(t, baseSender, `"30s"`, `"-5s"`)
		}, []string{"min_interval", "negative"}},
		{"missing identity", func(t *testing.T) string {
			return edit(t, baseSender, "[identity]\ncert = \"keys/a.crt\"\nkey = \"keys/a.key\"\n", "")
		}, []string{"identity.cert", "missing"}},
		{"missing identity key", func(t *testing.T) string {
			return edit(t, baseSender, "key = \"keys/a.key\"\n", "")
		}, []string{"identity.key", "missing"}},
		{"malformed fingerprint", func(t *testing.T) string {
			return edit(t, baseSender, fpA, "sha256:abcd")
		}, []string{"receiver.fingerprints[0]", "hex digits"}},
		{"non-hex fingerprint", func(t *testing.T) string {
			return edit(t, baseSender, fpA, "sha256:"+strings.Repeat("zz", 32))
		}, []string{"receiver.fingerprints[0]", "not hexadecimal"}},
		{"no receiver trust", func(t *testing.T) string {
			return edit(t, baseSender, `fingerprints = ["`+fpA+`"]`, "")
		}, []string{"receiver", "fingerprints", "ca"}},
		{"address without port", func(t *testing.T) string {
			return edit(t, baseSender, `"127.0.0.1:7447"`, `"127.0.0.1"`)
		}, []string{"receiver.address", "host:port"}},
		{"address port zero", func(t *testing.T) string {
			return edit(t, baseSender, `"127.0.0.1:7447"`, `"127.0.0.1:0"`)
		}, []string{"receiver.address", "port"}},
		{"vm name escapes", func(t *testing.T) string {
			return edit(t, baseSender, `name = "web-1"`, `name = "../x"`)
		}, []string{"vm[0].name", "../x"}},
		{"vm name with slash", func(t *testing.T) string {
			return edit(t, baseSender, `name = "web-1"`, `name = "a/b"`)
		}, []string{"vm[0].name"}},
		{"duplicate vm", func(t *testing.T) string {
			return baseSender + "[[vm]]\nname = \"web-1\"\n[[vm.ram]]\nname = \"r\"\npath = \"r\"\n"
		}, []string{"vm[1].name", "twice"}},
		{"no vm", func(t *testing.T) string {
			i := strings.Index(baseSender, "[[vm]]")
			return baseSender[:i]
		}, []string{"vm", "nothing to replicate"}},
		{"vm without images", func(t *testing.T) string {
			i := strings.Index(baseSender, "  [[vm.disk]]")
			return baseSender[:i]
		}, []string{`vm "web-1"`, "nothing to replicate"}},
		{"bad mode", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `mode = "often"`)
		}, []string{`vm "web-1": mode`, "often"}},
		{"scheduled without schedule", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `mode = "scheduled"`)
		}, []string{"schedule", "missing"}},
		{"schedule in continuous mode", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, "mode = \"continuous\"\nschedule = \"15m\"")
		}, []string{"schedule", "only used with"}},
		{"bad compression", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `compression = "max"`)
		}, []string{"compression", "max"}},
		{"auto compression without an RPO target", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `compression = "auto"`)
		}, []string{"compression", "auto", "rpo_target"}},
		{"max_interval without an RPO target", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, `max_interval = "5m"`)
		}, []string{"max_interval", "rpo_target"}},
		{"RPO target not above min_interval", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, "min_interval = \"30s\"\nrpo_target = \"20s\"")
		}, []string{"rpo_target", "MinInterval", "no room"}},
		{"RPO target on a schedule", func(t *testing.T) string {
			return edit(t, baseSender, `min_interval = "30s"`, "mode = \"scheduled\"\nschedule = \"15m\"\nrpo_target = \"1h\"")
		}, []string{"rpo_target", "continuous"}},
		{"bandwidth cap in ambiguous units", func(t *testing.T) string {
			return edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\nbandwidth_cap = \"100MB\"")
		}, []string{"bandwidth_cap", "Mbit/s"}},
		{"too many connections", func(t *testing.T) string {
			return edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\nconnections = 100")
		}, []string{"receiver.connections", "1 to 64"}},
		{"negative connections", func(t *testing.T) string {
			return edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\nconnections = -2")
		}, []string{"receiver.connections", "auto"}},
		{"connections neither auto nor a number", func(t *testing.T) string {
			return edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\nconnections = \"many\"")
		}, []string{"connections", "many", "auto"}},
		{"bad format", func(t *testing.T) string {
			return edit(t, baseSender, `path = "images/vda.raw"`, "path = \"images/vda.raw\"\nformat = \"vmdk\"")
		}, []string{"format", "vmdk"}},
		{"missing disk path", func(t *testing.T) string {
			return edit(t, baseSender, `path = "images/vda.raw"`, "")
		}, []string{`disk "vda".path`, "missing"}},
		{"duplicate disk", func(t *testing.T) string {
			return baseSender + "  [[vm.disk]]\n  name = \"vda\"\n  path = \"x\"\n"
		}, []string{`disk "vda"`, "twice"}},
		{"idle timeout too short", func(t *testing.T) string {
			return edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\nidle_timeout = \"100ms\"")
		}, []string{"receiver.idle_timeout", "outside"}},
		{"wrong type", func(t *testing.T) string {
			return edit(t, baseSender, `dir = "state"`, `dir = 5`)
		}, []string{"state.dir"}},
		{"syntax error", func(t *testing.T) string { return baseSender + "[[vm]\n" }, []string{"line"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, "sender.toml", tc.text(t))
			_, err := loadSenderConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want one mentioning %q", tc.want)
			}
			var ce *configError
			if !errors.As(err, &ce) || exitCode(err) != exitUsage {
				t.Errorf("error %v is not a configuration error (exit %d)", err, exitCode(err))
			}
			t.Log(err)
			msg := err.Error()
			for _, w := range append([]string{path}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestSenderConfigResolvesAndDefaults(t *testing.T) {
	path := writeConfig(t, "sender.toml", baseSender+"\n[[vm]]\nname = \"db-1\"\nschedule = \"15m\"\n[[vm.disk]]\nname = \"vda\"\npath = \"db.qcow2\"\n")
	dir := filepath.Dir(path)
	cfg, err := loadSenderConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ got, want string }{
		{cfg.Identity.Cert, filepath.Join(dir, "keys/a.crt")},
		{cfg.Identity.Key, filepath.Join(dir, "keys/a.key")},
		{cfg.State.Dir, filepath.Join(dir, "state")},
		{cfg.vms[0].Disks[0].Path, filepath.Join(dir, "images/vda.raw")},
		{cfg.vms[0].RAM[0].Path, filepath.Join(dir, "images/ram")},
		{cfg.vms[0].DeviceState, "/abs/dev.state"}, // absolute paths stay
		{string(cfg.vms[0].Mode), string(agent.Continuous)},
		{cfg.vms[0].Compression, "fast"},
		{cfg.vms[0].Disks[0].Format, "auto"},
		{string(cfg.vms[1].Mode), string(agent.Scheduled)}, // inferred from schedule
		{cfg.stateDir("web-1"), filepath.Join(dir, "state", "web-1")},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if got := cfg.vms[0].Disks[0].BlockSize; got != 128<<10 {
		t.Errorf("block size %d", got)
	}
	if got := cfg.vms[1].Disks[0].BlockSize; got != 64<<10 {
		t.Errorf("default block size %d", got)
	}
	if got := cfg.transportOptions().IdleTimeout; got != 0 {
		t.Errorf("idle timeout %s, want the transport default", got)
	}
	if got := cfg.vms[0].Pacing(); got.Mode != agent.Continuous || got.MinInterval != 30*time.Second {
		t.Errorf("continuous pacing %+v", got)
	}
	if got := cfg.vms[1].Pacing(); got.Mode != agent.Scheduled || got.Schedule != 15*time.Minute {
		t.Errorf("scheduled pacing %+v", got)
	}
	if got := cfg.vms[0].Pacing().Compression; got != wire.CompressFast {
		t.Errorf("compression %v", got)
	}
	o := cfg.vms[0].FileOptions(time.Now)
	if err := o.Validate(); err != nil {
		t.Errorf("file source options: %v", err)
	}
	if len(o.Disks) != 1 || o.Disks[0].BlockSize != 128<<10 || o.Disks[0].Path != filepath.Join(dir, "images/vda.raw") || len(o.RAM) != 1 || o.DeviceState != "/abs/dev.state" {
		t.Errorf("file source options %+v", o)
	}
	if cfg.peer.Connections != 0 {
		t.Errorf("connections %d by default, want 0 (auto)", cfg.peer.Connections)
	}
	for _, tc := range []struct {
		line string
		want int
	}{{`connections = "auto"`, 0}, {"connections = 4", 4}, {"connections = 1", 1}} {
		c, err := loadSenderConfig(writeConfig(t, "c.toml", edit(t, baseSender, `address = "127.0.0.1:7447"`, "address = \"127.0.0.1:7447\"\n"+tc.line)))
		if err != nil {
			t.Errorf("%s: %v", tc.line, err)
		} else if c.peer.Connections != tc.want {
			t.Errorf("%s: connections %d, want %d", tc.line, c.peer.Connections, tc.want)
		}
	}
	// The fingerprint is normalised as tlsid prints it.
	cfg2, err := loadSenderConfig(writeConfig(t, "s.toml", edit(t, baseSender, fpA, strings.ToUpper(strings.TrimPrefix(fpA, "sha256:")))))
	if err != nil {
		t.Fatal(err)
	}
	if cfg2.Receiver.Fingerprints[0] != fpA {
		t.Errorf("fingerprint %q not normalised", cfg2.Receiver.Fingerprints[0])
	}
}

func TestReceiverConfig(t *testing.T) {
	tests := []struct {
		name string
		text func(t *testing.T) string
		want []string
	}{
		{"valid", func(t *testing.T) string { return baseReceiver }, nil},
		{"valid CA mode", func(t *testing.T) string {
			return "ca = \"ca.pem\"\n" + baseReceiver + "[[sender]]\nname = \"site-c\"\nvms = [\"mail-1\"]\n"
		}, nil},
		{"unknown key", func(t *testing.T) string {
			return edit(t, baseReceiver, `dir = "replicas"`, "dir = \"replicas\"\nfsync = false")
		}, []string{"unknown key", "storage.fsync"}},
		{"idle timeout too long", func(t *testing.T) string { return "idle_timeout = \"1h\"\n" + baseReceiver }, []string{"idle_timeout", "outside"}},
		{"bad ack size", func(t *testing.T) string { return "ack_every = \"8MB\"\n" + baseReceiver }, []string{"ack_every", "8MB"}},
		{"ack size too small", func(t *testing.T) string { return "ack_every = \"1KiB\"\n" + baseReceiver }, []string{"ack_every", "outside"}},
		{"missing identity", func(t *testing.T) string {
			return edit(t, baseReceiver, "[identity]\ncert = \"keys/b.crt\"\nkey = \"keys/b.key\"\n", "")
		}, []string{"identity.cert", "missing"}},
		{"missing listen", func(t *testing.T) string {
			return edit(t, baseReceiver, `listen = "127.0.0.1:7447"`, "")
		}, []string{"listen", "missing"}},
		{"bad listen", func(t *testing.T) string {
			return edit(t, baseReceiver, `"127.0.0.1:7447"`, `"127.0.0.1:http"`)
		}, []string{"listen", "port"}},
		{"missing storage", func(t *testing.T) string {
			return edit(t, baseReceiver, `dir = "replicas"`, "")
		}, []string{"storage.dir", "missing"}},
		{"malformed fingerprint", func(t *testing.T) string {
			return edit(t, baseReceiver, fpA, "sha256:12:34")
		}, []string{`sender "site-a": fingerprint`, "hex digits"}},
		{"no fingerprint without ca", func(t *testing.T) string {
			return edit(t, baseReceiver, `fingerprint = "`+fpA+`"`, "")
		}, []string{`sender "site-a": fingerprint`, "ca"}},
		{"vm name escapes", func(t *testing.T) string {
			return edit(t, baseReceiver, `"db-1"`, `"../x"`)
		}, []string{`sender "site-a": vms`, "../x"}},
		{"no vms", func(t *testing.T) string {
			return edit(t, baseReceiver, `vms = ["web-1", "db-1"]`, "vms = []")
		}, []string{"vms", "empty"}},
		{"two writers", func(t *testing.T) string {
			return baseReceiver + "[[sender]]\nname = \"site-c\"\nfingerprint = \"" + fpB + "\"\nvms = [\"web-1\"]\n"
		}, []string{`sender "site-c": vms`, "single writer"}},
		{"same certificate twice", func(t *testing.T) string {
			return baseReceiver + "[[sender]]\nname = \"site-c\"\nfingerprint = \"" + fpA + "\"\nvms = [\"x\"]\n"
		}, []string{`sender "site-c": fingerprint`, "site-a"}},
		{"duplicate name", func(t *testing.T) string {
			return baseReceiver + "[[sender]]\nname = \"site-a\"\nfingerprint = \"" + fpB + "\"\nvms = [\"x\"]\n"
		}, []string{"sender[1].name", "twice"}},
		{"no senders", func(t *testing.T) string {
			return baseReceiver[:strings.Index(baseReceiver, "[[sender]]")]
		}, []string{"sender", "refused"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, "receiver.toml", tc.text(t))
			_, err := loadReceiverConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want one mentioning %q", tc.want)
			}
			t.Log(err)
			if exitCode(err) != exitUsage {
				t.Errorf("exit code %d for %v", exitCode(err), err)
			}
			for _, w := range append([]string{path}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestReceiverConfigResolvesAndDefaults(t *testing.T) {
	path := writeConfig(t, "receiver.toml", "ca = \"../ca.pem\"\n"+baseReceiver)
	dir := filepath.Dir(path)
	cfg, err := loadReceiverConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ got, want string }{
		{cfg.Identity.Cert, filepath.Join(dir, "keys/b.crt")},
		{cfg.Storage.Dir, filepath.Join(dir, "replicas")},
		{cfg.CA, filepath.Join(filepath.Dir(dir), "ca.pem")},
		{cfg.replicaDir("web-1"), filepath.Join(dir, "replicas", "web-1")},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if cfg.set.AckBytes != 8<<20 {
		t.Errorf("ack_every default %d", cfg.set.AckBytes)
	}
	if got := strings.Join(cfg.vmNames(), ","); got != "db-1,web-1" {
		t.Errorf("vm names %s", got)
	}
}

func TestExampleConfigs(t *testing.T) {
	s, err := loadSenderConfig("../../testdata/configs/sender.toml")
	if err != nil {
		t.Fatalf("example sender config: %v", err)
	}
	if len(s.VMs) != 3 || s.vms[1].Mode != agent.Scheduled || !s.vms[2].Live() || s.vms[2].Disks[1].Node != "disk1" {
		t.Errorf("example sender config: %+v", s.VMs)
	}
	if _, err := loadReceiverConfig("../../testdata/configs/receiver.toml"); err != nil {
		t.Fatalf("example receiver config: %v", err)
	}
	rb, _, err := loadRunbook("../../testdata/configs/runbook.toml")
	if err != nil {
		t.Fatalf("example runbook: %v", err)
	}
	if len(rb.Steps()) != 7 || rb.VMs[0].Args[1] != "kvm" {
		t.Errorf("example runbook: %d steps, args %v", len(rb.Steps()), rb.VMs[0].Args)
	}
	for path, want := range map[string]string{"../../testdata/configs/sender.toml": "sender", "../../testdata/configs/receiver.toml": "receiver"} {
		if got, err := configKind(path); err != nil || got != want {
			t.Errorf("configKind(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
}

func TestConfigKindAmbiguous(t *testing.T) {
	for name, text := range map[string]string{
		"both":    baseReceiver + "[[vm]]\nname = \"x\"\n",
		"neither": "listen = \"127.0.0.1:1\"\n",
	} {
		if _, err := configKind(writeConfig(t, "c.toml", text)); exitCode(err) != exitUsage {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func TestAuthorize(t *testing.T) {
	cfg, err := loadReceiverConfig(writeConfig(t, "r.toml", "ca = \"ca.pem\"\n"+baseReceiver+"[[sender]]\nname = \"site-c\"\nvms = [\"mail-1\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	authorize := cfg.set.Access.Authorizer()
	tests := []struct {
		peer receiver.Peer
		vm   string
		ok   bool
	}{
		{receiver.Peer{Fingerprint: fpA, Name: "whatever"}, "web-1", true},
		{receiver.Peer{Fingerprint: fpA, Name: "site-a"}, "db-1", true},
		{receiver.Peer{Fingerprint: fpA, Name: "site-a"}, "mail-1", false},
		// A pinned certificate is judged by its entry, not by its name.
		{receiver.Peer{Fingerprint: fpA, Name: "site-c"}, "mail-1", false},
		// CA mode: an unpinned certificate (so CA-signed) by common name.
		{receiver.Peer{Fingerprint: fpB, Name: "site-c"}, "mail-1", true},
		{receiver.Peer{Fingerprint: fpB, Name: "site-c"}, "web-1", false},
		// A pinned entry cannot be claimed by name.
		{receiver.Peer{Fingerprint: fpB, Name: "site-a"}, "web-1", false},
		{receiver.Peer{Fingerprint: fpB, Name: "nobody"}, "web-1", false},
	}
	for _, tc := range tests {
		err := authorize(tc.peer, tc.vm)
		if (err == nil) != tc.ok {
			t.Errorf("authorize(%+v, %s) = %v; want ok=%v", tc.peer, tc.vm, err, tc.ok)
		}
		if err != nil && !errors.Is(err, receiver.ErrUnauthorized) {
			t.Errorf("refusal %v does not wrap receiver.ErrUnauthorized", err)
		}
	}
}
