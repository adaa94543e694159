package runbook

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/replica/rbdstore"
	"github.com/drsync/drsync/takeover"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

// QEMUEnv is the real Env: replicas on the local file system, VMs started
// with takeover, hooks as commands.
type QEMUEnv struct {
	Out io.Writer // hook output and QEMU's messages
}

func (e QEMUEnv) out() io.Writer {
	if e.Out == nil {
		return io.Discard
	}
	return e.Out
}

// fence is the takeover mark's reason for this runbook: a replica marked
// with it was taken over by an interrupted run of the same runbook.
func fence(rb *Runbook) string { return "failover runbook " + rb.Name }

// Preflight checks the replica can be resumed: a committed epoch with
// device state and the VM's disks, not being written right now, not taken
// over by something else; and that QEMU is there.
func (e QEMUEnv) Preflight(ctx context.Context, rb *Runbook, vm *VM) (Ready, error) {
	store, name, done, err := replicaOf(rb, vm)
	if err != nil {
		return Ready{}, err
	}
	defer done()
	dir := store.Where(name)
	if vm.Libvirt.Enabled() && rb.RBD != nil {
		return Ready{}, fmt.Errorf("replica %s is in Ceph: a libvirt domain is not taken over from RBD (its disks would have to be the pool's clones); run it as a QEMU of its own", dir)
	}
	m, err := store.Manifest(name)
	if errors.Is(err, os.ErrNotExist) {
		return Ready{}, fmt.Errorf("no replica at %s (nothing was ever replicated for this VM here)", dir)
	}
	if err != nil {
		return Ready{}, err
	}
	if m.Epoch == 0 {
		return Ready{}, fmt.Errorf("replica %s holds no committed epoch yet", dir)
	}
	if m.DeviceState == nil {
		return Ready{}, fmt.Errorf("replica %s (epoch %d) has no device state: it was replicated from image files, not a running guest", dir, m.Epoch)
	}
	main := vm.MainRAM
	if main == "" {
		main = "pc.ram"
	}
	if m.RAM(main) == nil {
		return Ready{}, fmt.Errorf("replica %s has no RAM block %q", dir, main)
	}
	if vm.Libvirt.Enabled() && m.Find(vmspec.KindBlob, vmspec.BlobDomainXML) == nil {
		return Ready{}, fmt.Errorf("replica %s (epoch %d) holds no libvirt domain definition: its sender protects it as a QEMU of its own, not as a libvirt domain", dir, m.Epoch)
	}
	for _, d := range vm.Disks {
		if m.Disk(d.Target) == nil {
			return Ready{}, fmt.Errorf("replica %s has no disk %q", dir, d.Target)
		}
	}
	// A receiver applying an epoch is waited for (briefly); one whose
	// sender went silent lets go of the replica within a second.
	if err := store.WaitUnlocked(ctx, name, takeover.DefaultLockWait); err != nil {
		if errors.Is(err, replica.ErrLocked) {
			return Ready{}, fmt.Errorf("replica %s is still in use after %s (%w); retry once it is free", dir, takeover.DefaultLockWait, err)
		}
		return Ready{}, err
	}
	r := Ready{Epoch: m.Epoch, Cut: m.Cut}
	if epoch, before := rb.point(vm.Name); epoch != 0 || !before.IsZero() {
		e, err := takeover.ResolvePointIn(store, name, epoch, before)
		if err != nil {
			return Ready{}, err
		}
		pts, err := store.Points(name)
		if err != nil {
			return Ready{}, err
		}
		for _, p := range pts {
			if p.Manifest.Epoch == e {
				r.Epoch, r.Cut = e, p.Manifest.Cut
			}
		}
	}
	mark, err := store.TakenOver(name)
	if err != nil {
		return Ready{}, err
	}
	if mark != nil && !rb.Drill {
		if mark.Reason != fence(rb) {
			return Ready{}, fmt.Errorf("replica %s was already taken over at %s (%s)", dir, mark.At.UTC().Format(time.RFC3339), mark.Reason)
		}
		r.Resumed = true
	}
	bin := vm.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return Ready{}, fmt.Errorf("QEMU: %w", err)
	}
	if !rb.Drill {
		for _, ov := range takeover.InspectOverlays(workDir(rb, vm), vm.Disks) {
			switch ov.State {
			case takeover.OverlayWritten:
				r.Written = append(r.Written, ov.Path)
			case takeover.OverlayInUse:
				r.InUse = append(r.InUse, ov.Path)
			case takeover.OverlayUnreadable:
				r.Unreadable = append(r.Unreadable, fmt.Sprintf("%s (%v)", ov.Path, ov.Err))
			}
		}
	}
	return r, nil
}

// Hook runs h's command with its timeout; DRSYNC_RUNBOOK and DRSYNC_HOOK
// tell it where it runs.
func (e QEMUEnv) Hook(ctx context.Context, rb *Runbook, h *Hook) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
	cmd.Env = append(os.Environ(), "DRSYNC_RUNBOOK="+rb.Name, "DRSYNC_HOOK="+h.Name)
	pw := &prefixWriter{w: e.out(), prefix: "  [" + h.Name + "] "}
	cmd.Stdout, cmd.Stderr = pw, pw
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("hook %q: no answer within %v", h.Name, h.Timeout)
	}
	if err != nil {
		return fmt.Errorf("hook %q (%s): %w", h.Name, strings.Join(h.Command, " "), err)
	}
	return nil
}

