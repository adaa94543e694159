package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

// diskFlags collects repeated --disk NAME=PATH.
type diskFlags []string

func (d *diskFlags) String() string     { return strings.Join(*d, ",") }
func (d *diskFlags) Set(v string) error { *d = append(*d, v); return nil }

func seedCommand() *command {
	var configPath, vm string
	var disks diskFlags
	blockSize := Size(64 << 10)
	c := &command{
		name:  "seed",
		short: "start a replica from disk images already at this site (failback)",
		args:  "--config RECEIVER.toml --vm NAME --disk NAME=IMAGE [--disk ...] [--block-size SIZE]",
		summary: `Create the replica of VM NAME, at this receiver, from disk images that are
already here: the protected site's own disks when a VM that failed over to
the DR site comes back. Replication from the DR site into it then sends only
the blocks that differ, not the whole VM. Each --disk names a disk as the
sending side's configuration does, and an image (raw or qcow2; read only).
The images are copied into the replica; the replica must not exist yet.`,
		flags: func(set *flag.FlagSet) {
			set.StringVar(&configPath, "config", "", "receiver configuration file (required)")
			set.StringVar(&vm, "vm", "", "the VM (required)")
			set.Var(&disks, "disk", "NAME=IMAGE, repeated")
			set.Var(&blockSize, "block-size", "change-tracking granularity (as the sender's block_size)")
		},
	}
	c.run = func(ctx context.Context, e *env, _ *flag.FlagSet, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if configPath == "" || vm == "" || len(disks) == 0 {
			return usagef("--config, --vm and at least one --disk are required")
		}
		if err := vmspec.ValidVMName(vm); err != nil {
			return usagef("--vm: %v", err)
		}
		cfg, err := loadReceiverConfig(configPath)
		if err != nil {
			return err
		}
		var targets []replica.SeedTarget
		for _, d := range disks {
			name, path, ok := strings.Cut(d, "=")
			if !ok || name == "" || path == "" {
				return usagef("--disk %q: want NAME=IMAGE", d)
			}
			im, err := diskmirror.Open(ctx, path, diskmirror.FormatAuto, diskmirror.Qcow2Options{})
			if err != nil {
				return fmt.Errorf("disk %s: %w", name, err)
			}
			defer im.Close()
			targets = append(targets, replica.SeedTarget{Kind: vmspec.KindDisk, Name: name, Size: im.Size(), BlockSize: int(blockSize), Reader: im})
		}
		m, err := replica.Seed(vfs.Default, cfg.replicaDir(vm), vm, targets, e.now)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "replica of %s seeded at %s from %d disk(s) (epoch %d); the next epoch from its sender sends only what differs\n", vm, cfg.replicaDir(vm), len(m.Targets), m.Epoch)
		return nil
	}
	return c
}
