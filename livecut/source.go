package livecut

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/diskmirror"
	"github.com/drsync/drsync/nbd"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/vfs"
)

var (
	// ErrDiskNotFound: a configured disk node does not exist in the VM.
	ErrDiskNotFound = errors.New("disk node not found")
	// ErrVMGone: the VM exited (or its QMP socket went away) during a cut.
	ErrVMGone = errors.New("VM went away")
	// ErrCutFailed: QEMU could not complete the cut; the guest runs on.
	ErrCutFailed = errors.New("cut failed")
	// ErrSwitchedBack: a final cut paused this VM for a switch-back; it is
	// not cut (nor resumed) again.
	ErrSwitchedBack = errors.New("VM switched back")
	// ErrGuestPaused: the guest is not running and drsync did not stop it;
	// it is neither cut nor resumed until it runs again.
	ErrGuestPaused = errors.New("guest paused")
	// ErrMigrating: someone else (the operator, libvirt) is migrating the
	// VM; it is not cut until that migration ends, and its parameters are
	// left alone.
	ErrMigrating = errors.New("VM being migrated by someone else")
)

func migratingError(status string) error {
	return fmt.Errorf("livecut: the VM is being migrated by someone else (migration %q); drsync cuts it again once that migration ends: %w", status, ErrMigrating)
}

// finalFile marks a VM paused by a final cut.
const finalFile = "final"

// Source cuts epochs of one running QEMU guest. It implements
// sender.Source. It is not safe for concurrent use; the sender calls it
// from one goroutine.
type Source struct {
	o   Options
	log *slog.Logger

	sess    Monitor
	nbdSock string
	gen     uint64
	saved   *cutIndex // the cut the state store holds (nil: none, or unknown)
	last    *cutIndex // the cut whose tables are known and whose bitmap records since
	open    *cut      // the snapshot not yet closed
	loaded  bool

	lastStats CutStats
	// stoppedPass: cuts stop the guest before migrating (Options.Pass),
	// decided when the session starts.
	stoppedPass bool
	passLogged  bool

	ram      *ramTrack // the tracked RAM path, once started
	trackOff bool      // tracking is unsupported here: never try again
	// backgroundOff: QEMU refused a background snapshot (background.go);
	// tracked cuts take the migration path from then on.
	backgroundOff bool
	// backgroundOn: background-snapshot may be on in QEMU (this source
	// turned it on and has not seen it turned off).
	backgroundOn bool
	// early decides whether a background cut starts its backup jobs
	// before the stop (early.go); earlyOff: QEMU refused the write
	// threshold that needs, never try again.
	early    earlyBackoff
	earlyOff bool
}

// cutIndex is a cut's generation and its disks' block tables.
type cutIndex struct {
	gen    uint64
	tables map[string]*blockhash.Table // by sender.TableKey
}

// New returns a Source; it connects on the first Snapshot.
func New(o Options) (*Source, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	l := o.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &Source{o: o, log: l, nbdSock: filepath.Join(o.WorkDir, nbdSocketFile)}, nil
}

// SupportedVersion refuses QEMU versions whose migration format and QMP
// sequences were not verified.
func SupportedVersion(v qmp.Version) error {
	if v.Major == 7 && v.Minor == 2 {
		return nil
	}
	return fmt.Errorf("drsync drives QEMU 7.2 (migration stream format and fleecing verified there); set allow_untested_qemu to try %s", v)
}

// session returns a live QMP session, connecting and cleaning up first if
// needed.
func (s *Source) session(ctx context.Context) (Monitor, error) {
	if s.sess != nil && s.sess.Err() == nil {
		return s.sess, nil
	}
	if s.sess != nil {
		s.sess.Close()
		s.sess = nil
	}
	if err := vfs.MkdirAllDurable(s.o.FS, s.o.WorkDir, 0o750); err != nil {
		return nil, fmt.Errorf("livecut: work directory: %w", err)
	}
	// The NBD socket in it serves the guest's disks to whoever can connect.
	if err := os.Chmod(s.o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("livecut: work directory: %w", err)
	}
	check := SupportedVersion
	if s.o.AllowUntestedQEMU {
		check = nil
	}
	sess, err := s.o.Dial(ctx, s.o.QMPSocket, qmp.Options{CheckVersion: check})
	if err != nil {
		if errors.Is(err, qmp.ErrNoSocket) {
			s.forgetGoneVM()
		}
		return nil, fmt.Errorf("livecut: %w", err)
	}
	if err := SupportedVersion(sess.Version()); err != nil {
		s.log.Warn("driving an untested QEMU version", "version", sess.Version().String())
	}
	if err := s.prepare(ctx, sess); err != nil {
		sess.Close()
		return nil, err
	}
	s.sess = sess
	return sess, nil
}

