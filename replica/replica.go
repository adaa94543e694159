package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/journal"
	"github.com/drsync/drsync/replica/recovery"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrStorage marks a failure of the replica's storage (disk full, IO error).
// The replica stays at its last committed epoch; the epoch being staged may
// be resumed once the cause is fixed.
var ErrStorage = errors.New("replica storage failed")

// ErrBroken is returned by every method after a storage failure left the
// in-memory state behind the files; reopen the replica to recover.
var ErrBroken = errors.New("replica must be reopened after a failure")

const (
	manifestName = "MANIFEST"
	journalName  = "journal"
)

// Options configure a replica.
type Options struct {
	FS  vfs.FS
	Dir string // the VM's replica directory
	VM  string
	// Now stamps the manifest's applied time; the replica reads no clock.
	Now    func() time.Time
	Logger *slog.Logger
	// MaxTargetSize bounds the size of any disk or RAM block a sender may
	// announce, since the replica keeps a table entry per block in memory.
	// DefaultMaxTargetSize if 0.
	MaxTargetSize uint64
	// AllowTakenOver opens a replica that a takeover marked (see
	// MarkTakenOver); without it Open refuses with ErrTakenOver.
	AllowTakenOver bool
	// KeepPoints retains this many earlier epochs as recovery points (see
	// points.go); 0 keeps none; KeepInherited keeps by the rule the
	// committed manifest records.
	KeepPoints int
	// GroupKeepFrom, if set, says from which epoch on the replica must
	// keep its recovery points so that its consistency groups' newest
	// complete group points stay restorable, when it keeps keep points of
	// its own (0: no such epoch). An error means it cannot tell, and
	// nothing is pruned.
	GroupKeepFrom func(keep int) (uint64, error)
	// Holder names the opener in the note a refused locker reads ("the
	// receiver", "a failover"); "drsync" if empty.
	Holder string
	// LockWait is how long Open waits for another holder of the replica
	// to let go before it refuses with ErrLocked.
	LockWait time.Duration

	ctx context.Context // ends a wait for the lock (Store.Open)
}

// DefaultMaxTargetSize is the largest target a replica accepts by default.
const DefaultMaxTargetSize = 16 << 40

// Validate reports what is wrong with o.
func (o *Options) Validate() error {
	if o.FS == nil {
		return errors.New("replica: no file system")
	}
	if o.Dir == "" {
		return errors.New("replica: no directory")
	}
	if err := vmspec.ValidVMName(o.VM); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if o.Now == nil {
		return errors.New("replica: no clock")
	}
	return nil
}

// Replica is one VM's replica directory. It is not safe for concurrent use.
type Replica struct {
	o      Options
	log    *slog.Logger
	man    *Manifest
	tables map[string]*blockhash.Table // by kind/name
	st     *stage
	phases phases     // of the commit under way, for its log line
	early  *earlyRefs // the references staged into eager images, nil without them
	jw     *journal.Writer
	synced int // items of st durable in the journal
	broken error
	unlock *held
	// released is set between Release and Reacquire: the lock is not held
	// and the journal is closed, durable up to jlen.
	released bool
	jlen     int64
	// eager holds the images of the staged epoch's new targets, written
	// as items arrive (eager.go); nil when apply writes them.
	eager map[uint16]*eagerImage
}

