package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
)

const groupVMs = `
[[vm]]
name = "app-1"
qmp = "/run/app-1/qmp.sock"
  [[vm.disk]]
  name = "vda"
  node = "disk0"

[[vm]]
name = "db-1"
qmp = "/run/db-1/qmp.sock"
  [[vm.disk]]
  name = "vda"
  node = "disk0"
`

const localGroup = `
[[group]]
name = "shop"
vms = ["db-1", "app-1"]
rpo = "1m"
`

func TestSenderConfigGroups(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		pairs []string // edits to the text
		want  []string // substrings of the error; nil means valid
	}{
		{name: "one host", text: localGroup},
		{name: "leader", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nlisten = \"127.0.0.1:7500\"\npeers = [\"" + fpA + "\"]", `"db-1", "app-1"`, `"db-1", "app-1", "web-9"`}},
		{name: "follower", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nleader = \"192.0.2.1:7500\"\npeers = [\"" + fpA + "\"]", `"db-1", "app-1"`, `"app-1", "db-9"`}},
		{name: "no rpo", text: localGroup, pairs: []string{`rpo = "1m"`, ``}, want: []string{"group[0].rpo", "missing"}},
		{name: "no vms", text: localGroup, pairs: []string{`"db-1", "app-1"`, ``}, want: []string{"group[0].vms", "empty"}},
		{name: "VM twice in a group", text: localGroup, pairs: []string{`"db-1", "app-1"`, `"db-1", "db-1"`}, want: []string{"group[0].vms", "twice"}},
		{name: "VM in two groups", text: localGroup + strings.Replace(localGroup, `"shop"`, `"shop2"`, 1), want: []string{"group[1].vms", "already in group \"shop\"", "at most one group"}},
		{name: "group listed twice", text: localGroup + strings.Replace(localGroup, `"db-1", "app-1"`, `"x-1"`, 1), want: []string{"group[1].name", "twice"}},
		{name: "no local VM", text: localGroup, pairs: []string{`"db-1", "app-1"`, `"x-1"`}, want: []string{"group[0].vms", "none of"}},
		{name: "remote VMs without leader or listen", text: localGroup, pairs: []string{`"db-1", "app-1"`, `"db-1", "x-1"`}, want: []string{"group[0].listen", "x-1"}},
		{name: "both leader and listen", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nleader = \"192.0.2.1:7500\"\nlisten = \":7500\"\npeers = [\"" + fpA + "\"]", `"db-1", "app-1"`, `"db-1", "x-1"`}, want: []string{"group[0].leader", "not both"}},
		{name: "remote without peers", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nleader = \"192.0.2.1:7500\"", `"db-1", "app-1"`, `"db-1", "x-1"`}, want: []string{"group[0].peers", "missing"}},
		{name: "bad peer", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nleader = \"192.0.2.1:7500\"\npeers = [\"md5:x\"]", `"db-1", "app-1"`, `"db-1", "x-1"`}, want: []string{"group[0].peers[0]"}},
		{name: "bad leader address", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nleader = \"nowhere\"\npeers = [\"" + fpA + "\"]", `"db-1", "app-1"`, `"db-1", "x-1"`}, want: []string{"group[0].leader", "host:port"}},
		{name: "listen on a one-host group", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nlisten = \":7500\""}, want: []string{"group[0].listen", "protected here"}},
		{name: "image-file VM in a group", text: localGroup, pairs: []string{`"db-1", "app-1"`, `"db-1", "web-1"`}, want: []string{"group[0].vms", `"web-1" has no qmp`}},
		{name: "step timeout not below the rpo", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nstep_timeout = \"2m\""}, want: []string{"group[0].step_timeout", "rpo"}},
		{name: "unknown key", text: localGroup, pairs: []string{`rpo = "1m"`, `rpo = "1m"` + "\nrpo_target = \"1m\""}, want: []string{"unknown key", "group.rpo_target"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := baseSender + groupVMs + edit(t, tc.text, tc.pairs...)
			path := writeConfig(t, "sender.toml", text)
			c, err := loadSenderConfig(path)
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
			_ = c
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSenderConfigGroupMemberOwnPacing(t *testing.T) {
	text := baseSender + edit(t, groupVMs, `qmp = "/run/db-1/qmp.sock"`, `qmp = "/run/db-1/qmp.sock"`+"\nrpo_target = \"30s\"") + localGroup
	_, err := loadSenderConfig(writeConfig(t, "sender.toml", text))
	if err == nil || !strings.Contains(err.Error(), `vm "db-1": rpo_target`) {
		t.Fatalf("error %v; want one naming vm \"db-1\": rpo_target", err)
	}
}

func TestSenderConfigGroupOptions(t *testing.T) {
	c, err := loadSenderConfig(writeConfig(t, "sender.toml", baseSender+groupVMs+localGroup))
	if err != nil {
		t.Fatal(err)
	}
	o := c.groups[0]
	if o.Name != "shop" || strings.Join(o.Members, ",") != "app-1,db-1" || strings.Join(o.Local, ",") != "app-1,db-1" || o.RPO != time.Minute || o.Role() != groupcut.Alone || o.StepTimeout != groupcut.DefaultStepTimeout {
		t.Errorf("options %+v", o)
	}
}

func TestExampleGroupConfig(t *testing.T) {
	c, err := loadSenderConfig("../../testdata/configs/sender-group.toml")
	if err != nil {
		t.Fatalf("example group config: %v", err)
	}
	if o := c.groups[0]; o.Role() != groupcut.Leading || len(o.Local) != 2 || len(o.Members) != 3 {
		t.Errorf("example group config: %+v", o)
	}
}
