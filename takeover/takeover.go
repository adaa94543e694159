package takeover

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
)

var (
	// ErrNoMemory: the replica has no RAM image or device state to resume
	// from (it was replicated from image files, not a running guest).
	ErrNoMemory = errors.New("replica holds no running state")
	// ErrLoad: QEMU refused the replica's state, usually because its
	// command line describes another machine than the protected one.
	ErrLoad = errors.New("QEMU could not load the replica's state")
)

// Disk maps a replica disk to the block node the VM's devices use.
type Disk struct {
	Target string // the replica's name for the disk, e.g. "vda"
	Node   string // the format node the VM's -device refers to, e.g. "disk0"
}

// Options describe one takeover.
type Options struct {
	Replica string // the VM's replica directory
	// Store, if set, holds the replica as VM (Replica then only names it
	// in messages); if nil, the replica is the directory Replica on the
	// local file system.
	Store replica.Store
	VM    string
	// WorkDir receives the disk overlays, the state stream and the QMP
	// socket; it should be a directory of its own per VM.
	WorkDir string
	QEMU    string // qemu-system-x86_64 if empty
	// Args are the VM's QEMU options at the DR site: machine, CPUs,
	// devices, NICs. They must describe the machine the guest was running
	// on (QEMU loads device state only into the same devices). Not given
	// here: -m and -mem-path (from the replica), -incoming, -qmp and the
	// replica disks' -blockdev (Disks).
	Args  []string
	Disks []Disk
	// MainRAM is the RAM block mapped from the replica's file; "pc.ram"
	// if empty. Any other name is a memory backend's id (a guest protected
	// with RAM in a shared backend): QEMU gets a file backend of that id.
	MainRAM string
	// Fence, if set, marks the replica taken over (with this reason)
	// before anything starts, so the receiver refuses further epochs that
	// would change the disks under the running VM. A failover fences; a
	// drill of a copy does not.
	Fence string
	// Copy runs the VM from a copy of the replica's images at its
	// committed epoch, made under the replica's lock (reflinked where the
	// file system can, else copied sparse), so replication goes on into
	// the replica while the copy runs: a DR drill.
	Copy bool
	// Epoch, if not 0, resumes that retained recovery point instead of the
	// replica's newest epoch; Before, if set, the newest point cut before
	// it (after corruption was replicated, say). The point is rebuilt in
	// the work directory; the replica itself stays as it is.
	Epoch  uint64
	Before time.Time
	// LockWait is how long Prepare waits for another holder of the
	// replica to let go of it: a receiver applying an epoch, which must
	// not be torn, or one that lets go shortly after its sender went
	// silent. DefaultLockWait if 0.
	LockWait time.Duration
	// Dial connects Start to the new VM's monitor; DialQMP if nil.
	Dial DialFunc
	// FullStream puts the main RAM block's pages in the state stream too,
	// for a hypervisor that gives QEMU memory of its own instead of
	// mapping the replica's file (libvirt's restore): the stream is then
	// as large as the guest's RAM.
	FullStream bool
	// CopyRAM reads the main RAM block of a replica in a store that
	// clones whole before QEMU starts, as where userfaultfd cannot be
	// used, instead of loading it while the guest runs: the takeover
	// takes longer, and the guest never depends on this process.
	CopyRAM bool
}

// DefaultLockWait is Options.LockWait when left zero: a receiver whose
// sender went silent lets go within a second; most applies finish within
// it too.
const DefaultLockWait = 5 * time.Second