// Open locks and opens the replica in o.Dir, creating it if needed, and
// recovers from whatever a crash left: a committed epoch is applied, a staged
// one is kept for resuming, a stale journal is removed.
func Open(o Options) (*Replica, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.MaxTargetSize == 0 {
		o.MaxTargetSize = DefaultMaxTargetSize
	}
	r := &Replica{o: o, log: o.Logger, tables: map[string]*blockhash.Table{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("vm", o.VM)
	if err := vfs.MkdirAllDurable(o.FS, o.Dir, dirPerm); err != nil {
		return nil, fmt.Errorf("create replica directory: %w (%w)", err, ErrStorage)
	}
	ctx := o.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	unlock, err := lock(ctx, o.FS, path.Join(o.Dir, "LOCK"), r.who("opening it"), o.LockWait)
	if err != nil {
		return nil, err
	}
	r.unlock = unlock
	if !o.AllowTakenOver {
		mark, err := TakenOver(o.FS, o.Dir)
		if err == nil && mark != nil {
			err = takenOverError(o.VM, mark)
		}
		if err != nil {
			unlock.Close()
			return nil, err
		}
	}
	if err := r.load(); err != nil {
		unlock.Close()
		return nil, err
	}
	r.noteActivity()
	return r, nil
}

// who is the lock note saying the opener is doing activity.
func (r *Replica) who(activity string) string {
	h := r.o.Holder
	if h == "" {
		h = "drsync"
	}
	return fmt.Sprintf("%s (pid %d) is %s", h, os.Getpid(), activity)
}

// noteActivity tells would-be lockers what the replica is used for now.
func (r *Replica) noteActivity() {
	switch {
	case r.st != nil && r.st.commit != nil:
		r.unlock.note(r.who(fmt.Sprintf("applying epoch %d", r.st.begin.Epoch)))
	case r.st != nil && r.jw != nil:
		r.unlock.note(r.who(fmt.Sprintf("receiving epoch %d from its sender", r.st.begin.Epoch)))
	default:
		r.unlock.note(r.who(fmt.Sprintf("using it (committed epoch %d)", r.man.Epoch)))
	}
}

func takenOverError(vm string, mark *TakeoverMark) error {
	return fmt.Errorf("the replica of %s was taken over at %s from epoch %d (%s); it no longer follows the protected site: %w",
		vm, mark.At.UTC().Format(time.RFC3339), mark.Epoch, mark.Reason, ErrTakenOver)
}

// Release lets go of the replica while its user waits for something else
// (a receiver for its sender's next frame), keeping what it knows of the
// staged epoch: every appended item is made durable, the journal closed
// and the lock released, so that another process, a failover above all,
// can take the replica meanwhile. Until Reacquire, Begin, Append and
// Commit fail, and Sync only reports the durable count.
func (r *Replica) Release() error {
	if r.released {
		return nil
	}
	if r.broken != nil {
		return ErrBroken
	}
	if r.st != nil && r.st.commit != nil {
		// Unreachable: Commit applies before it returns.
		return fmt.Errorf("epoch %d is committed but not applied: %w", r.st.begin.Epoch, ErrBroken)
	}
	// Whoever holds the replica meanwhile may change what is staged:
	// apply will write the new images from the journal.
	r.dropEager(nil)
	if r.jw != nil {
		if _, err := r.Sync(); err != nil {
			return err
		}
		r.jlen = r.jw.Offset()
		r.jw.Close()
		r.jw = nil
	}
	r.unlock.Close()
	r.unlock, r.released = nil, true
	return nil
}

// Released reports whether the replica was released and not yet taken back.
func (r *Replica) Released() bool { return r.released }

// Reacquire takes the replica back after Release, waiting up to wait for
// whoever holds it meanwhile (ErrLocked if they keep it, or ctx ends). A replica taken
// over meanwhile is refused with ErrTakenOver; one whose manifest or
// journal changed cannot go on from what this Replica knows (ErrBroken:
// reopen it). After an error the replica stays released and broken.
func (r *Replica) Reacquire(ctx context.Context, wait time.Duration) error {
	if !r.released {
		return nil
	}
	if r.broken != nil {
		return ErrBroken
	}
	h, err := lock(ctx, r.o.FS, r.p("LOCK"), r.who("taking it back"), wait)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		h.Close()
		r.broken = err
		return err
	}
	if !r.o.AllowTakenOver {
		mark, err := TakenOver(r.o.FS, r.o.Dir)
		if err != nil {
			return fail(err)
		}
		if mark != nil {
			return fail(takenOverError(r.o.VM, mark))
		}
	}
	changed := func(what string) error {
		return fail(fmt.Errorf("the replica of %s changed while it was released (%s): %w", r.o.VM, what, ErrBroken))
	}
	b, err := readFile(r.o.FS, r.p(manifestName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if r.man.Epoch != 0 {
			return changed("manifest gone")
		}
	case err != nil:
		return fail(fmt.Errorf("read manifest: %w (%w)", err, ErrStorage))
	default:
		m, err := ParseManifest(b)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", r.p(manifestName), err))
		}
		if m.Epoch != r.man.Epoch || m.StateID != r.man.StateID {
			return changed(fmt.Sprintf("now at epoch %d, was %d", m.Epoch, r.man.Epoch))
		}
	}
	if r.st == nil {
		// Released between epochs: a journal now is another writer's
		// staged or committed epoch, which Begin would overwrite.
		if _, err := r.o.FS.Stat(r.p(journalName)); !errors.Is(err, fs.ErrNotExist) {
			return changed("journal")
		}
	} else {
		// Recovery by whoever opened the replica meanwhile keeps a staged
		// journal as it is (it was synced whole), so it must be exactly
		// what was left.
		fi, err := r.o.FS.Stat(r.p(journalName))
		if err != nil || fi.Size() != r.jlen {
			return changed("journal")
		}
		jw, err := journal.OpenAppend(r.o.FS, r.p(journalName), r.jlen)
		if err != nil {
			return fail(fmt.Errorf("reopen journal: %w (%w)", err, ErrStorage))
		}
		r.jw = jw
	}
	r.unlock, r.released = h, false
	r.noteActivity()
	return nil
}

func (r *Replica) p(name string) string { return path.Join(r.o.Dir, name) }

func key(kind vmspec.TargetKind, name string) string { return kindName(kind) + "/" + name }

func (r *Replica) load() error {
	b, err := readFile(r.o.FS, r.p(manifestName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.man = &Manifest{Format: manifestFormat, VM: r.o.VM}
	case err != nil:
		return fmt.Errorf("read manifest: %w (%w)", err, ErrStorage)
	default:
		if r.man, err = ParseManifest(b); err != nil {
			return fmt.Errorf("%s: %w", r.p(manifestName), err)
		}
		if r.man.VM != r.o.VM {
			return fmt.Errorf("%s belongs to VM %q, not %q: %w", r.p(manifestName), r.man.VM, r.o.VM, ErrCorrupt)
		}
	}
	for _, t := range r.man.Targets {
		tab, err := readTable(r.o.FS, r.p(t.Table))
		if err != nil {
			return err
		}
		r.tables[key(kindOf(t.Kind), t.Name)] = tab
	}
	if err := r.recover(); err != nil {
		return err
	}
	// Tables are written in place while an epoch is applied, so they are
	// only checked against the manifest once recovery has finished that.
	for _, t := range r.man.Targets {
		tab := r.tables[key(kindOf(t.Kind), t.Name)]
		if tab.Size != t.Size || tab.BlockSize != t.BlockSize || tab.Digest() != t.Digest {
			return fmt.Errorf("block table %s does not match the manifest (epoch %d); run drsync verify: %w", t.Table, r.man.Epoch, ErrCorrupt)
		}
	}
	return nil
}

func readTable(fsys vfs.FS, name string) (*blockhash.Table, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open block table: %w (%w)", err, ErrStorage)
	}
	defer f.Close()
	tab, err := blockhash.Read(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%w)", name, err, ErrCorrupt)
	}
	return tab, nil
}