// nbdSocketFile, in the work directory, is where QEMU serves the cuts'
// point-in-time views.
const nbdSocketFile = "nbd.sock"

// forgetGoneVM drops what a cut left in the work directory for a QEMU
// that is gone (nothing listens at its QMP socket): the cut-in-flight mark
// of a cut it died in, and the NBD socket it served. No guest of that
// process can be left stopped, and a mark kept would have status report a
// paused guest, and make a new QEMU the operator stops look like one our
// cut stopped. The final-cut mark stays: it is the operator's to remove.
func (s *Source) forgetGoneVM() {
	if _, err := readCutMarker(s.o.FS, s.o.WorkDir); err == nil {
		s.log.Info("the VM is gone: forgetting the cut that was in flight in it")
		s.unmarkCut()
	}
	os.Remove(s.nbdSock)
}

// prepare readies a new session: leftovers of a predecessor are removed,
// the disks checked, migration and the NBD server set up.
func (s *Source) prepare(ctx context.Context, sess Monitor) error {
	if !s.loaded {
		s.last = s.loadState()
		s.loaded = true
	}
	obs, err := s.observe(ctx, sess)
	if err != nil {
		return err
	}
	if slices.Contains(migrationActive, obs.Migration) && !obs.CutInFlight {
		// Someone else's migration: its capabilities and parameters are
		// not this session's to set, and QEMU allows one migration.
		return migratingError(obs.Migration)
	}
	var disks []string
	for _, d := range s.o.Disks {
		if !slices.Contains(obs.Nodes, d.Node) {
			var others []string
			for _, n := range obs.Nodes {
				if !ours(n) {
					others = append(others, n)
				}
			}
			return fmt.Errorf("livecut: disk %q: node %q is not in the VM (its block nodes: %s): %w", d.Name, d.Node, strings.Join(others, ", "), ErrDiskNotFound)
		}
		disks = append(disks, d.Node)
	}
	keep := ""
	if s.last != nil {
		keep = bitmapName(s.last.gen)
	}
	steps, keepOK := planCleanup(obs, disks, keep)
	if b, err := os.ReadFile(filepath.Join(s.o.WorkDir, finalFile)); err == nil {
		// Paused by a final cut: it must not run here again.
		steps = slices.DeleteFunc(steps, func(st step) bool { return st.Cmd == "cont" })
		if !s.o.Final {
			return fmt.Errorf("livecut: %s: %w: a final cut paused it for good (%s); start it at the other site, or remove %s to protect it here again",
				s.o.QMPSocket, ErrSwitchedBack, strings.TrimSpace(string(b)), filepath.Join(s.o.WorkDir, finalFile))
		}
	}
	if len(steps) > 0 {
		s.log.Warn("removing what an earlier sender left in the VM", "steps", len(steps), "status", obs.Status, "migration", obs.Migration)
	}
	if err := s.run(ctx, sess, steps); err != nil {
		return fmt.Errorf("livecut: clean up leftovers: %w", err)
	}
	if obs.CutInFlight {
		// Whatever the mark's cut left is settled above: kept any longer,
		// it would make a guest the operator stops later look like one
		// of our cuts stopped.
		s.unmarkCut()
	}
	if s.last != nil && !keepOK {
		s.log.Warn("the change-tracking chain is broken (QEMU restarted, or a cut was never recorded); the next epoch compares every block", "bitmap", keep)
		s.last = nil
		s.removeState()
	}
	if err := sess.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "events", "state": true}}}, nil); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	if err := s.choosePass(ctx, sess); err != nil {
		return err
	}
	// A sender killed during a tracked cut leaves x-ignore-shared (and
	// background-snapshot) on.
	s.backgroundOn = hasBackground(sess.Version())
	if err := s.resetCaptureCaps(ctx, sess); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	// Restored: a sender killed during a group cut leaves its hold limit.
	if err := sess.Execute(ctx, "migrate-set-parameters", s.migrationParams(), nil); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	os.Remove(s.nbdSock)
	start := func() error {
		return sess.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": s.nbdSock}}}, nil)
	}
	if err := start(); err != nil {
		var ce *qmp.CommandError
		if !errors.As(err, &ce) || !strings.Contains(ce.Desc, "already running") {
			return fmt.Errorf("livecut: %w", err)
		}
		// Left running by a predecessor whose socket path we just removed.
		s.log.Warn("restarting the VM's NBD server, which an earlier sender left running")
		if err := sess.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
			return fmt.Errorf("livecut: %w", err)
		}
		if err := start(); err != nil {
			return fmt.Errorf("livecut: %w", err)
		}
	}
	return nil
}

