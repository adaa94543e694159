package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/statusreport"
)

// A sender's status rows name each member's consistency group, with the
// group's rpo and its lag behind the oldest member's committed cut.
func TestSenderStatusNamesGroups(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC)
	cfg := &SenderConfig{State: StateConfig{Dir: dir}, vms: []agent.VMSettings{{Name: "app-1"}, {Name: "db-1"}, {Name: "mail-1"}},
		groups: []groupcut.Options{{Name: "shop", Members: []string{"app-1", "db-1", "web-1"}, Local: []string{"app-1", "db-1"}, RPO: time.Minute}}}
	for vm, age := range map[string]time.Duration{"app-1": 20 * time.Second, "db-1": 90 * time.Second, "mail-1": time.Hour} {
		st := agent.Status{VM: vm, Epoch: 3, Cut: now.Add(-age)}
		if err := jsonfile.WriteAtomic(filepath.Join(cfg.stateDir(vm), agent.StatusFile), &st); err != nil {
			t.Fatal(err)
		}
	}
	rows, problems := statusreport.Sender(cfg.statusVMs(cfg.vms), now)
	if len(problems) > 0 || len(rows) != 3 {
		t.Fatalf("rows %+v, problems %v", rows, problems)
	}
	for _, r := range rows {
		g := r.Group
		if r.VM == "mail-1" {
			if g != nil {
				t.Errorf("mail-1 is in no group, status says %+v", g)
			}
			continue
		}
		if g == nil || g.Name != "shop" || len(g.Members) != 3 || g.RPOSeconds != 60 || g.RPOLagSeconds == nil || *g.RPOLagSeconds != 90 || !g.OverRPO {
			t.Errorf("%s: group %+v", r.VM, g)
		}
	}
}