// Validate reports what is wrong with o.
func (o *Options) Validate() error {
	if o.Replica == "" && o.Store != nil {
		o.Replica = o.Store.Where(o.VM)
	}
	switch {
	case o.Replica == "":
		return errors.New("takeover: no replica directory")
	case o.WorkDir == "":
		return errors.New("takeover: no work directory")
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	if o.MainRAM == "" {
		o.MainRAM = "pc.ram"
	}
	if o.LockWait == 0 {
		o.LockWait = DefaultLockWait
	}
	for _, a := range o.Args {
		switch a {
		case "-m", "-mem-path", "-incoming", "-qmp", "-daemonize":
			return fmt.Errorf("takeover: QEMU option %s is set by the takeover itself", a)
		}
	}
	if o.Copy && o.Fence != "" {
		return errors.New("takeover: a copy of the replica is not a failover: fence and copy exclude each other")
	}
	seen := map[string]bool{}
	for _, d := range o.Disks {
		if d.Target == "" || d.Node == "" {
			return fmt.Errorf("takeover: disk %+v needs a replica name and a node name", d)
		}
		if seen[d.Node] {
			return fmt.Errorf("takeover: node %q used twice", d.Node)
		}
		seen[d.Node] = true
	}
	return nil
}

// store is where the replica is, and its VM's name there ("" for a
// replica directory: the VM its manifest names).
func (o *Options) store() (replica.Store, string) {
	if o.Store != nil {
		return o.Store, o.VM
	}
	return replica.DirStore(vfs.Default, o.Replica), ""
}

// Plan is what a takeover will start, worked out and written to the work
// directory without starting anything.
type Plan struct {
	VM       string
	Epoch    uint64
	Cut      time.Time
	RAMFile  string   // mapped as guest memory; "" when loaded lazily
	RAMSize  int64    // bytes
	Stream   string   // the state QEMU loads
	Overlays []string // one per disk
	Command  []string // QEMU and its arguments
	QMP      string   // QMP socket of the started VM
	// Boot: a cold boot from existing overlays (PrepareBoot), with no
	// memory state; Epoch, Cut, RAMFile and Stream are then unset.
	Boot bool
	// Definition is the VM's definition replicated with the epoch (a
	// libvirt domain's sanitized XML), nil if the replica has none.
	Definition []byte
	// Dial connects to QMP once QEMU listens (Options.Dial); DialQMP if nil.
	Dial DialFunc
	// Discard, if set, removes the clones Prepare made in the replica's
	// store (Overlays then names them), for a plan whose QEMU never ran
	// the guest (Start failed with ErrLoad) or a drill's teardown.
	Discard func() error
	// RAMLoad says how the main RAM block gets into QEMU: RAMMapped,
	// RAMCopied, RAMLazy (Command then starts QEMU with -incoming defer
	// and its RAM in a memfd: Start registers the RAM for missing-page
	// faults and only then loads the stream) or RAMStream.
	RAMLoad string
	lazy    *lazySource
}

// The names of a takeover's clones in a store that clones (see
// replica.Cloner): a failover's, which are the VM's disks from then on,
// and a drill's, which the drill removes.
const (
	CloneFailover = "failover"
	CloneDrill    = "drill"
)

// Prepare checks the replica and writes what the VM needs: overlays and the
// state stream. It takes the replica's lock while it reads, waiting up to
// o.LockWait for a receiver applying an epoch to finish; a replica still
// held then is refused (replica.ErrLocked, saying what holds it) rather
// than read torn. Overlays in the work directory that a VM wrote to (or
// that a QEMU holds) are never replaced: ErrOverlaysWritten.
func Prepare(o Options) (*Plan, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := checkNoWrittenOverlays(o.WorkDir, o.Disks); err != nil {
		return nil, err
	}
	store, vm := o.store()
	// Opening the replica takes its lock (a receiver applying an epoch
	// holds it: waited for, never read torn; one merely waiting for a
	// silent sender lets go of it) and finishes an apply a crash
	// interrupted, so the images are exactly the committed epoch. An
	// epoch staged but not committed stays staged, never applied.
	r, err := store.Open(context.Background(), vm, replica.OpenOptions{AllowTakenOver: true, Holder: "a takeover", LockWait: o.LockWait})
	if err != nil {
		return nil, fmt.Errorf("takeover: replica %s: %w", o.Replica, err)
	}
	defer r.Close()
	m := r.Manifest()
	if m == nil || m.Epoch == 0 {
		return nil, fmt.Errorf("takeover: replica %s holds no committed epoch yet: %w", o.Replica, ErrNoMemory)
	}
	if o.Fence != "" {
		if err := r.MarkTakenOver(replica.TakeoverMark{Epoch: m.Epoch, At: time.Now().UTC(), Reason: o.Fence}); err != nil {
			return nil, fmt.Errorf("takeover: %w", err)
		}
	}
	if m.DeviceState == nil {
		return nil, fmt.Errorf("takeover: replica %s (epoch %d) has no device state: %w", o.Replica, m.Epoch, ErrNoMemory)
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	// The images are read in place, from a rebuilt recovery point, or
	// from a copy; or, in a store that clones, the VM runs on clones.
	var img replica.Image
	cl, cloned := r.(replica.Cloner)
	if pick, err := pickPoint(o.Replica, func() ([]replica.Point, error) { return store.Points(vm) }, o.Epoch, o.Before, m.Epoch); err != nil {
		return nil, err
	} else if rm, ok := store.(replica.CloneRemover); cloned && ok {
		return prepareClones(o, cl, rm, vm, pick)
	} else if pick != m.Epoch {
		if img, err = r.Export(pick, filepath.Join(o.WorkDir, fmt.Sprintf("point-%d", pick)), nil); err != nil {
			return nil, fmt.Errorf("takeover: recovery point %d: %w", pick, err)
		}
		if m = img.Manifest(); m.DeviceState == nil {
			return nil, fmt.Errorf("takeover: recovery point %d has no device state: %w", pick, ErrNoMemory)
		}
	} else if o.Copy {
		// What a VM needs: its RAM images, the disks it uses, its
		// definition (blobs) and the device state.
		keep := func(t replica.TargetEntry) bool {
			return t.TargetKind() == vmspec.KindRAM || t.TargetKind() == vmspec.KindBlob || t.TargetKind() == vmspec.KindDisk && slices.ContainsFunc(o.Disks, func(d Disk) bool { return d.Target == t.Name })
		}
		if img, err = r.Export(m.Epoch, filepath.Join(o.WorkDir, "copy"), keep); err != nil {
			return nil, fmt.Errorf("takeover: copy the replica: %w", err)
		}
	} else if img, err = r.Export(m.Epoch, "", nil); err != nil {
		return nil, fmt.Errorf("takeover: replica %s: %w", o.Replica, err)
	}
	load := RAMMapped
	if o.FullStream {
		load = RAMStream
	}
	return prepareFrom(o, img, m, false, load)
}

// prepareClones plans a VM on clones of epoch pick, made by the store
// (see replica.Cloner), and removes them again if the plan fails.
func prepareClones(o Options, cl replica.Cloner, rm replica.CloneRemover, vm string, pick uint64) (*Plan, error) {
	// The main RAM block is loaded lazily, while the guest runs, where
	// this process can serve QEMU's page faults; else it is read whole
	// before QEMU starts.
	load := RAMCopied
	if o.FullStream {
		load = RAMStream
	} else if o.CopyRAM {
		load = RAMCopied
	} else if err := lazyRAMAvailable(); err == nil {
		load = RAMLazy
	} else {
		slog.Info("takeover: guest RAM is read whole before the guest starts", "vm", vm, "lazy_unavailable", err)
	}
	co := replica.CloneOptions{Epoch: pick, Name: CloneFailover, Keep: func(t replica.TargetEntry) bool {
		// A lazily loaded RAM image is read at a snapshot the store
		// makes with the clones: the receiver may apply further epochs
		// into the image (a drill) while the guest runs.
		if load == RAMLazy && t.TargetKind() == vmspec.KindRAM && t.Name == o.MainRAM {
			return true
		}
		return t.TargetKind() == vmspec.KindDisk && slices.ContainsFunc(o.Disks, func(d Disk) bool { return d.Target == t.Name })
	}}
	if o.Copy {
		// A drill's clones are disposable; a failover's may hold what its
		// VM wrote.
		co.Name, co.Replace = CloneDrill, true
	}
	img, err := cl.Clone(co)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("takeover: replica %s: %w (%w)", o.Replica, err, ErrOverlaysWritten)
	} else if err != nil {
		return nil, fmt.Errorf("takeover: replica %s: clone epoch %d: %w", o.Replica, pick, err)
	}
	discard := func() error { return rm.RemoveClones(vm, co.Name) }
	p, err := prepareFrom(o, img, img.Manifest(), true, load)
	if err != nil {
		if rerr := discard(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("takeover: remove the clones made: %w", rerr))
		}
		return nil, err
	}
	p.Discard = discard
	return p, nil
}

