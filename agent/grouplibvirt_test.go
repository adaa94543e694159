package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vmspec"
)

// TestGroupCutOfDomainCarriesDefinition: a libvirt domain in a
// consistency group, led here or followed, gets group cuts that carry its
// sanitized definition (the blob target its single cuts carry) besides
// the group's tag. The domain is a real one under the tests' libvirtd (a
// diskless transient guest, cheap to run); the member's cut steps are
// fakes, as the cut itself is the group's and shown elsewhere.
func TestGroupCutOfDomainCarriesDefinition(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libvirtd")
	}
	hosttools.Libvirtd(t)
	dir := hosttools.ShortTempDir(t, "gd")
	name := "drsync-group-" + filepath.Base(dir)
	xml := filepath.Join(dir, "d.xml")
	if err := os.WriteFile(xml, []byte(`<domain type='qemu'><name>`+name+`</name>
<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>`), 0o644); err != nil {
		t.Fatal(err)
	}
	hosttools.Virsh(t, "create", xml)
	t.Cleanup(func() { hosttools.Virsh(t, "destroy", name) })
	t.Logf("domain %s runs under libvirtd", name)
	lv := libvirtvm.Config{Libvirt: hosttools.LibvirtURI, Domain: name}
	guest := func(context.Context) (GroupSteps, error) { return &fakeGuest{running: true}, nil }
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name string
		// cut returns the member's snapshot through its source.
		cut func(t *testing.T) *sender.Snapshot
	}{
		{"led here", func(t *testing.T) *sender.Snapshot {
			o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, Local: []string{"a", "b"}, RPO: time.Minute, StepTimeout: time.Second}
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			a := &Agent{groups: map[string]*groupRun{}, follows: map[string]*groupFollow{}}
			g := newGroupRun(o, time.Now, SleepCtx, log)
			a.groups["a"], a.groups["b"] = g, g
			src, grp, _ := a.liveSource(&VM{Name: "a", Libvirt: lv}, nil)
			if grp != g {
				t.Fatal("the member's source is not its group's")
			}
			g.members["a"], g.members["b"] = guest, guest
			other := make(chan *sender.Snapshot, 1)
			go func() {
				s, err := g.source("b").Snapshot(ctx)
				if err != nil {
					t.Error(err)
				}
				other <- s
			}()
			snap, err := src.Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if s := <-other; s != nil {
				s.Close()
			}
			return snap
		}},
		{"followed", func(t *testing.T) *sender.Snapshot {
			o := groupcut.Options{Name: "g", Members: []string{"a", "b"}, Local: []string{"b"}, Leader: "127.0.0.1:1",
				Peers: []string{"sha256:" + strings.Repeat("ab", 32)}, RPO: time.Minute, StepTimeout: time.Second}
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			a := &Agent{groups: map[string]*groupRun{}, follows: map[string]*groupFollow{}}
			f := newGroupFollow(o, time.Now, SleepCtx, log)
			a.follows["b"] = f
			src, _, follow := a.liveSource(&VM{Name: "b", Libvirt: lv}, nil)
			if follow != f {
				t.Fatal("the member's source is not its group's follower")
			}
			// The leader's cut, as the follower hands it over.
			go func() {
				for {
					f.mu.Lock()
					waiting := f.waiting["b"] != nil
					f.mu.Unlock()
					if waiting || ctx.Err() != nil {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				f.deliver("b", &sender.Snapshot{Group: &vmspec.GroupCut{Group: "g", Cut: 9, Members: o.Members}, Close: func() error { return nil }})
			}()
			snap, err := src.Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return snap
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := tc.cut(t)
			defer snap.Close()
			if snap.Group == nil {
				t.Fatal("the snapshot carries no group tag")
			}
			var defs []string
			for _, tg := range snap.Targets {
				if tg.Kind != vmspec.KindBlob || tg.Name != vmspec.BlobDomainXML {
					continue
				}
				b := make([]byte, tg.Size)
				if _, err := tg.Reader.ReadAt(b, 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				x, err := vmspec.DecodeBlob(b)
				if err != nil {
					t.Fatalf("definition: %v", err)
				}
				defs = append(defs, string(x))
			}
			if len(defs) != 1 || !strings.Contains(defs[0], "<name>"+name+"</name>") {
				t.Fatalf("group cut %d carries %d definitions: %q", snap.Group.Cut, len(defs), defs)
			}
			t.Logf("group cut %d carries the domain's definition (%d bytes)", snap.Group.Cut, len(defs[0]))
		})
	}
}
