package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/grouppoint"
	"github.com/drsync/drsync/statusreport"
)

func statusCommand() *command {
	var configPath string
	var asJSON bool
	c := &command{
		name:  "status",
		short: "show per VM the committed epoch, RPO lag, bytes and last error",
		args:  "--config FILE [--json]",
		summary: `Show, per VM, the last committed epoch, its cut time, the RPO lag (now
minus that cut), bytes sent or received and the last error. FILE is either
a sender or a receiver configuration. A live guest that is paused when it
should run, or that a sender's death left paused, gets a line of its own
under the table. Safe while send and receive run: it only reads their
status files and the replicas' manifests.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "sender or receiver configuration file (required)")
			set.BoolVar(&asJSON, "json", false, "print a JSON array instead of a table")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" {
			return usagef("--config is required")
		}
		kind, err := configKind(configPath)
		if err != nil {
			return err
		}
		var rows []statusreport.Row
		var problems []error
		var groups []grouppoint.GroupPoint // a receiver's consistency groups
		now := e.now()
		switch kind {
		case "sender":
			cfg, err := loadSenderConfig(configPath)
			if err != nil {
				return err
			}
			rows, problems = statusreport.Sender(cfg.statusVMs(cfg.vms), now)
		default:
			cfg, err := loadReceiverConfig(configPath)
			if err != nil {
				return err
			}
			store, closeStore, err := cfg.Storage.OpenStore(cfg.Storage.Dir, nil)
			if err != nil {
				return err
			}
			defer closeStore()
			rows, problems = cfg.statusSource(store).Rows(now)
			groups, err = replica.NewestGroupPoints(store, cfg.vmNames())
			problems = append(problems, err)
			statusreport.AddGroupPoints(rows, groups, now)
		}
		if asJSON {
			rows = append([]statusreport.Row{}, rows...) // [] rather than null
			if err := statusreport.WriteJSON(e.stdout, rows); err != nil {
				return err
			}
		} else {
			statusreport.WriteTable(e.stdout, kind, rows)
			grouppoint.WriteTable(e.stdout, groups, now)
		}
		return errors.Join(problems...)
	}
	return c
}

// configKind tells a sender configuration ([[vm]]) from a receiver one
// ([[sender]], [storage]).
func configKind(path string) (string, error) {
	var m map[string]any
	if _, err := toml.DecodeFile(path, &m); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", &configError{path, "", fmt.Errorf("cannot read: %w", err)}
		}
		return "", &configError{path, "", err}
	}
	_, vm := m["vm"]
	_, snd := m["sender"]
	_, sto := m["storage"]
	switch {
	case vm && !snd && !sto:
		return "sender", nil
	case !vm && (snd || sto):
		return "receiver", nil
	case vm:
		return "", &configError{path, "", errors.New("has both [[vm]] (sender) and [[sender]]/[storage] (receiver) sections; use one file per role")}
	}
	return "", &configError{path, "", errors.New("neither a sender configuration (no [[vm]]) nor a receiver configuration (no [[sender]] or [storage])")}
}

// statusVMs are vms as their status reads them.
func (c *SenderConfig) statusVMs(vms []agent.VMSettings) []statusreport.SenderVM {
	out := make([]statusreport.SenderVM, len(vms))
	for i, v := range vms {
		dir := c.stateDir(v.Name)
		out[i] = statusreport.SenderVM{Name: v.Name, StateDir: dir, RPOTarget: v.RPOTarget, Group: groupcut.Of(c.groups, v.Name)}
		if v.Live() {
			out[i].WorkDir = v.LiveOptions(dir, time.Now).WorkDir
		}
	}
	return out
}

// statusSource is the receiver's replicas as its status reads them.
func (c *ReceiverConfig) statusSource(store replica.Store) statusreport.Receiver {
	return statusreport.Receiver{Store: store, Dir: c.Storage.Dir, VMs: c.vmNames()}
}
