package main

import (
	"strings"
	"testing"
)

// TestReceiverConfigRBD: the [storage] keys of a receiver on Ceph reach
// the library, and its errors name the key in the file.
func TestReceiverConfigRBD(t *testing.T) {
	rbd := func(keys string) string {
		return edit(t, baseReceiver, `dir = "replicas"`, "dir = \"replicas\"\n"+keys)
	}
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"valid", rbd("backend = \"rbd\"\npool = \"drsync\"\nceph_conf = \"/etc/ceph/ceph.conf\"\nclient = \"drsync\""), nil},
		{"default conf and user", rbd("backend = \"rbd\"\npool = \"drsync\""), nil},
		{"file backend named", rbd(`backend = "file"`), nil},
		{"no pool", rbd(`backend = "rbd"`), []string{"storage.pool", "missing"}},
		{"unknown backend", rbd(`backend = "s3"`), []string{"storage.backend", "s3"}},
		{"client with prefix", rbd("backend = \"rbd\"\npool = \"p\"\nclient = \"client.drsync\""), []string{"storage.client", "prefix"}},
		{"relative ceph_conf", rbd("backend = \"rbd\"\npool = \"p\"\nceph_conf = \"ceph.conf\""), []string{"storage.ceph_conf", "absolute"}},
		{"pool without rbd", rbd(`pool = "p"`), []string{"storage.pool", "backend"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, "receiver.toml", tc.text)
			cfg, err := loadReceiverConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if strings.Contains(tc.text, "pool") && cfg.set.Backend.Pool != "drsync" {
					t.Fatalf("pool %q did not reach the settings", cfg.set.Backend.Pool)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want one mentioning %q", tc.want)
			}
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

// TestRunbookOnRBDReceiver: a runbook whose receiver keeps its replicas in
// Ceph opens them there, with the receiver's pool, user, ceph.conf and
// keep_points.
func TestRunbookOnRBDReceiver(t *testing.T) {
	rc := writeConfig(t, "receiver.toml", edit(t, baseReceiver, `dir = "replicas"`,
		"dir = \"replicas\"\nkeep_points = 3\nbackend = \"rbd\"\npool = \"dr\"\nceph_conf = \"/etc/ceph/dr.conf\"\nclient = \"drsync\""))
	path := writeConfig(t, "runbook.toml", "name = \"site-b\"\nreceiver_config = \""+rc+"\"\nwork_dir = \"w\"\n")
	rb, _, err := loadRunbook(path)
	if err != nil {
		t.Fatal(err)
	}
	if rb.RBD == nil || rb.RBD.Pool != "dr" || rb.RBD.Client != "drsync" || rb.RBD.CephConf != "/etc/ceph/dr.conf" || rb.KeepPoints != 3 {
		t.Fatalf("runbook storage: %+v keep %d", rb.RBD, rb.KeepPoints)
	}
}