// prepareFrom writes the state stream and the disks' overlays of img
// (the epoch m) and plans QEMU's command, its main RAM block loaded as
// load says; with cloned, img's disks are clones QEMU writes to by name,
// and the main RAM block (RAMCopied, RAMLazy) is read from the store:
// into a file of the work directory, which QEMU maps, or lazily (Start).
func prepareFrom(o Options, img replica.Image, m *replica.Manifest, cloned bool, load string) (*Plan, error) {
	if m.DeviceState == nil {
		return nil, fmt.Errorf("takeover: epoch %d of replica %s has no device state: %w", m.Epoch, o.Replica, ErrNoMemory)
	}
	var def []byte
	var err error
	if t := m.Find(vmspec.KindBlob, vmspec.BlobDomainXML); t != nil {
		if def, err = readBlob(img, t); err != nil {
			return nil, fmt.Errorf("takeover: replica %s: the domain definition: %w", o.Replica, err)
		}
	}
	main := m.RAM(o.MainRAM)
	if main == nil {
		return nil, fmt.Errorf("takeover: replica %s has no RAM block %q: %w", o.Replica, o.MainRAM, ErrNoMemory)
	}
	skb, err := img.DeviceState()
	if err != nil {
		return nil, fmt.Errorf("takeover: device state: %w", err)
	}
	sk, err := migstream.ParseSkeleton(skb)
	if err != nil {
		return nil, fmt.Errorf("takeover: device state of epoch %d: %w", m.Epoch, err)
	}
	p := &Plan{VM: m.VM, Epoch: m.Epoch, Cut: m.Cut, RAMFile: img.Location(main), RAMSize: main.Size,
		Stream: filepath.Join(o.WorkDir, "state.mig"), QMP: filepath.Join(o.WorkDir, "qmp.sock"), Dial: o.Dial, Definition: def, RAMLoad: load}

	// Every RAM block but the main one travels in the stream; blocks the
	// replica lacks keep what the new QEMU initialised (ROMs from its own
	// files).
	ram := make([]io.ReaderAt, len(sk.Blocks))
	var files []io.Closer
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	mainFound := false
	for i, blk := range sk.Blocks {
		if blk.ID == o.MainRAM {
			if blk.Length != main.Size {
				return nil, fmt.Errorf("takeover: RAM block %s is %d bytes in the device state, %d in the replica", blk.ID, blk.Length, main.Size)
			}
			mainFound = true
			if !o.FullStream {
				continue
			}
		}
		t := m.RAM(blk.ID)
		if t == nil || t.Size != blk.Length {
			continue
		}
		f, err := img.OpenTarget(t)
		if err != nil {
			return nil, fmt.Errorf("takeover: RAM block %s: %w", blk.ID, err)
		}
		files = append(files, f)
		ram[i] = f
	}
	if !mainFound {
		return nil, fmt.Errorf("takeover: the device state lists no RAM block %q: %w", o.MainRAM, ErrNoMemory)
	}
	if err := writeStream(p.Stream, sk, ram); err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	openMain := func() (replica.ReaderAtCloser, error) { return img.OpenTarget(main) }
	switch load {
	case RAMCopied:
		p.RAMFile = filepath.Join(o.WorkDir, "ram.img")
		if err := copyRAM(p.RAMFile, openMain, main.Size); err != nil {
			return nil, fmt.Errorf("takeover: RAM block %s: %w", main.Name, err)
		}
	case RAMLazy:
		p.RAMFile = ""
		p.lazy = &lazySource{open: openMain, size: main.Size}
		if h, ok := img.(hotRAM); ok {
			hot, err := h.HotRAM(main, lazyRun)
			if err != nil {
				// Only the order of the fill depends on it.
				slog.Warn("takeover: no hot set: RAM is filled in order", "vm", m.VM, "err", err)
			}
			p.lazy.hot = hot
		}
	}

	args := append([]string{}, o.Args...)
	if load == RAMLazy {
		args = append(args, memfdRAMArgs(o.MainRAM, main.Size)...)
	} else {
		args = append(args, ramArgs(o.MainRAM, main.Size, p.RAMFile)...)
	}
	for _, d := range o.Disks {
		t := m.Disk(d.Target)
		if t == nil {
			return nil, fmt.Errorf("takeover: the replica of %s has no disk %q", m.VM, d.Target)
		}
		if cloned {
			// The clone is the VM's disk: QEMU's own driver writes it.
			name := img.Location(t)
			p.Overlays = append(p.Overlays, name)
			args = append(args, "-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=%s,cache=writeback", strings.ReplaceAll(name, ",", ",,"), d.Node))
			continue
		}
		ov := OverlayPath(o.WorkDir, d)
		os.Remove(ov) // unwritten: checked above
		backing, _ := filepath.Abs(img.Location(t))
		cmd := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", ov, fmt.Sprint(t.Size))
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("takeover: overlay for disk %q: %w: %s", d.Target, err, bytes.TrimSpace(out))
		}
		p.Overlays = append(p.Overlays, ov)
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", d.Node, ov),
			"-blockdev", fmt.Sprintf("driver=qcow2,node-name=%s,file=%s-file", d.Node, d.Node))
	}
	incoming := "exec:cat " + shellQuote(p.Stream)
	if load == RAMLazy {
		incoming = "defer" // Start registers the RAM first
	}
	args = append(args, "-qmp", "unix:"+p.QMP+",server=on,wait=off", "-incoming", incoming)
	p.Command = append([]string{o.QEMU}, args...)
	return p, nil
}

