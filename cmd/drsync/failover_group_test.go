package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/drsync/drsync/receiver"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/statusreport"
	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
)

// drsync status and the status page name a consistency
// group's newest complete group point; drsync failover --consistency-group
// --dry-run names it and resumes each member from its epoch of it, though
// web-1 committed later epochs of its own and db-1 an incomplete later cut.
func mustReceiverConfig(t *testing.T, path string) *ReceiverConfig {
	t.Helper()
	c, err := loadReceiverConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFailoverConsistencyGroupDryRun(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "receiver.toml"), []byte(baseReceiver))
	rcv, err := receiver.New(receiver.Options{Root: filepath.Join(dir, "replicas"), FS: vfs.Default, KeepPoints: 2,
		Authorize: func(receiver.Peer, string) error { return nil }, AckBytes: 256 << 10, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	members := []string{"db-1", "web-1"}
	cut := 0
	senders := map[string]*sender.Sender{}
	for _, vm := range members {
		src := &testkit.MemSource{DeviceState: []byte("dev"), Targets: []*testkit.MemTarget{
			{Kind: vmspec.KindDisk, Name: "vda", BlockSize: 64 << 10, Data: make([]byte, 1<<20)},
			{Kind: vmspec.KindRAM, Name: "pc.ram", BlockSize: vmspec.PageSize, Data: make([]byte, 1<<20)},
		}}
		src.Group = func(int) *vmspec.GroupCut {
			if cut == 0 {
				return nil
			}
			return &vmspec.GroupCut{Group: "shop", Cut: uint64(cut), Members: members}
		}
		s, err := sender.New(sender.Options{VM: vm, Source: src, Dialer: testkit.PipeDialer(rcv, receiver.Peer{Name: "a"}),
			Store: sender.Store{FS: memfs.New(), Dir: "/s/" + vm}, Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		senders[vm] = s
	}
	run := func(vm string, c int) {
		t.Helper()
		cut = c
		res, err := senders[vm].RunEpoch(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", vm, err)
		}
		t.Logf("%s: epoch %d, cut %d", vm, res.Epoch, c)
	}
	run("db-1", 1)
	run("web-1", 1)
	run("db-1", 2)
	run("web-1", 0)
	run("web-1", 2) // group point 2: db-1 epoch 2, web-1 epoch 3
	run("web-1", 0)
	run("db-1", 3) // cut 3 is not complete
	// status names the group point, which lags behind both members.
	_, out, errs := drsync(t, "status", "--config", filepath.Join(dir, "receiver.toml"))
	if !regexp.MustCompile(`(?m)^shop +cut 2 +1970-01-01T00:00:02Z +\S+ +db-1 epoch 2, web-1 epoch 3$`).MatchString(out) {
		t.Errorf("status does not show the group point:\n%s%s", out, errs)
	}
	// status --json carries it in each member's row, with the VM's epoch.
	_, out, _ = drsync(t, "status", "--config", filepath.Join(dir, "receiver.toml"), "--json")
	var rows []statusreport.Row
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, r := range rows {
		if g := r.Group; g == nil || g.Name != "shop" || g.Cut != 2 || g.Epoch != map[string]uint64{"db-1": 2, "web-1": 3}[r.VM] || g.RPOLagSeconds == nil {
			t.Errorf("status --json: %s's group %+v", r.VM, g)
		}
	}
	rcfg := mustReceiverConfig(t, filepath.Join(dir, "receiver.toml"))
	if page := rcfg.statusSource(replica.FileStore{FS: vfs.Default, Root: rcfg.Storage.Dir}).Page(time.Now()); len(page.ConsistencyGroups) != 1 || page.ConsistencyGroups[0].Cut != 2 {
		t.Errorf("status page groups %+v", page.ConsistencyGroups)
	}
	rb := filepath.Join(dir, "runbook.toml")
	writeFile(t, rb, []byte(`
name = "site-b"
receiver_config = "receiver.toml"
work_dir = "failover"

[[group]]
name = "all"
vms = ["db-1", "web-1"]

[[vm]]
name = "db-1"
accel = "tcg"
  [[vm.disk]]
  replica = "vda"
  node = "disk0"

[[vm]]
name = "web-1"
accel = "tcg"
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
`))
	code, out, errs := drsync(t, "failover", "--runbook", rb, "--dry-run", "--consistency-group", "shop")
	t.Logf("exit %d:\n%s%s", code, out, errs)
	if !regexp.MustCompile(`consistency group shop: group point of cut 2 at \S+ \(\S+ old\): db-1 epoch 2, web-1 epoch 3`).MatchString(out) {
		t.Errorf("dry run does not name the group point")
	}
	for _, want := range []string{`start:db-1 .*from epoch 2 `, `start:web-1 .*from epoch 3 `} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("dry run does not show %q", want)
		}
	}
	// MemSource cuts snapshot n at n seconds after the Unix epoch.
	_, out, _ = drsync(t, "failover", "--runbook", rb, "--dry-run", "--consistency-group", "shop", "--before", "1970-01-01T00:00:02Z")
	if !regexp.MustCompile(`group point of cut 1 .*: db-1 epoch 1, web-1 epoch 1`).MatchString(out) {
		t.Errorf("--before the second cut: %s", out)
	}
	code, _, errs = drsync(t, "failover", "--runbook", rb, "--dry-run", "--consistency-group", "shop", "--before", "1970-01-01T00:00:01Z")
	if code == exitOK || !regexp.MustCompile(`no complete group point cut before 1970-01-01T00:00:01Z`).MatchString(errs) {
		t.Errorf("--before every point: exit %d, %s", code, errs)
	}
}