// replicaOf is where vm's replica is kept, and its name there: the
// directory named after it under the runbook's replica root, holding
// whatever VM its manifest names; or, on Ceph, the VM's replica in the
// pool, reached through a connection that done closes.
func replicaOf(rb *Runbook, vm *VM) (store replica.Store, name string, done func(), err error) {
	if rb.RBD != nil {
		s, closeFn, err := replicaStore(rb)
		return s, vm.Name, closeFn, err
	}
	return replica.DirStore(vfs.Default, filepath.Join(rb.Replicas, vm.Name)), "", func() {}, nil
}

// replicaStore is the store holding all of rb's replicas, each by its
// VM's name, pruning as the receiver does; done closes it.
func replicaStore(rb *Runbook) (store replica.Store, done func(), err error) {
	if rb.RBD != nil {
		s, closeFn, err := rbdstore.Open(*rb.RBD, rb.KeepPoints, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("replicas in Ceph pool %s: %w", rb.RBD.Pool, err)
		}
		return s, closeFn, nil
	}
	return replica.FileStore{FS: vfs.Default, Root: rb.Replicas, Now: time.Now, KeepPoints: rb.KeepPoints}, func() {}, nil
}

// takeoverOptions are vm's takeover in rb; done closes the store they
// name once the takeover is over.
func takeoverOptions(rb *Runbook, vm *VM) (o takeover.Options, done func(), err error) {
	store, name, done, err := replicaOf(rb, vm)
	if err != nil {
		return o, nil, err
	}
	o = takeover.Options{
		Replica: store.Where(name), Store: store, VM: name, WorkDir: workDir(rb, vm),
		QEMU: vm.QEMU, Args: vm.Args, Disks: vm.Disks, MainRAM: vm.MainRAM, Fence: fence(rb),
	}
	o.Epoch, o.Before = rb.point(vm.Name)
	if rb.Drill {
		// Isolated: no NICs; and the replica is neither fenced nor used.
		o.Fence, o.Copy = "", true
	} else {
		o.Args = append(append([]string{}, vm.Args...), vm.NICs...)
	}
	return o, done, nil
}

// Start brings vm up from its replica's committed epoch, fencing the
// replica first. takeover.Prepare refuses overlays a VM wrote to.
func (e QEMUEnv) Start(ctx context.Context, rb *Runbook, vm *VM) (Started, error) {
	t0 := time.Now()
	if rb.Drill {
		// A drill's work directory is disposable (one a killed drill left
		// is removed here), and never a failover's: see workDir.
		if err := os.RemoveAll(workDir(rb, vm)); err != nil {
			return Started{}, err
		}
	}
	if vm.Libvirt.Enabled() {
		return e.startLibvirt(ctx, rb, vm, t0)
	}
	o, done, err := takeoverOptions(rb, vm)
	if err != nil {
		return Started{}, err
	}
	defer done()
	plan, err := takeover.Prepare(o)
	if err != nil {
		return Started{}, err
	}
	q, err := takeover.Start(ctx, plan, e.out())
	if err != nil {
		if plan.Discard != nil && errors.Is(err, takeover.ErrLoad) {
			// QEMU never ran the guest: its clones hold nothing of its
			// own, and a run again makes them afresh.
			if derr := plan.Discard(); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove its clones: %w", derr))
			}
		}
		return Started{}, err
	}
	// RAM loaded lazily is loaded by this process, while the guest runs:
	// it must not end before the last page is in.
	if err := q.WaitResident(ctx); err != nil {
		return Started{}, fmt.Errorf("the guest runs, but its RAM is not all in: %w", err)
	}
	return Started{PID: q.Cmd.Process.Pid, QMP: plan.QMP, Epoch: plan.Epoch, Cut: plan.Cut, Took: q.Running.Sub(t0)}, nil
}

// Boot starts vm cold from the overlays an earlier run left in its work
// directory: no memory state, and nothing there is replaced.
func (e QEMUEnv) Boot(ctx context.Context, rb *Runbook, vm *VM) (Started, error) {
	if rb.Drill {
		return Started{}, errors.New("a drill does not boot from a failover's overlays")
	}
	if vm.Libvirt.Enabled() {
		return Started{}, fmt.Errorf("libvirt domain %s wrote to its overlays at the DR site and is defined there: start it with libvirt (virsh start), or %s %s to start over from the replica", vm.Libvirt.domain(rb, vm), DiscardFlag, vm.Name)
	}
	t0 := time.Now()
	o, done, err := takeoverOptions(rb, vm)
	if err != nil {
		return Started{}, err
	}
	defer done()
	plan, err := takeover.PrepareBoot(o)
	if err != nil {
		return Started{}, err
	}
	q, err := takeover.Start(ctx, plan, e.out())
	if err != nil {
		return Started{}, err
	}
	return Started{PID: q.Cmd.Process.Pid, QMP: plan.QMP, Took: q.Running.Sub(t0), Boot: true}, nil
}