// ResolvePoint says which epoch of the replica in dir a takeover with
// Options.Epoch and Options.Before resumes, without changing anything.
func ResolvePoint(dir string, epoch uint64, before time.Time) (uint64, error) {
	return ResolvePointIn(replica.DirStore(vfs.Default, dir), "", epoch, before)
}

// ResolvePointIn is ResolvePoint for the replica of vm in store.
func ResolvePointIn(store replica.Store, vm string, epoch uint64, before time.Time) (uint64, error) {
	m, err := store.Manifest(vm)
	if err != nil {
		return 0, err
	}
	return pickPoint(store.Where(vm), func() ([]replica.Point, error) { return store.Points(vm) }, epoch, before, m.Epoch)
}

// pickPoint chooses the epoch to resume: the newest, or the point asked
// for among those points lists; dir names the replica in messages.
func pickPoint(dir string, points func() ([]replica.Point, error), epoch uint64, before time.Time, newest uint64) (uint64, error) {
	if epoch == 0 && before.IsZero() {
		return newest, nil
	}
	o := struct {
		Replica string
		Epoch   uint64
		Before  time.Time
	}{dir, epoch, before}
	pts, err := points()
	if err != nil {
		return 0, fmt.Errorf("takeover: recovery points: %w", err)
	}
	var have []string
	pick := uint64(0)
	for _, p := range pts {
		pm := p.Manifest
		have = append(have, fmt.Sprintf("%d (cut %s)", pm.Epoch, pm.Cut.UTC().Format(time.RFC3339)))
		switch {
		case o.Epoch != 0 && pm.Epoch == o.Epoch:
			pick = pm.Epoch
		case o.Epoch == 0 && pm.Cut.Before(o.Before):
			pick = pm.Epoch // points are oldest first: the last one wins
		}
	}
	if pick == 0 {
		want := fmt.Sprintf("epoch %d", o.Epoch)
		if o.Epoch == 0 {
			want = "a point cut before " + o.Before.UTC().Format(time.RFC3339)
		}
		return 0, fmt.Errorf("takeover: replica %s keeps no %s; it has %s", o.Replica, want, strings.Join(have, ", "))
	}
	return pick, nil
}

