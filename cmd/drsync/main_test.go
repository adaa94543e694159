package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drsync/drsync/tlsid"
)

func TestCommandLine(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string // substring of stdout+stderr
	}{
		{nil, exitUsage, "Commands:"},
		{[]string{"help"}, exitOK, "Exit codes:"},
		{[]string{"--help"}, exitOK, "verify"},
		{[]string{"help", "send"}, exitOK, "--once"},
		{[]string{"help", "nope"}, exitUsage, `unknown command "nope"`},
		{[]string{"nope"}, exitUsage, `unknown command "nope"`},
		{[]string{"send", "-h"}, exitOK, "--retries"},
		{[]string{"receive", "--help"}, exitOK, "--config"},
		{[]string{"verify", "-h"}, exitOK, "--wait"},
		{[]string{"send"}, exitUsage, "--config is required"},
		{[]string{"send", "--bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"send", "--config", "x.toml", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"send", "--config", "x.toml", "--retries", "3"}, exitUsage, "only applies with --once"},
		{[]string{"receive", "--config", "/nonexistent/r.toml"}, exitUsage, "/nonexistent/r.toml"},
		{[]string{"receive", "--config", "x.toml", "--log-level", "loud"}, exitUsage, "--log-level"},
		{[]string{"status", "--config", "/nonexistent/c.toml"}, exitUsage, "cannot read"},
		{[]string{"keygen"}, exitUsage, "--name is required"},
		{[]string{"keygen", "--name", "../evil"}, exitUsage, "--name"},
		{[]string{"verify"}, exitUsage, "--replica DIR is required, or --config FILE and --vm NAME"},
		{[]string{"verify", "--config", "r.toml"}, exitUsage, "--replica DIR is required, or --config FILE and --vm NAME"},
		{[]string{"verify", "--replica", "/", "--vm", "web-1"}, exitUsage, "--replica DIR is required, or --config FILE and --vm NAME"},
		{[]string{"verify", "--replica", "/nonexistent/replica"}, exitUsage, "no such file"},
		{[]string{"verify", "--replica", "/"}, exitFailure, "not a replica"},
	}
	for _, tc := range tests {
		code, out, errs := drsync(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.out) {
			t.Errorf("drsync %s: exit %d, want %d; output does not contain %q or code differs:\n%s%s", strings.Join(tc.args, " "), code, tc.code, tc.out, out, errs)
		}
	}
}

// A replica the receiver set up but where nothing is committed yet is
// exactly its empty epoch 0.
func TestVerifyEmptyReplica(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "web-1")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "LOCK"), nil)
	code, out, _ := drsync(t, "verify", "--replica", dir)
	if code != exitOK || !strings.Contains(out, "epoch 0") || !strings.Contains(out, "nothing committed yet") {
		t.Fatalf("verify of an empty replica: exit %d\n%s", code, out)
	}
	code, out, _ = drsync(t, "verify", "--replica", dir, "--json")
	if code != exitOK || !strings.Contains(out, `"ok": true`) || !strings.Contains(out, `"vm": "web-1"`) {
		t.Fatalf("verify --json of an empty replica: exit %d\n%s", code, out)
	}
}

func TestSendRejectsUnknownVMAndMissingImages(t *testing.T) {
	cfg := writeConfig(t, "sender.toml", baseSender)
	code, _, errs := drsync(t, "send", "--config", cfg, "--vm", "db-9", "--once")
	if code != exitUsage || !strings.Contains(errs, "configured: web-1") {
		t.Fatalf("unknown --vm: exit %d: %s", code, errs)
	}
	// Identity files and images are checked before anything starts.
	code, _, errs = drsync(t, "send", "--config", cfg, "--once")
	if code != exitUsage || !strings.Contains(errs, "identity") || !strings.Contains(errs, filepath.Join(filepath.Dir(cfg), "keys/a.crt")) {
		t.Fatalf("missing identity: exit %d: %s", code, errs)
	}
	if !strings.Contains(errs, "identity.cert") {
		t.Errorf("message does not name the key: %s", errs)
	}
	keys := filepath.Join(filepath.Dir(cfg), "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsid.WriteIdentity(keys, "a"); err != nil {
		t.Fatal(err)
	}
	code, _, errs = drsync(t, "send", "--config", cfg, "--once")
	if code != exitUsage || !strings.Contains(errs, `vm "web-1": disk "vda".path`) || !strings.Contains(errs, "no such file") {
		t.Fatalf("missing image: exit %d: %s", code, errs)
	}
}

// A RAM file that is not whole pages is a configuration error: send stops at
// once with exit 2 and says why, instead of retrying an epoch that cannot
// succeed.
func TestSendRAMNotWholePages(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	fpSender := keygen(t, keys, "a")
	fpReceiver := keygen(t, keys, "site-b")
	addr := startReceiver(t, dir, fpSender)
	cfg := filepath.Join(dir, "sender.toml")
	writeFile(t, cfg, []byte(edit(t, baseSender,
		`device_state = "/abs/dev.state"`, `device_state = "images/dev.state"`,
		`address = "127.0.0.1:7447"`, fmt.Sprintf("address = %q", addr),
		`fingerprints = ["`+fpA+`"]`, fmt.Sprintf("fingerprints = [%q]", fpReceiver))))
	writeFile(t, filepath.Join(dir, "images/vda.raw"), make([]byte, 256<<10))
	writeFile(t, filepath.Join(dir, "images/ram"), make([]byte, 4097))
	writeFile(t, filepath.Join(dir, "images/dev.state"), []byte("state"))
	code, _, errs := drsync(t, "send", "--config", cfg, "--once")
	if code != exitUsage || !strings.Contains(errs, "4097 bytes, not whole 4096-byte pages") {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Contains(errs, "epoch failed; retrying") {
		t.Errorf("a configuration error was retried: %s", errs)
	}
}