// Discard moves vm's work directory (overlays, rebuilt recovery point,
// sockets) aside to <work_dir>/_discarded/<vm>-<time>.
func (e QEMUEnv) Discard(ctx context.Context, rb *Runbook, vm *VM) (string, error) {
	if rb.Drill {
		return "", errors.New("a drill discards nothing")
	}
	dir := workDir(rb, vm)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	to := discardDir(rb, vm, time.Now())
	if err := takeover.MoveAside(dir, to); err != nil {
		return "", err
	}
	return to, nil
}

// Work directories. A VM name starts with a letter or digit
// (vmspec.ValidVMName), so "_drill" and "_discarded" are never a VM's work
// directory nor inside one: a drill's teardown cannot remove a failover's
// overlays, nor can a discarded set land where a VM runs.
const (
	drillDir   = "_drill"
	discardSub = "_discarded"
)

func workDir(rb *Runbook, vm *VM) string {
	if rb.Drill {
		return filepath.Join(rb.WorkDir, drillDir, vm.Name)
	}
	return filepath.Join(rb.WorkDir, vm.Name)
}

func discardDir(rb *Runbook, vm *VM, now time.Time) string {
	return filepath.Join(rb.WorkDir, discardSub, vm.Name+"-"+now.UTC().Format("20060102T150405Z"))
}

// Stop kills a drill's VM and removes its copy of the replica.
func (e QEMUEnv) Stop(ctx context.Context, rb *Runbook, vm *VM, s Started) error {
	if uri, name, ok := libvirtvm.ParseAddress(s.QMP); ok {
		// A drill's domain is transient: destroyed, it is gone.
		if err := libvirtvm.Destroy(ctx, uri, name); err != nil {
			return err
		}
	}
	if s.PID > 0 {
		if rb.RBD != nil {
			// QEMU quitting closes its RBD images; a killed one's watch
			// keeps them from removal until it expires (30 s).
			quit(ctx, s.QMP)
			for deadline := time.Now().Add(5 * time.Second); syscall.Kill(s.PID, 0) == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			}
		}
		syscall.Kill(s.PID, syscall.SIGKILL)
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(s.PID, 0) == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		}
	}
	if rb.RBD != nil {
		store, name, done, err := replicaOf(rb, vm)
		if err != nil {
			return err
		}
		defer done()
		if rm, ok := store.(replica.CloneRemover); ok {
			if err := rm.RemoveClones(name, takeover.CloneDrill); err != nil {
				return fmt.Errorf("remove the drill's clones: %w", err)
			}
		}
	}
	return os.RemoveAll(workDir(rb, vm))
}

// quit asks the QEMU at sock to quit, briefly.
func quit(ctx context.Context, sock string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if sess, err := qmp.Dial(ctx, sock, qmp.Options{}); err == nil {
		sess.Execute(ctx, "quit", nil, nil)
		sess.Close()
	}
}

// Alive reports whether s's QEMU still runs the guest.
func (e QEMUEnv) Alive(ctx context.Context, s Started) bool {
	if _, _, ok := libvirtvm.ParseAddress(s.QMP); !ok && (s.PID <= 0 || syscall.Kill(s.PID, 0) != nil) {
		return false
	}
	st, err := status(ctx, s.QMP)
	return err == nil && (st == "running" || st == "paused")
}

func status(ctx context.Context, sock string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sess, err := libvirtvm.DialMonitor(ctx, sock, qmp.Options{}) // a QMP socket or a libvirt domain
	if err != nil {
		return "", err
	}
	defer sess.Close()
	var st struct{ Status string }
	err = sess.Execute(ctx, "query-status", nil, &st)
	return st.Status, err
}

// Check waits until c passes or its timeout ends.
func (e QEMUEnv) Check(ctx context.Context, vm *VM, c *Check, s Started) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var last error
	for {
		switch c.Kind {
		case CheckRunning:
			var st string
			if st, last = status(ctx, s.QMP); last == nil && st != "running" {
				last = fmt.Errorf("QEMU reports %s", st)
			}
		case CheckSerial:
			last = serialMatch(c.File, c.Match)
		case CheckTCP:
			var conn net.Conn
			d := net.Dialer{Timeout: time.Second}
			if conn, last = d.DialContext(ctx, "tcp", c.Address); last == nil {
				conn.Close()
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("check %s not passed within %v: %w", describeCheck(c), c.Timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func serialMatch(file, pattern string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if re.Match(sc.Bytes()) {
			return nil
		}
	}
	return fmt.Errorf("no line of %s matches %q yet", file, pattern)
}

// prefixWriter prefixes each line, so hook output reads apart from the plan.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		if !p.mid {
			io.WriteString(p.w, p.prefix)
			p.mid = true
		}
		i := strings.IndexByte(string(b), '\n')
		if i < 0 {
			p.w.Write(b)
			break
		}
		p.w.Write(b[:i+1])
		b = b[i+1:]
		p.mid = false
	}
	return n, nil
}