// readBlob reads the content of blob target t of img.
func readBlob(img replica.Image, t *replica.TargetEntry) ([]byte, error) {
	f, err := img.OpenTarget(t)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, t.Size)
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	c, err := vmspec.DecodeBlob(b)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(c), nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func writeStream(path string, sk *migstream.Skeleton, ram []io.ReaderAt) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = migstream.WriteStream(w, sk, ram)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the state stream: %w", err)
	}
	return nil
}

// VM is a QEMU started by Start.
type VM struct {
	Plan    *Plan
	Cmd     *exec.Cmd
	Started time.Time // QEMU spawned
	Running time.Time // QEMU reported the guest running
	// RAMLoad is how the main RAM block came in (Plan.RAMLoad); with
	// RAMLazy, pages come in while the guest runs: WaitResident waits
	// for the last.
	RAMLoad string
	lazy    *lazyLoader
	// Status is QEMU's run state once loaded: "running". WasPaused says
	// the guest was paused at the cut and the takeover resumed it.
	Status    string
	WasPaused bool
	exited    chan struct{}
	err       error
}

// Exited is closed when QEMU ends.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Start spawns QEMU for p and waits until the guest runs (or QEMU gives up).
// The returned VM's process outlives ctx; stop it with Stop.
func Start(ctx context.Context, p *Plan, stderr io.Writer) (*VM, error) {
	var errBuf bytes.Buffer
	cmd := exec.Command(p.Command[0], p.Command[1:]...)
	if stderr == nil {
		stderr = io.Discard
	}
	cmd.Stdout = io.MultiWriter(stderr, &limited{b: &errBuf, n: 64 << 10})
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	os.Remove(p.QMP)
	vm := &VM{Plan: p, Cmd: cmd, exited: make(chan struct{})}
	vm.Started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("takeover: start QEMU: %w", err)
	}
	go func() {
		vm.err = cmd.Wait()
		close(vm.exited)
	}()
	fail := func(err error) (*VM, error) {
		vm.Stop()
		return nil, err
	}
	// QEMU that refuses its configuration (a block driver it lacks, an
	// image it cannot open) exits just after it opened its QMP socket: a
	// monitor that fails then is QEMU exiting, and its own words say why.
	exitedWithin := func(d time.Duration) error {
		select {
		case <-vm.exited:
			return fmt.Errorf("takeover: QEMU exited (%v): %s: %w", vm.err, strings.TrimSpace(errBuf.String()), ErrLoad)
		case <-time.After(d):
			return nil
		}
	}
	// Poll tightly: the whole takeover takes tens of milliseconds.
	dial := p.Dial
	if dial == nil {
		dial = DialQMP
	}
	var sess Monitor
	for sess == nil {
		select {
		case <-vm.exited:
			return nil, fmt.Errorf("takeover: QEMU exited (%v): %s: %w", vm.err, strings.TrimSpace(errBuf.String()), ErrLoad)
		case <-ctx.Done():
			return fail(fmt.Errorf("takeover: %w", ctx.Err()))
		default:
		}
		if c, err := net.Dial("unix", p.QMP); err == nil {
			c.Close()
			s, err := dial(ctx, p.QMP)
			if err != nil {
				if xerr := exitedWithin(time.Second); xerr != nil {
					return nil, xerr
				}
				return fail(fmt.Errorf("takeover: %w", err))
			}
			sess = s
			break
		}
		time.Sleep(time.Millisecond)
	}
	defer sess.Close()
	vm.RAMLoad = p.RAMLoad
	if p.lazy != nil {
		// The RAM is registered for missing-page faults before anything
		// loads: QEMU waits (-incoming defer) until told where the stream is.
		l, err := startLazy(cmd.Process.Pid, *p.lazy, slog.Default().With("vm", p.VM))
		if err != nil {
			return fail(fmt.Errorf("takeover: load RAM lazily: %w", err))
		}
		vm.lazy = l
		go func() {
			<-vm.exited
			l.stop()
		}()
		if err := sess.Execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(p.Stream)}, nil); err != nil {
			return fail(fmt.Errorf("takeover: load the state stream: %w", err))
		}
	}
	for {
		var st struct{ Status string }
		if err := sess.Execute(ctx, "query-status", nil, &st); err != nil {
			if xerr := exitedWithin(time.Second); xerr != nil {
				return nil, xerr
			}
			return fail(fmt.Errorf("takeover: %w", err))
		}
		switch st.Status {
		case "running":
			vm.Running, vm.Status = time.Now(), st.Status
			vm.logRunning()
			return vm, nil
		case "paused":
			// The guest was paused at the cut (a switch-back's final cut
			// retried on a paused VM, or an operator's pause): a takeover
			// is there to run it.
			if err := sess.Execute(ctx, "cont", nil, nil); err != nil {
				return fail(fmt.Errorf("takeover: resume the guest, paused at the cut: %w", err))
			}
			vm.Running, vm.Status, vm.WasPaused = time.Now(), "running", true
			vm.logRunning()
			return vm, nil
		case "inmigrate", "prelaunch":
		default:
			var mig struct {
				ErrorDesc string `json:"error-desc"`
			}
			sess.Execute(ctx, "query-migrate", nil, &mig)
			return fail(fmt.Errorf("takeover: QEMU is %s after loading: %s %s: %w", st.Status, mig.ErrorDesc, strings.TrimSpace(errBuf.String()), ErrLoad))
		}
		select {
		case <-vm.exited:
			return nil, fmt.Errorf("takeover: QEMU exited (%v): %s: %w", vm.err, strings.TrimSpace(errBuf.String()), ErrLoad)
		case <-ctx.Done():
			return fail(fmt.Errorf("takeover: %w", ctx.Err()))
		case <-time.After(time.Millisecond):
		}
	}
}

