package runbook

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vmspec"
)

func (f *fakeEnv) Boot(_ context.Context, _ *Runbook, vm *VM) (Started, error) {
	if err := f.step("boot:" + vm.Name); err != nil {
		return Started{}, err
	}
	f.nextPID++
	f.alive[f.nextPID] = true
	return Started{PID: f.nextPID, QMP: "/q/" + vm.Name, Took: 300 * time.Millisecond, Boot: true}, nil
}

func (f *fakeEnv) Discard(_ context.Context, _ *Runbook, vm *VM) (string, error) {
	f.written[vm.Name] = nil
	return "/w/_discarded/" + vm.Name + "-20231114T221400Z", f.step("discard:" + vm.Name)
}

func TestDecide(t *testing.T) {
	ov := []string{"/w/db-1/disk-disk0.qcow2"}
	running := Prior{VM: "db-1", Logged: true, PID: 42, Epoch: 4, Alive: true}
	gone := Prior{VM: "db-1", Logged: true, PID: 42, Epoch: 4, Written: ov}
	tests := []struct {
		name    string
		prior   Prior
		point   uint64 // --epoch/--before
		discard bool
		want    Action
		refuse  []string // substrings of the refusal; nil: no refusal
	}{
		{"first run", Prior{}, 0, false, ActResume, nil},
		{"first run of an older point", Prior{}, 2, false, ActResume, nil},
		{"first run with the discard flag: nothing to discard", Prior{}, 0, true, ActResume, nil},
		{"still running", running, 0, false, ActKeep, nil},
		{"still running, the point it runs from", running, 4, false, ActKeep, nil},
		{"still running, another point asked for", running, 2, false, 0, []string{"still runs (pid 42) from epoch 4, not the epoch 2", DiscardFlag + " db-1"}},
		{"still running, discard asked for", running, 0, true, 0, []string{"still runs (pid 42)", "stop it first"}},
		{"gone, overlays hold writes: boot from them", gone, 0, false, ActBoot, nil},
		{"gone, overlays hold writes, same point again", gone, 4, false, ActBoot, nil},
		{"gone, overlays hold writes, older point asked for", gone, 2, false, 0, []string{ov[0], "grew from epoch 4, not the epoch 2", DiscardFlag + " db-1"}},
		{"gone, overlays hold writes, point of unknown origin", Prior{Written: ov}, 2, false, 0, []string{ov[0], "not known", DiscardFlag}},
		{"start never logged, overlays hold writes: boot", Prior{Written: ov}, 0, false, ActBoot, nil},
		{"gone, overlays hold writes, discard", gone, 0, true, ActDiscard, nil},
		{"gone, overlays hold writes, older point and discard", gone, 2, true, ActDiscard, nil},
		{"gone, overlays unwritten", Prior{Logged: true, PID: 42, Epoch: 4}, 0, false, ActResume, nil},
		{"gone, overlays unwritten, older point", Prior{Logged: true, PID: 42, Epoch: 4}, 2, false, ActResume, nil},
		{"gone, overlays unwritten, discard moves the rest aside", Prior{Logged: true, PID: 42, Epoch: 4}, 0, true, ActDiscard, nil},
		{"a QEMU holds the overlays", Prior{Logged: true, PID: 42, Epoch: 4, InUse: ov}, 0, false, 0, []string{"still holds " + ov[0], "stop it first"}},
		{"a QEMU holds the overlays, discard", Prior{Logged: true, PID: 42, InUse: ov}, 0, true, 0, []string{"still holds " + ov[0]}},
		{"unreadable overlays", Prior{Unreadable: []string{ov[0] + " (no backing file)"}}, 0, false, 0, []string{"cannot tell what " + ov[0] + " (no backing file)", DiscardFlag}},
		{"unreadable overlays, discard", Prior{Unreadable: ov}, 0, true, ActDiscard, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decide(tt.prior, tt.point, tt.discard)
			if tt.refuse == nil {
				if err != nil || got != tt.want {
					t.Fatalf("Decide = %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrDRWrites) {
				t.Fatalf("Decide = %v, %v; want a refusal", got, err)
			}
			for _, s := range tt.refuse {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("refusal %q lacks %q", err, s)
				}
			}
		})
	}
}