type blockNode struct {
	NodeName string `json:"node-name"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
	DirtyBitmaps []struct {
		Name      string `json:"name"`
		Recording bool   `json:"recording"`
	} `json:"dirty-bitmaps"`
}

func (s *Source) nodes(ctx context.Context, sess Monitor) ([]blockNode, error) {
	var nodes []blockNode
	if err := sess.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

func (s *Source) observe(ctx context.Context, sess Monitor) (observed, error) {
	var o observed
	var st struct{ Status string }
	if err := sess.Execute(ctx, "query-status", nil, &st); err != nil {
		return o, fmt.Errorf("livecut: %w", err)
	}
	o.Status = st.Status
	var mig struct{ Status string }
	if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return o, fmt.Errorf("livecut: %w", err)
	}
	o.Migration = mig.Status
	var exports []struct{ ID string }
	if err := sess.Execute(ctx, "query-block-exports", nil, &exports); err != nil {
		return o, fmt.Errorf("livecut: %w", err)
	}
	for _, e := range exports {
		o.Exports = append(o.Exports, e.ID)
	}
	var jobs []struct{ Device string }
	if err := sess.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
		return o, fmt.Errorf("livecut: %w", err)
	}
	for _, j := range jobs {
		o.Jobs = append(o.Jobs, j.Device)
	}
	nodes, err := s.nodes(ctx, sess)
	if err != nil {
		return o, fmt.Errorf("livecut: %w", err)
	}
	for _, n := range nodes {
		o.Nodes = append(o.Nodes, n.NodeName)
		if !slices.ContainsFunc(s.o.Disks, func(d Disk) bool { return d.Node == n.NodeName }) {
			continue
		}
		for _, b := range n.DirtyBitmaps {
			o.Bitmaps = append(o.Bitmaps, observedBitmap{Node: n.NodeName, Name: b.Name, Recording: b.Recording})
		}
	}
	entries, err := os.ReadDir(s.o.WorkDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return o, fmt.Errorf("livecut: %w", err)
	}
	for _, e := range entries {
		o.Files = append(o.Files, e.Name())
		o.CutInFlight = o.CutInFlight || e.Name() == cutMarkerFile
	}
	if o.CutInFlight {
		if m, err := readCutMarker(s.o.FS, s.o.WorkDir); err == nil {
			o.CutStopped = m.Stopped
		}
	}
	return o, nil
}

// run executes cleanup or teardown steps, all of them even if some fail.
func (s *Source) run(ctx context.Context, sess Monitor, steps []step) error {
	var errs []error
	for _, st := range steps {
		if st.Cmd == "" {
			if err := os.Remove(filepath.Join(s.o.WorkDir, st.File)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		t0 := time.Now()
		if err := sess.Execute(ctx, st.Cmd, st.Args, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		if d := time.Since(t0); d > 20*time.Millisecond {
			s.log.Debug("slow QMP command", "cmd", st.Cmd, "took", d)
		}
		if st.WaitGone != "" {
			if err := s.waitGone(ctx, sess, st.Cmd, st.WaitGone); err != nil {
				errs = append(errs, err)
			}
		}
		if st.Cmd == "migrate_cancel" {
			if err := s.waitMigrationIdle(ctx, sess); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// waitGone polls until a job or export no longer exists: both end
// asynchronously, and the nodes under them cannot be deleted before.
func (s *Source) waitGone(ctx context.Context, sess Monitor, cmd, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var present bool
		if cmd == "block-export-del" {
			var ex []struct{ ID string }
			if err := sess.Execute(ctx, "query-block-exports", nil, &ex); err != nil {
				return err
			}
			present = slices.ContainsFunc(ex, func(e struct{ ID string }) bool { return e.ID == id })
		} else {
			var jobs []struct{ Device string }
			if err := sess.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
				return err
			}
			present = slices.ContainsFunc(jobs, func(j struct{ Device string }) bool { return j.Device == id })
		}
		if !present {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: still there after %v", cmd, id, 30*time.Second)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (s *Source) waitMigrationIdle(ctx context.Context, sess Monitor) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var mig struct{ Status string }
		if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
			return err
		}
		if !slices.Contains(migrationActive, mig.Status) && mig.Status != "cancelling" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %s after 30s", mig.Status)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Close tears down an open cut and ends the session. The change-tracking
// bitmap stays in QEMU, so a restarted sender continues the chain.
func (s *Source) Close() error {
	var err error
	if s.open != nil {
		err = s.open.close()
	}
	if s.ram != nil {
		err = errors.Join(err, s.ram.tr.Close())
		s.ram = nil
	}
	if s.sess != nil {
		if s.sess.Err() == nil {
			s.sess.Execute(context.Background(), "nbd-server-stop", nil, nil)
			if s.backgroundOn {
				// A cut cut short can leave it on; an operator's migration
				// would then be a snapshot, its source running on.
				err = errors.Join(err, s.resetCaptureCaps(context.Background(), s.sess))
			}
		}
		err = errors.Join(err, s.sess.Close())
		s.sess = nil
	}
	return err
}

// State: the last cut whose tables the planner reported, kept as a sender
// index (sender.Store) whose epoch is the cut's generation, so that a cut
// records the table entries it changed, not the disks' whole tables.
// oldStateFile is where earlier versions kept it whole; it is read if the
// store has none.

const (
	stateDir     = "livecut-state"
	oldStateFile = "livecut.state"
)

func (s *Source) stateStore() sender.Store {
	return sender.Store{FS: s.o.FS, Dir: path.Join(s.o.WorkDir, stateDir)}
}

func (s *Source) loadState() *cutIndex {
	x, _, err := s.stateStore().Load()
	if err == nil && x == nil {
		x, err = s.loadOldState()
	}
	if err != nil {
		s.log.Warn("change-tracking state unreadable; the next epoch compares every block", "err", err)
		return nil
	}
	if x == nil {
		return nil
	}
	s.saved = &cutIndex{gen: x.Epoch, tables: x.Tables}
	return s.saved
}

func (s *Source) loadOldState() (*sender.Index, error) {
	f, err := s.o.FS.Open(path.Join(s.o.WorkDir, oldStateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<30))
	if err != nil {
		return nil, err
	}
	return sender.UnmarshalIndex(b)
}

// saveState records c, as a delta against the cut the store holds.
func (s *Source) saveState(c *cutIndex) error {
	st := s.stateStore()
	x := &sender.Index{Epoch: c.gen, Tables: c.tables}
	var base *sender.Index
	if s.saved != nil {
		base = &sender.Index{Epoch: s.saved.gen, Tables: s.saved.tables}
	}
	s.saved = nil // until recorded: a failure leaves the store unknown
	if err := st.SavePending(x, base); err != nil {
		return err
	}
	if err := st.PromotePending(x); err != nil {
		return err
	}
	s.saved = c
	s.o.FS.Remove(path.Join(s.o.WorkDir, oldStateFile))
	return nil
}

func (s *Source) removeState() {
	s.saved = nil
	s.o.FS.RemoveAll(path.Join(s.o.WorkDir, stateDir))
	s.o.FS.Remove(path.Join(s.o.WorkDir, oldStateFile))
}

// nextGen names a new cut: increasing, and unlike any the QEMU process has
// seen from this work directory.
func (s *Source) nextGen() uint64 {
	g := uint64(s.o.Now().UnixNano())
	if s.last != nil && g <= s.last.gen {
		g = s.last.gen + 1
	}
	if g <= s.gen {
		g = s.gen + 1
	}
	s.gen = g
	return g
}

// createOverlay makes an empty qcow2 of the disk's size for the fleecing
// node; its backing is set when the node is added.
func (s *Source) createOverlay(ctx context.Context, file string, size int64) error {
	cmd := exec.CommandContext(ctx, s.o.QemuImg, "create", "-q", "-f", "qcow2", file, fmt.Sprint(size))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("create fleecing overlay %s: %w: %s", file, err, bytes.TrimSpace(out))
	}
	return nil
}

// openExport connects to a fleecing export, selecting the dirty bitmap's
// context when there is one.
func openExport(ctx context.Context, sock, export, bitmap string) (*diskmirror.NBDImage, error) {
	var ctxs []string
	if bitmap != "" {
		ctxs = append(ctxs, nbd.DirtyBitmapContext(bitmap))
	}
	return diskmirror.OpenNBD(ctx, sock, export, ctxs...)
}

var _ sender.Source = (*Source)(nil)

// migrationParams are the migration parameters a cut relies on: QEMU
// keeps them across senders, so they are set rather than assumed.
func (s *Source) migrationParams() map[string]any {
	return map[string]any{"downtime-limit": defaultDowntime, "max-bandwidth": s.o.MaxBandwidth}
}

// choosePass decides whether this session's cuts stop the guest before
// migrating (Options.Pass): for PassAuto, when QEMU runs the guest under
// TCG with a version whose live pass can miss writes.
func (s *Source) choosePass(ctx context.Context, sess Monitor) error {
	switch s.o.Pass {
	case PassLive:
		s.stoppedPass = false
		return nil
	case PassStopped:
		s.stoppedPass = true
		return nil
	}
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := sess.Execute(ctx, "query-kvm", nil, &kvm); err != nil {
		return fmt.Errorf("livecut: %w", err)
	}
	s.stoppedPass = NeedsStoppedPass(sess.Version(), kvm.Enabled)
	if s.stoppedPass && !s.passLogged {
		s.passLogged = true
		s.log.Warn("the guest runs under TCG on QEMU "+sess.Version().String()+", whose live migration can miss guest writes; each cut stops the guest for its whole RAM pass (longer pauses)",
			"fix", "QEMU 9.0 or KVM")
	}
	return nil
}