// logRunning says the guest runs and how its RAM came in.
func (vm *VM) logRunning() {
	slog.Info("takeover: guest running", "vm", vm.Plan.VM, "epoch", vm.Plan.Epoch, "ram", vm.RAMLoad,
		"after", vm.Running.Sub(vm.Started).Round(time.Millisecond))
}

// WaitResident waits until the guest's RAM is all in QEMU: at once unless
// it is loaded lazily (RAMLazy). The loader lives in this process: a
// process that ends before makes the guest wait for ever on the pages
// not yet in (never read them as zeros), so whoever started the VM waits
// here before it exits.
func (vm *VM) WaitResident(ctx context.Context) error {
	if vm.lazy == nil {
		return nil
	}
	return vm.lazy.wait(ctx)
}

// Resident is how long after the guest was running its RAM was all in
// (0 if not yet, or not loaded lazily).
func (vm *VM) Resident() time.Duration {
	if vm.lazy == nil {
		return 0
	}
	select {
	case <-vm.lazy.resident:
		return vm.lazy.start.Add(vm.lazy.took).Sub(vm.Running)
	default:
		return 0
	}
}

// Stop kills QEMU and waits for it.
func (vm *VM) Stop() {
	vm.Cmd.Process.Kill()
	<-vm.exited
}

type limited struct {
	b *bytes.Buffer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// memfdRAMArgs give the guest RAM in a shared memfd of QEMU's own,
// which a lazy load fills (the block keeps its name: a backend's id).
func memfdRAMArgs(block string, size int64) []string {
	return []string{"-m", fmt.Sprintf("%dM", size>>20),
		"-object", fmt.Sprintf("memory-backend-memfd,id=%s,size=%d,share=on", block, size),
		"-machine", "memory-backend=" + block}
}

// ramArgs map the replica's RAM file privately as the guest's memory. A
// guest whose RAM was a memory backend (its block named by the backend's
// id, as RAM tracking needs) gets a file backend of that id.
func ramArgs(block string, size int64, file string) []string {
	args := []string{"-m", fmt.Sprintf("%dM", size>>20)}
	if block == "pc.ram" {
		args = append(args, "-mem-path", file)
	} else {
		args = append(args,
			"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%d,mem-path=%s,share=off", block, size, strings.ReplaceAll(file, ",", ",,")),
			"-machine", "memory-backend="+block)
	}
	return args
}