// TestRunKeepsDRWrites: a VM an earlier run started is gone and its
// overlays hold writes: the next run boots it from them (and only it),
// says so, and logs it; an older point is refused before any hook runs;
// --discard-dr-writes is refused while the VM runs and, once it is gone,
// moves its overlays aside and starts over from the replica.
func TestRunKeepsDRWrites(t *testing.T) {
	rb := sample()
	rb.Validate()
	logPath := filepath.Join(t.TempDir(), "log")
	env := &fakeEnv{alive: map[int]bool{}, written: map[string][]string{}}
	if _, err := runOnce(t, rb, logPath, env, false); err != nil {
		t.Fatal(err)
	}
	db1 := env.calls[1]
	if db1 != "start:db-1" {
		t.Fatalf("first run did %v", env.calls)
	}
	env.alive[1] = false // db-1's QEMU was quit after it wrote
	env.written["db-1"] = []string{"/w/db-1/disk-disk0.qcow2"}

	env.calls = nil
	out, err := runOnce(t, rb, logPath, env, true)
	if err != nil || len(env.calls) != 0 || !strings.Contains(out, "boots from its disk overlays (no memory state): /w/db-1/disk-disk0.qcow2") {
		t.Fatalf("dry run: %v %v\n%s", err, env.calls, out)
	}
	out, err = runOnce(t, rb, logPath, env, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"boot:db-1"}; !slices.Equal(env.calls, want) {
		t.Fatalf("re-run did %v, want %v", env.calls, want)
	}
	for _, s := range []string{"boots from its disk overlays", "no memory state", "memory of epoch 7 is older", DiscardFlag} {
		if !strings.Contains(out, s) {
			t.Errorf("re-run output lacks %q:\n%s", s, out)
		}
	}
	log, _ := OpenLog(logPath)
	rec, _ := log.Done("start:db-1")
	log.Close()
	if !rec.Boot || rec.Epoch != 7 || rec.PID != 4 {
		t.Errorf("logged %+v, want a boot of the overlays of epoch 7 as pid 4", rec)
	}

	// An older point would replace what db-1 wrote: refused, nothing runs.
	env.alive[4] = false
	rb.Epoch = 5
	env.calls = nil
	_, err = runOnce(t, rb, logPath, env, false)
	if !errors.Is(err, ErrPreflight) || !strings.Contains(err.Error(), "vm db-1") || !strings.Contains(err.Error(), "/w/db-1/disk-disk0.qcow2") || len(env.calls) != 0 {
		t.Fatalf("older point over DR writes: %v, did %v", err, env.calls)
	}

	// Starting over: refused while db-1 runs...
	rb.Epoch = 0
	env.alive[4] = true
	var buf bytes.Buffer
	l, _ := OpenLog(logPath)
	err = Run(context.Background(), rb, l, env, Options{DiscardDRWrites: []string{"db-1"}, Out: &buf})
	l.Close()
	if err == nil || !strings.Contains(err.Error(), "still runs (pid 4)") || len(env.calls) != 0 {
		t.Fatalf("discard while running: %v, did %v", err, env.calls)
	}
	// ...and once it is gone, its overlays are moved aside first.
	env.alive[4] = false
	l, _ = OpenLog(logPath)
	err = Run(context.Background(), rb, l, env, Options{DiscardDRWrites: []string{"db-1"}, Out: &buf})
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"discard:db-1", "start:db-1"}; !slices.Equal(env.calls, want) {
		t.Fatalf("discard did %v, want %v\n%s", env.calls, want, buf.String())
	}
	if !strings.Contains(buf.String(), "kept in /w/_discarded/db-1-") {
		t.Errorf("discard output:\n%s", buf.String())
	}
}

// TestRunBootsOverlaysOfAnUnloggedStart: a run killed while its VM ran
// logged no start, but the VM wrote: the next run boots the overlays.
func TestRunBootsOverlaysOfAnUnloggedStart(t *testing.T) {
	rb := sample()
	rb.Validate()
	logPath := filepath.Join(t.TempDir(), "log")
	env := &fakeEnv{alive: map[int]bool{}, written: map[string][]string{}, fail: map[string]bool{"start:app-2": true}}
	if _, err := runOnce(t, rb, logPath, env, false); err == nil {
		t.Fatal("first run passed")
	}
	env.written["app-2"] = []string{"/w/app-2/disk-disk0.qcow2"}
	env.calls = nil
	if _, err := runOnce(t, rb, logPath, env, false); err != nil {
		t.Fatal(err)
	}
	if want := []string{"boot:app-2", "check:app-1:running", "hook:dns"}; !slices.Equal(env.calls, want) {
		t.Fatalf("second run did %v, want %v", env.calls, want)
	}
}

// TestDrillIgnoresFailoverOverlays: a drill starts its own copies and
// never boots, discards or refuses over a failover's overlays.
func TestDrillIgnoresFailoverOverlays(t *testing.T) {
	rb := sample()
	rb.Drill = true
	rb.Validate()
	env := &fakeEnv{alive: map[int]bool{}, written: map[string][]string{"db-1": {"/w/db-1/disk-disk0.qcow2"}}}
	if _, err := runOnce(t, rb, filepath.Join(t.TempDir(), "log"), env, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range env.calls {
		if strings.HasPrefix(c, "boot:") || strings.HasPrefix(c, "discard:") {
			t.Errorf("a drill did %s", c)
		}
	}
}

// TestWorkDirsNeverOverlap: whatever the VMs are called, a drill's work
// directory and a discarded set are never a failover's work directory,
// nor inside one, nor hold one; so a drill's teardown (RemoveAll) cannot
// reach a failover's overlays.
func TestWorkDirsNeverOverlap(t *testing.T) {
	names := []string{"db-1", "drill", "drill.log", "run.log", "discarded", "copy", "point-2", "disk-disk0.qcow2", "state.mig", "qmp.sock", "_drill", "_discarded", ".drill"}
	var valid []string
	for _, n := range names {
		if vmspec.ValidVMName(n) == nil {
			valid = append(valid, n)
		}
	}
	if slices.Contains(valid, drillDir) || slices.Contains(valid, discardSub) {
		t.Fatalf("%s or %s is a valid VM name", drillDir, discardSub)
	}
	failover, drill := &Runbook{WorkDir: "/w"}, &Runbook{WorkDir: "/w", Drill: true}
	within := func(a, b string) bool { // a is b or inside it
		rel, err := filepath.Rel(b, a)
		return err == nil && filepath.IsLocal(rel) || a == b
	}
	for _, a := range valid {
		for _, b := range valid {
			fo := workDir(failover, &VM{Name: b})
			for _, other := range []string{workDir(drill, &VM{Name: a}), discardDir(failover, &VM{Name: a}, time.Unix(1700000000, 0))} {
				if within(other, fo) || within(fo, other) {
					t.Errorf("%s (for vm %s) overlaps vm %s's failover work directory %s", other, a, b, fo)
				}
			}
		}
	}
}
