package runbook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/takeover"
)

func sample() *Runbook {
	disk := []takeover.Disk{{Target: "vda", Node: "disk0"}}
	return &Runbook{
		Name: "site-b", Replicas: "/r", WorkDir: "/w",
		Hooks: []Hook{
			{Name: "fence", When: Before, Command: []string{"fence", "site-a"}},
			{Name: "dns", When: After, Command: []string{"dns-switch"}},
		},
		Groups: []Group{{Name: "databases", VMs: []string{"db-1"}}, {Name: "apps", VMs: []string{"app-1", "app-2"}}},
		VMs: []VM{
			{Name: "app-1", Disks: disk, Checks: []Check{{Kind: CheckRunning}}},
			{Name: "db-1", Disks: disk, Checks: []Check{{Kind: CheckRunning}, {Kind: CheckTCP, Address: "10.0.0.5:5432"}}},
			{Name: "app-2", Disks: disk},
		},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(rb *Runbook)
		want string // substring of the error; "" means valid
	}{
		{"valid", func(*Runbook) {}, ""},
		{"group names an unknown VM", func(rb *Runbook) { rb.Groups[1].VMs = append(rb.Groups[1].VMs, "cache-1") }, `group "apps" names vm "cache-1"`},
		{"VM in no group", func(rb *Runbook) { rb.Groups[1].VMs = rb.Groups[1].VMs[:1] }, `vm "app-2" is in no group`},
		{"VM in two groups", func(rb *Runbook) { rb.Groups[0].VMs = append(rb.Groups[0].VMs, "app-1") }, `vm "app-1" is in groups`},
		{"unknown check", func(rb *Runbook) { rb.VMs[0].Checks[0].Kind = "ping" }, `unknown kind "ping"`},
		{"serial check without file", func(rb *Runbook) { rb.VMs[0].Checks[0] = Check{Kind: CheckSerial, Match: "login:"} }, "needs file and match"},
		{"bad serial pattern", func(rb *Runbook) { rb.VMs[0].Checks[0] = Check{Kind: CheckSerial, File: "f", Match: "("} }, "match"},
		{"tcp check without address", func(rb *Runbook) { rb.VMs[0].Checks[0] = Check{Kind: CheckTCP} }, "needs an address"},
		{"unknown hook time", func(rb *Runbook) { rb.Hooks[0].When = "during" }, `when = "during"`},
		{"hook without command", func(rb *Runbook) { rb.Hooks[0].Command = nil }, "needs a name and a command"},
		{"VM not authorized here", func(rb *Runbook) { rb.Authorized = []string{"db-1", "app-1"} }, `vm "app-2": this site holds no replica`},
		{"bad VM name", func(rb *Runbook) { rb.VMs[0].Name = "../etc" }, "vm[0].name"},
		{"VM without disks", func(rb *Runbook) { rb.VMs[2].Disks = nil }, `vm "app-2": no disks`},
		{"replicas in Ceph", func(rb *Runbook) { rb.RBD = &rbdstore.Config{Pool: "dr", Client: "drsync"} }, ""},
		{"Ceph without a pool", func(rb *Runbook) { rb.RBD = &rbdstore.Config{Client: "drsync"} }, "storage.pool: missing"},
		{"Ceph user with prefix", func(rb *Runbook) { rb.RBD = &rbdstore.Config{Pool: "dr", Client: "client.drsync"} }, "storage.client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb := sample()
			tt.edit(rb)
			err := rb.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestStepsOrder(t *testing.T) {
	rb := sample()
	if err := rb.Validate(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range rb.Steps() {
		ids = append(ids, s.ID)
	}
	want := []string{"hook:fence", "start:db-1", "check:db-1:0:running", "check:db-1:1:tcp",
		"start:app-1", "start:app-2", "check:app-1:0:running", "hook:dns"}
	if !slices.Equal(ids, want) {
		t.Fatalf("steps\n got %v\nwant %v", ids, want)
	}
}

// fakeEnv records what a run does; fail makes a step fail once.
type fakeEnv struct {
	calls    []string
	bad      map[string]error // preflight problems per VM
	fail     map[string]bool  // step IDs that fail
	alive    map[int]bool
	nextPID  int
	prepared int
	written  map[string][]string // overlays holding writes, per VM
}

func (f *fakeEnv) Preflight(_ context.Context, rb *Runbook, vm *VM) (Ready, error) {
	f.prepared++
	if err := f.bad[vm.Name]; err != nil {
		return Ready{}, err
	}
	epoch := uint64(7)
	if rb.Epoch != 0 {
		epoch = rb.Epoch
	}
	return Ready{Epoch: epoch, Cut: time.Unix(1700000000, 0), Written: f.written[vm.Name]}, nil
}

func (f *fakeEnv) step(id string) error {
	f.calls = append(f.calls, id)
	if f.fail[id] {
		delete(f.fail, id)
		return errors.New("boom")
	}
	return nil
}

func (f *fakeEnv) Hook(_ context.Context, _ *Runbook, h *Hook) error { return f.step("hook:" + h.Name) }

func (f *fakeEnv) Start(_ context.Context, _ *Runbook, vm *VM) (Started, error) {
	if err := f.step("start:" + vm.Name); err != nil {
		return Started{}, err
	}
	f.nextPID++
	f.alive[f.nextPID] = true
	return Started{PID: f.nextPID, QMP: "/q/" + vm.Name, Epoch: 7, Took: 80 * time.Millisecond}, nil
}

func (f *fakeEnv) Alive(_ context.Context, s Started) bool { return f.alive[s.PID] }

func (f *fakeEnv) Stop(_ context.Context, _ *Runbook, vm *VM, s Started) error {
	f.calls = append(f.calls, "stop:"+vm.Name)
	f.alive[s.PID] = false
	return nil
}

func (f *fakeEnv) Check(_ context.Context, vm *VM, c *Check, s Started) error {
	if s.PID == 0 {
		return fmt.Errorf("check of %s without a started VM", vm.Name)
	}
	return f.step("check:" + vm.Name + ":" + c.Kind)
}

func runOnce(t *testing.T, rb *Runbook, logPath string, env *fakeEnv, dry bool) (string, error) {
	t.Helper()
	log, err := OpenLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	var out bytes.Buffer
	err = Run(context.Background(), rb, log, env, Options{DryRun: dry, Out: &out, Now: func() time.Time { return time.Unix(1700000060, 0) }})
	return out.String(), err
}

func TestRunPreflightRefusesBeforeAnythingStarts(t *testing.T) {
	rb := sample()
	rb.Validate()
	env := &fakeEnv{bad: map[string]error{"app-2": errors.New("no replica at /r/app-2"), "db-1": errors.New("replica /r/db-1 is being written")}, alive: map[int]bool{}}
	_, err := runOnce(t, rb, filepath.Join(t.TempDir(), "log"), env, false)
	if !errors.Is(err, ErrPreflight) || !strings.Contains(err.Error(), "app-2: no replica") || !strings.Contains(err.Error(), "db-1: replica /r/db-1 is being written") {
		t.Fatalf("err = %v", err)
	}
	if len(env.calls) != 0 || env.prepared != 3 {
		t.Fatalf("a refused runbook did %v (preflighted %d)", env.calls, env.prepared)
	}
}

func TestRunDryRunStartsNothing(t *testing.T) {
	rb := sample()
	rb.Validate()
	env := &fakeEnv{alive: map[int]bool{}}
	out, err := runOnce(t, rb, filepath.Join(t.TempDir(), "log"), env, true)
	if err != nil || len(env.calls) != 0 || !strings.Contains(out, "start:db-1") || !strings.Contains(out, "from epoch 7") || !strings.Contains(out, "nothing started") {
		t.Fatalf("dry run: %v calls %v\n%s", err, env.calls, out)
	}
}

// TestRunResumes: a run that fails halfway is continued by the next run:
// finished steps are not repeated, VMs still running are not started again,
// and a VM whose QEMU died is.
func TestRunResumes(t *testing.T) {
	rb := sample()
	rb.Validate()
	logPath := filepath.Join(t.TempDir(), "log")
	env := &fakeEnv{alive: map[int]bool{}, fail: map[string]bool{"start:app-2": true}}
	_, err := runOnce(t, rb, logPath, env, false)
	if err == nil || !strings.Contains(err.Error(), "stopped at step start:app-2") {
		t.Fatalf("first run: %v", err)
	}
	first := env.calls
	if !slices.Equal(first, []string{"hook:fence", "start:db-1", "check:db-1:running", "check:db-1:tcp", "start:app-1", "start:app-2"}) {
		t.Fatalf("first run did %v", first)
	}
	env.calls = nil
	out, err := runOnce(t, rb, logPath, env, false)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if want := []string{"start:app-2", "check:app-1:running", "hook:dns"}; !slices.Equal(env.calls, want) {
		t.Fatalf("second run did %v, want %v", env.calls, want)
	}
	if !strings.Contains(out, "start:db-1: still running from an earlier run") {
		t.Errorf("output:\n%s", out)
	}
	// db-1's QEMU died since: a third run starts it again, and only it.
	env.alive[1] = false
	env.calls = nil
	if _, err := runOnce(t, rb, logPath, env, false); err != nil {
		t.Fatal(err)
	}
	if want := []string{"start:db-1"}; !slices.Equal(env.calls, want) {
		t.Fatalf("third run did %v, want %v", env.calls, want)
	}
}

func TestLogToleratesTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Append(Record{Step: "hook:fence", Status: StatusDone})
	l.f.WriteString(`{"step":"start:db-1","sta`)
	l.Close()
	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Done("hook:fence"); !ok {
		t.Error("finished step lost")
	}
	if _, ok := l.Done("start:db-1"); ok {
		t.Error("torn record counted as done")
	}
	// A record appended after the torn line is read back.
	l.Append(Record{Step: "start:db-1", Status: StatusDone, PID: 9})
	l.Close()
	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if r, ok := l.Done("start:db-1"); !ok || r.PID != 9 {
		t.Errorf("record after a torn line: %+v %v", r, ok)
	}
}

// TestDrill: no hooks, every VM started is stopped again, pass or fail.
func TestDrill(t *testing.T) {
	rb := sample()
	rb.Drill = true
	rb.Validate()
	env := &fakeEnv{alive: map[int]bool{}, fail: map[string]bool{"check:app-1:running": true}}
	out, err := runOnce(t, rb, filepath.Join(t.TempDir(), "log"), env, false)
	if err == nil {
		t.Fatal("failed check passed")
	}
	for _, c := range env.calls {
		if strings.HasPrefix(c, "hook:") {
			t.Errorf("a drill ran %s", c)
		}
	}
	for _, vm := range []string{"db-1", "app-1", "app-2"} {
		if !slices.Contains(env.calls, "stop:"+vm) {
			t.Errorf("drill left %s running: %v\n%s", vm, env.calls, out)
		}
	}
}