func readFile(fsys vfs.FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	_, err = io.Copy(&buf, io.LimitReader(f, maxManifest+1))
	return buf.Bytes(), err
}

// recover applies the journal recovery rule (see package replica/recovery).
func (r *Replica) recover() error {
	jpath := r.p(journalName)
	facts := recovery.JournalFacts{}
	var st *stage
	var stageErr error
	validLen, tail, err := journal.Scan(r.o.FS, jpath, r.o.VM, func(off int64, f wire.Frame) error {
		if stageErr != nil {
			return nil
		}
		switch f := f.(type) {
		case *wire.EpochBegin:
			if facts.HasBegin {
				stageErr = protoErr("second EpochBegin at %d", off)
				return nil
			}
			facts.HasBegin, facts.Epoch = true, f.Epoch
			if f.Epoch != r.man.Epoch+1 {
				return errStopScan
			}
			st, stageErr = newStage(r.man, f, r.o.MaxTargetSize)
		case *wire.EpochCommit:
			if st == nil {
				stageErr = protoErr("EpochCommit before EpochBegin")
				return nil
			}
			if stageErr = st.checkCommit(f); stageErr == nil {
				st.commit = f
				facts.HasCommit = true
			}
		case wire.Item:
			if st == nil {
				stageErr = protoErr("%s before EpochBegin", f.Type())
				return nil
			}
			stageErr = st.item(f, off)
		default:
			stageErr = protoErr("%s in journal", f.Type())
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil && !errors.Is(err, errStopScan) {
		if errors.Is(err, journal.ErrCorrupt) {
			// A header that never became durable: the journal was being
			// created when the crash hit, so nothing was staged in it.
			facts.Exists = true
			r.log.Warn("journal header unreadable; discarding it", "err", err)
			return r.removeJournal()
		}
		return fmt.Errorf("scan journal: %w (%w)", err, ErrStorage)
	}
	facts.Exists = true
	if stageErr != nil {
		// The journal only ever receives validated frames, so a frame that
		// fails validation here was damaged on disk. What precedes it is
		// intact; staged (uncommitted) data after it is simply re-sent.
		r.log.Warn("journal frame failed validation; keeping the prefix before it", "err", stageErr)
		facts.HasCommit = false
		if st != nil {
			validLen = r.truncateStage(st)
		}
	}
	action := recovery.Decide(r.man.Epoch, facts)
	r.log.Info("journal recovery", "action", action.String(), "journal_epoch", facts.Epoch, "committed", r.man.Epoch, "torn_tail", tail != nil)
	switch action {
	case recovery.Discard:
		return r.removeJournal()
	case recovery.Corrupt:
		return fmt.Errorf("journal holds epoch %d but the replica is at epoch %d: %w", facts.Epoch, r.man.Epoch, ErrCorrupt)
	case recovery.Replay:
		r.st = st
		r.unlock.note(r.who(fmt.Sprintf("applying epoch %d (an apply a crash interrupted)", st.begin.Epoch)))
		r.phases = newPhases()
		return r.apply(nil, nil)
	case recovery.Resume:
		jw, err := journal.OpenAppend(r.o.FS, jpath, validLen)
		if err != nil {
			return fmt.Errorf("reopen journal: %w (%w)", err, ErrStorage)
		}
		r.st, r.jw, r.synced = st, jw, len(st.items)
	}
	return nil
}

var errStopScan = errors.New("stop scan")

// truncateStage is used when a journal frame was damaged: the stage keeps
// what was validated, which ends where the damaged frame started.
func (r *Replica) truncateStage(st *stage) int64 {
	// st.items holds only validated items; the damaged frame started after
	// the last of them. Its end is unknown here, so rescan to find it.
	n := len(st.items)
	end := int64(-1)
	journal.Scan(r.o.FS, r.p(journalName), r.o.VM, func(off int64, f wire.Frame) error {
		if it, ok := f.(wire.Item); ok && it.ItemSeq() == uint64(n) {
			end = off
			return errStopScan
		}
		if _, ok := f.(*wire.EpochCommit); ok {
			end = off
			return errStopScan
		}
		return nil
	})
	return end
}

func (r *Replica) removeJournal() error {
	if err := r.o.FS.Remove(r.p(journalName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove journal: %w (%w)", err, ErrStorage)
	}
	if err := r.o.FS.SyncDir(r.o.Dir); err != nil {
		return fmt.Errorf("sync replica directory: %w (%w)", err, ErrStorage)
	}
	return nil
}

// Table returns the committed block table of a target, nil if there is
// none. Do not modify it.
func (r *Replica) Table(kind vmspec.TargetKind, name string) *blockhash.Table {
	return r.tables[key(kind, name)]
}

// Manifest returns the committed manifest (do not modify it).
func (r *Replica) Manifest() *Manifest { return r.man }

// Position is the durable position the receiver reports in its Welcome.
func (r *Replica) Position() wire.Position {
	p := wire.Position{Committed: r.man.Epoch, CommittedCut: r.man.Cut, StateID: r.man.StateID}
	if r.st != nil && r.st.commit == nil {
		p.StagedEpoch, p.StagedPlan, p.StagedDurable = r.st.begin.Epoch, r.st.stagedPlan(r.synced), uint64(r.synced)
	}
	return p
}

func (r *Replica) fail(err error) error {
	if errors.Is(err, ErrStorage) {
		r.broken = err
	}
	return err
}

// errReleased is returned by methods that need the replica held.
var errReleased = fmt.Errorf("replica used while released: %w", ErrBroken)

// Begin opens an epoch, or resumes the staged one if b.StartSeq > 0.
func (r *Replica) Begin(b *wire.EpochBegin) error {
	if r.broken != nil {
		return ErrBroken
	}
	if r.released {
		return errReleased
	}
	if b.StartSeq > 0 {
		if r.st == nil || r.st.commit != nil {
			return protoErr("EpochBegin: resume of epoch %d at item %d, nothing is staged", b.Epoch, b.StartSeq)
		}
		// Everything staged when the replica was opened is durable (recovery
		// synced it), and appended items are synced before each ack, so the
		// resume point must be exactly the synced count.
		if b.StartSeq != uint64(r.synced) || r.synced != len(r.st.items) {
			return protoErr("EpochBegin: resume at item %d, %d items are durable", b.StartSeq, r.synced)
		}
		return r.st.resume(b)
	}
	st, err := newStage(r.man, b, r.o.MaxTargetSize)
	if err != nil {
		return err
	}
	if r.jw != nil {
		r.jw.Close()
		r.jw = nil
	}
	r.st = nil
	r.removeEager()
	jw, err := journal.Create(r.o.FS, r.p(journalName), r.o.VM)
	if err != nil {
		return r.fail(fmt.Errorf("epoch %d: %w (%w)", b.Epoch, err, ErrStorage))
	}
	if err := r.o.FS.SyncDir(r.o.Dir); err != nil {
		jw.Close()
		return r.fail(fmt.Errorf("epoch %d: sync replica directory: %w (%w)", b.Epoch, err, ErrStorage))
	}
	if err := jw.Append(b); err != nil {
		jw.Close()
		return r.fail(fmt.Errorf("epoch %d: %w (%w)", b.Epoch, err, ErrStorage))
	}
	r.st, r.jw, r.synced = st, jw, 0
	r.startEager(st)
	r.noteActivity()
	return nil
}

// Append stages the next item of the open epoch. It is durable after Sync.
func (r *Replica) Append(it wire.Item) error {
	if r.broken != nil {
		return ErrBroken
	}
	if r.released {
		return errReleased
	}
	if r.st == nil || r.jw == nil {
		return protoErr("%s outside an epoch", it.Type())
	}
	off := r.jw.Offset()
	if err := r.st.item(it, off); err != nil {
		return err
	}
	if err := r.jw.Append(it); err != nil {
		return r.fail(fmt.Errorf("epoch %d item %d: %w (%w)", r.st.begin.Epoch, it.ItemSeq(), err, ErrStorage))
	}
	r.eagerWrite(it)
	return nil
}

// Sync makes all appended items durable and returns how many are.
func (r *Replica) Sync() (uint64, error) {
	if r.broken != nil {
		return 0, ErrBroken
	}
	if r.released {
		return uint64(r.synced), nil // Release synced everything
	}
	if r.jw == nil || r.st == nil {
		return 0, nil
	}
	if err := r.jw.Sync(); err != nil {
		return uint64(r.synced), r.fail(fmt.Errorf("epoch %d: %w (%w)", r.st.begin.Epoch, err, ErrStorage))
	}
	r.synced = len(r.st.items)
	return uint64(r.synced), nil
}

// Staged reports the staged epoch and how many of its items were appended.
func (r *Replica) Staged() (epoch uint64, items int) {
	if r.st == nil {
		return 0, 0
	}
	return r.st.begin.Epoch, len(r.st.items)
}

// Commit checks c against the staged epoch and the states it produces,
// reserves the space applying it needs, makes the commit durable and applies
// the epoch. When Commit returns nil the replica is at the new epoch. An
// error before the commit record is durable leaves the replica at the
// previous epoch; ErrDigest also discards the staged epoch.
func (r *Replica) Commit(c *wire.EpochCommit) error {
	if r.broken != nil {
		return ErrBroken
	}
	if r.released {
		return errReleased
	}
	if r.st == nil {
		return protoErr("EpochCommit outside an epoch")
	}
	st := r.st
	// Whoever is refused the lock from now on learns that the replica is
	// being written, not merely staged into.
	r.unlock.note(r.who(fmt.Sprintf("committing and applying epoch %d", c.Epoch)))
	defer r.noteActivity()
	if err := st.checkCommit(c); err != nil {
		if errors.Is(err, ErrDigest) {
			r.discardStaged()
		}
		return err
	}
	r.phases = newPhases()
	if _, err := r.Sync(); err != nil {
		return err
	}
	tables, err := r.newTables(st)
	if err != nil {
		return r.fail(err)
	}
	digests := r.digests(st, tables)
	r.phases.mark("check")
	byID := func(id uint16) uint64 {
		t := st.targets[id]
		return digests[key(t.Kind, t.Name)]
	}
	if err := st.checkStates(c, byID); err != nil {
		r.discardStaged()
		return err
	}
	if err := r.resetNewImages(st); err != nil {
		return r.fail(err)
	}
	if err := r.reserve(st); err != nil {
		return r.fail(err)
	}
	if err := r.writeDeviceState(st); err != nil {
		return r.fail(err)
	}
	if err := r.jw.Append(c); err != nil {
		return r.fail(fmt.Errorf("epoch %d commit: %w (%w)", c.Epoch, err, ErrStorage))
	}
	if err := r.jw.Sync(); err != nil {
		return r.fail(fmt.Errorf("epoch %d commit: %w (%w)", c.Epoch, err, ErrStorage))
	}
	st.commit = c
	r.phases.mark("reserve")
	return r.fail(r.apply(tables, digests))
}

func (r *Replica) discardStaged() {
	r.removeEager()
	if r.jw != nil {
		r.jw.Close()
	}
	r.st, r.jw, r.synced = nil, nil, 0
	if err := r.removeJournal(); err != nil {
		r.broken = err
	}
}

// digests is the content digest of each of st's tables (by kind/name):
// only the tables the epoch changed are hashed (stage.digestOf). r.tables
// match the manifest, checked when the replica was opened.
func (r *Replica) digests(st *stage, tables map[string]*blockhash.Table) map[string]uint64 {
	out := make(map[string]uint64, len(tables))
	for id, t := range st.targets {
		k := key(t.Kind, t.Name)
		out[k] = st.digestOf(id, tables[k], r.tables)
	}
	return out
}

// newTables computes every target's block table as of the end of st.
func (r *Replica) newTables(st *stage) (map[string]*blockhash.Table, error) {
	return st.tablesAfter(r.tables, r.endView(st, nil))
}

func itemOffset(it stagedItem) int64 {
	if it.Type == wire.TypeMemRun || it.Type == wire.TypePageRef {
		return int64(it.Offset) * vmspec.PageSize
	}
	return int64(it.Offset)
}

// viewFunc reads n bytes of a target at off.
type viewFunc func(target uint16, off int64, n int) ([]byte, error)

// endView reads targets as they are at the end of the staged epoch's data
// and zero items, before any reference is applied: staged data from the
// journal, staged zeros, otherwise the committed image. References never
// read what references write (checkCommit), so this is also what they read
// during apply.
func (r *Replica) endView(st *stage, tables map[uint16]*blockhash.Table) viewFunc {
	return func(target uint16, off int64, n int) ([]byte, error) {
		t := st.targets[target]
		out := make([]byte, n)
		if e := r.eager[target]; e != nil {
			// It holds every staged data and zero item, in order.
			if _, err := e.f.ReadAt(out, off); err != nil && err != io.EOF {
				return nil, fmt.Errorf("read %s: %w (%w)", e.name, err, ErrStorage)
			}
			return out, nil
		}
		// Start from the committed image, then overlay staged items in order.
		if t.base != nil && off < t.base.Size {
			f, err := r.o.FS.Open(r.p(t.base.File))
			if err != nil {
				return nil, fmt.Errorf("open %s: %w (%w)", t.base.File, err, ErrStorage)
			}
			m := min(int64(n), t.base.Size-off)
			_, err = f.ReadAt(out[:m], off)
			f.Close()
			if err != nil && err != io.EOF {
				return nil, fmt.Errorf("read %s: %w (%w)", t.base.File, err, ErrStorage)
			}
		}
		var jf vfs.File
		defer func() {
			if jf != nil {
				jf.Close()
			}
		}()
		for _, it := range st.items {
			if it.Target != target || it.Type == wire.TypePageRef || it.Type == wire.TypeDeviceState {
				continue
			}
			io0, ilen := itemOffset(it), int64(it.Length)
			lo, hi := max(io0, off), min(io0+ilen, off+int64(n))
			if lo >= hi {
				continue
			}
			if it.Type == wire.TypeZeroRun {
				clear(out[lo-off : hi-off])
				continue
			}
			if jf == nil {
				var err error
				if jf, err = r.o.FS.Open(r.p(journalName)); err != nil {
					return nil, fmt.Errorf("open journal: %w (%w)", err, ErrStorage)
				}
			}
			fr, err := journal.ReadFrameAt(jf, it.off)
			if err != nil {
				return nil, fmt.Errorf("%w (%w)", err, ErrCorrupt)
			}
			copy(out[lo-off:hi-off], wire.DataOf(fr.(wire.Item))[lo-io0:hi-io0])
		}
		return out, nil
	}
}

// reserve allocates image space for every data item, so that applying a
// committed epoch cannot run out of space half way.
func (r *Replica) reserve(st *stage) error {
	files := map[uint16]vfs.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, it := range st.items {
		if it.Type != wire.TypeDiskExtent && it.Type != wire.TypeMemRun && it.Type != wire.TypePageRef {
			continue
		}
		f := files[it.Target]
		if f == nil {
			var err error
			if f, err = r.o.FS.OpenReadWrite(r.p(r.fileFor(st, it.Target))); err != nil {
				return fmt.Errorf("epoch %d: open image: %w (%w)", st.begin.Epoch, err, ErrStorage)
			}
			files[it.Target] = f
		}
		n := int64(it.Length)
		if it.Type == wire.TypePageRef {
			n *= vmspec.PageSize
		}
		if err := f.Allocate(itemOffset(it), n); err != nil {
			return fmt.Errorf("epoch %d: reserve %d bytes in %s: %w (%w)", st.begin.Epoch, n, r.fileFor(st, it.Target), err, ErrStorage)
		}
	}
	return nil
}

// fileFor names the image of a staged target: the committed one, or a new
// name derived from its position in the epoch's target list.
func (r *Replica) fileFor(st *stage, id uint16) string {
	t := st.targets[id]
	if t.base != nil {
		return t.base.File
	}
	return fmt.Sprintf("%s-%d.img", kindName(t.Kind), r.newIndex(st, id))
}

func (r *Replica) tableFor(st *stage, id uint16) string {
	t := st.targets[id]
	if t.base != nil {
		return t.base.Table
	}
	return fmt.Sprintf("%s-%d.bht", kindName(t.Kind), r.newIndex(st, id))
}

// newIndex picks a file number for a new target that no committed target
// uses, deterministic so a replayed apply picks the same.
func (r *Replica) newIndex(st *stage, id uint16) int {
	used := map[string]bool{}
	for _, e := range r.man.Targets {
		used[e.File] = true
	}
	var ids []int
	for tid, t := range st.targets {
		if t.base == nil {
			ids = append(ids, int(tid))
		}
	}
	sort.Ints(ids)
	n := 0
	for _, tid := range ids {
		for used[fmt.Sprintf("%s-%d.img", kindName(st.targets[uint16(tid)].Kind), n)] {
			n++
		}
		if uint16(tid) == id {
			return n
		}
		used[fmt.Sprintf("%s-%d.img", kindName(st.targets[uint16(tid)].Kind), n)] = true
	}
	return n
}

func devStateName(epoch uint64) string { return fmt.Sprintf("devstate-%d.bin", epoch) }

// writeDeviceState writes the staged device-state blob to its own file.
func (r *Replica) writeDeviceState(st *stage) error {
	if !st.devSeen {
		return nil
	}
	name := devStateName(st.begin.Epoch)
	f, err := r.o.FS.Create(r.p(name + ".tmp"))
	if err != nil {
		return fmt.Errorf("device state: %w (%w)", err, ErrStorage)
	}
	defer f.Close()
	jf, err := r.o.FS.Open(r.p(journalName))
	if err != nil {
		return fmt.Errorf("device state: %w (%w)", err, ErrStorage)
	}
	defer jf.Close()
	h := xxhash.New()
	for _, it := range st.items {
		if it.Type != wire.TypeDeviceState {
			continue
		}
		fr, err := journal.ReadFrameAt(jf, it.off)
		if err != nil {
			return fmt.Errorf("device state: %w (%w)", err, ErrCorrupt)
		}
		d := wire.DataOf(fr.(wire.Item))
		h.Write(d)
		if _, err := f.WriteAt(d, int64(it.Offset)); err != nil {
			return fmt.Errorf("device state: %w (%w)", err, ErrStorage)
		}
	}
	if h.Sum64() != st.deviceStateHash() {
		return fmt.Errorf("device state in journal differs from what was received: %w", ErrCorrupt)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("device state: %w (%w)", err, ErrStorage)
	}
	if err := r.o.FS.Rename(r.p(name+".tmp"), r.p(name)); err != nil {
		return fmt.Errorf("device state: %w (%w)", err, ErrStorage)
	}
	return nil
}

// apply writes the committed staged epoch into the images and tables, then
// replaces the manifest and removes the journal. It is idempotent: a crash
// anywhere inside it is repaired by running it again. tables are the
// epoch's tables if Commit has just computed them (reading every staged
// block again costs a first epoch its whole size), nil on recovery.
func (r *Replica) apply(tables map[string]*blockhash.Table, digests map[string]uint64) error {
	st := r.st
	epoch := st.begin.Epoch
	wrap := func(what string, err error) error {
		return fmt.Errorf("apply epoch %d: %s: %w (%w)", epoch, what, err, ErrStorage)
	}
	if tables == nil {
		// Recovery: the tables come from the journal again, and must
		// give the state that was committed.
		var err error
		if tables, err = r.newTables(st); err != nil {
			return err
		}
		// Every table is hashed here, not only the changed ones: what
		// the crash left on disk is not trusted to match the manifest.
		digests = map[string]uint64{}
		for k, tab := range tables {
			digests[k] = tab.Digest()
		}
		for _, sd := range st.commit.States {
			t := st.targets[sd.Target]
			if digests[key(t.Kind, t.Name)] != sd.Digest {
				return fmt.Errorf("apply epoch %d: journal yields another state for %s than was committed: %w", epoch, t.Name, ErrCorrupt)
			}
		}
	}
	if _, err := r.o.FS.Stat(r.p(devStateName(epoch))); st.devSeen && err != nil {
		if err := r.writeDeviceState(st); err != nil {
			return err
		}
	}
	images := map[uint16]vfs.File{}
	defer func() {
		for _, f := range images {
			f.Close()
		}
	}()
	for id, t := range st.targets {
		f, err := r.o.FS.OpenReadWrite(r.p(r.fileFor(st, id)))
		if err != nil {
			return wrap("open image", err)
		}
		images[id] = f
		fi, err := f.Stat()
		if err != nil {
			return wrap("stat image", err)
		}
		if fi.Size() < int64(t.Size) {
			if err := f.Truncate(int64(t.Size)); err != nil {
				return wrap("grow image", err)
			}
		}
	}
	// What this epoch overwrites of the last one is saved (and durable)
	// before the first image write, if recovery points are kept.
	if err := r.capturePoint(st, images); err != nil {
		return err
	}
	// Data and zeros first, in journal order, straight from the journal;
	// new targets written as their items arrived already hold theirs.
	if r.journalWrites(st) {
		_, tail, err := journal.Scan(r.o.FS, r.p(journalName), r.o.VM, func(off int64, fr wire.Frame) error {
			if t, _, _, ok := imageTarget(fr); ok {
				if r.eager[t] != nil {
					return nil
				}
				return writeItem(images[t], fr)
			}
			if _, ok := fr.(*wire.EpochCommit); ok {
				return errStopScan
			}
			return nil
		})
		if err == nil {
			// The scan must end at the commit record it found before.
			err = fmt.Errorf("journal ends before its commit record: %w", errors.Join(tail, ErrCorrupt))
		}
		if !errors.Is(err, errStopScan) {
			return wrap("write images", err)
		}
	}
	r.phases.mark("images")
	view := func(target uint16, off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := images[target].ReadAt(b, off)
		if err != nil && err != io.EOF {
			return nil, err
		}
		return b, nil
	}
	// References already in the eager images (early.go) are not read again.
	early := 0
	if r.early != nil && !r.early.redo {
		early = r.early.n
	}
	if err := st.forRefs(r.appliedEarly, func(it stagedItem, src []byte) error {
		_, err := images[it.Target].WriteAt(src, itemOffset(it))
		return err
	}, view); err != nil {
		return wrap("apply page references", err)
	}
	r.phases.mark("refs")
	for id, f := range images {
		if err := f.Sync(); err != nil {
			return wrap("sync image "+r.fileFor(st, id), err)
		}
	}
	r.dropEager(nil) // their files are the images now
	r.phases.mark("sync")
	if err := r.writeTables(st, tables); err != nil {
		return err
	}
	next := &Manifest{Format: manifestFormat, VM: r.o.VM, Epoch: epoch, Cut: st.begin.Cut, Applied: r.o.Now().UTC()}
	if keep, known := r.keepRule(); known {
		next.KeepPoints = &keep
	}
	if g := st.begin.Group; g != nil {
		next.Group = &GroupTag{*g}
	}
	ids := make([]int, 0, len(st.targets))
	for id := range st.targets {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		t := st.targets[uint16(id)]
		next.Targets = append(next.Targets, TargetEntry{
			Kind: kindName(t.Kind), Name: t.Name, Size: int64(t.Size), BlockSize: int(t.BlockSize),
			File: r.fileFor(st, uint16(id)), Table: r.tableFor(st, uint16(id)),
			Digest: digests[key(t.Kind, t.Name)],
		})
	}
	if st.devSeen {
		next.DeviceState = &DeviceStateInfo{File: devStateName(epoch), Size: int64(st.devTotal), Hash: st.deviceStateHash()}
	} else if r.man.DeviceState != nil {
		// An epoch without device state keeps the previous blob.
		next.DeviceState = r.man.DeviceState
	}
	next.StateID = next.ComputeStateID()
	if err := r.writeManifest(next); err != nil {
		return err
	}
	old := r.man
	r.man, r.tables = next, tables
	if r.jw != nil {
		r.jw.Close()
	}
	r.st, r.jw, r.synced = nil, nil, 0
	if err := r.removeJournal(); err != nil {
		return err
	}
	if old.DeviceState != nil && (next.DeviceState == nil || old.DeviceState.File != next.DeviceState.File) {
		if err := r.o.FS.Remove(r.p(old.DeviceState.File)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("remove old device state", "file", old.DeviceState.File, "err", err)
		}
	}
	if keep, known := r.keepRule(); known && (keep > 0 || old.Epoch > 0) {
		r.prunePoints(keep)
	}
	r.phases.mark("finish")
	r.log.Info("epoch applied", append([]any{"epoch", epoch, "items", len(st.items), "bytes", st.bytes, "refs_early", early}, r.phases.attrs()...)...)
	r.phases = phases{}
	return nil
}

// writeTables updates each target's table file in place: only changed
// entries (and the header, if the size changed) are written.
func (r *Replica) writeTables(st *stage, tables map[string]*blockhash.Table) error {
	for id, t := range st.targets {
		name := r.p(r.tableFor(st, id))
		tab := tables[key(t.Kind, t.Name)]
		old := r.tables[key(t.Kind, t.Name)]
		if tab == old {
			// Unwritten this epoch (tablesAfter shares its table): the
			// file already holds it.
			continue
		}
		f, err := r.o.FS.OpenReadWrite(name)
		if err != nil {
			return fmt.Errorf("apply epoch %d: open table: %w (%w)", st.begin.Epoch, err, ErrStorage)
		}
		err = func() error {
			if old == nil || old.Size != tab.Size {
				if _, err := f.WriteAt(tab.Marshal(), 0); err != nil {
					return err
				}
				return f.Truncate(int64(blockhash.HeaderLen + 8*len(tab.Hashes)))
			}
			for _, r := range blockhash.DiffRuns(old, tab) {
				if _, err := f.WriteAt(tab.EntryBytes(r.First, int64(len(r.Hashes))), blockhash.HeaderLen+8*r.First); err != nil {
					return err
				}
			}
			return nil
		}()
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("apply epoch %d: write table %s: %w (%w)", st.begin.Epoch, name, err, ErrStorage)
		}
	}
	return nil
}

func (r *Replica) writeManifest(m *Manifest) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	if err := vfs.WriteFileDurable(r.o.FS, r.p(manifestName), b, filePerm); err != nil {
		return fmt.Errorf("write manifest: %w (%w)", err, ErrStorage)
	}
	return nil
}

// The modes of what a replica creates: replicas hold guest disk and
// memory contents, so only the owner's group may list them and only the
// owner may read them.
const (
	dirPerm  = 0o750
	filePerm = 0o600
)

// Close releases the replica. A staged epoch stays in the journal.
func (r *Replica) Close() error {
	r.dropEager(nil)
	if r.jw != nil {
		r.jw.Sync()
		r.jw.Close()
		r.jw = nil
	}
	if r.unlock != nil {
		r.unlock.Close()
		r.unlock = nil
	}
	return nil
}
