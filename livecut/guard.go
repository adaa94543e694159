package livecut

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/vfs"
)

// cutMarkerFile exists in the work directory from just before a cut's
// migrate until the guest runs again after it. A guest found stopped by a
// completed migration while it exists was stopped by drsync's own cut, and
// only then may the guard or a restarted sender resume it: without it the
// migration may be the operator's, whose source must stay stopped.
const cutMarkerFile = "cut-in-flight"

// cutMarker is the content of cutMarkerFile.
type cutMarker struct {
	Gen   uint64    `json:"gen"`
	Began time.Time `json:"began"` // just before migrate
	Pid   int       `json:"pid"`   // the sender's
	// Stopped: the cut stopped the guest itself (a stopped pass, or a
	// group cut's stop) before its migration completed.
	Stopped bool `json:"stopped,omitempty"`
}

// markCut records a cut in flight. It is not synced: it must outlive the
// sender process, not the host (a power loss takes QEMU with it).
func (s *Source) markCut(gen uint64) error { return s.markCutStopped(gen, false) }

// markCutStopped records a cut in flight, saying whether it stops the
// guest itself before its migration completes: a sender dying in between
// leaves it paused with no completed migration, which only this mark tells
// from an operator's pause.
func (s *Source) markCutStopped(gen uint64, stopped bool) error {
	b, _ := json.Marshal(cutMarker{Gen: gen, Began: s.o.Now().UTC(), Pid: os.Getpid(), Stopped: stopped})
	if err := vfs.WriteFileAtomic(s.o.FS, path.Join(s.o.WorkDir, cutMarkerFile), b, 0o600); err != nil {
		return fmt.Errorf("mark the cut in flight: %w", err)
	}
	return nil
}

func (s *Source) unmarkCut() {
	if err := s.o.FS.Remove(path.Join(s.o.WorkDir, cutMarkerFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove the cut-in-flight mark", "err", err)
	}
}

// readCutMarker reads the mark through fsys: the sender's FS, or for the
// guard, which runs on the real host, vfs.Default.
func readCutMarker(fsys vfs.FS, workDir string) (*cutMarker, error) {
	b, err := vfs.ReadFile(fsys, path.Join(workDir, cutMarkerFile), 64<<10)
	if err != nil {
		return nil, err
	}
	var m cutMarker
	if err := json.Unmarshal(b, &m); err != nil {
		// A mark that exists is a cut in flight, even if unreadable.
		return &cutMarker{}, nil
	}
	return &m, nil
}

// CutInFlight reports the cut a sender began in workDir and has not
// finished: when it began and the sender's process id. For status: a mark
// that stays for long means the guest may be stopped.
func CutInFlight(workDir string) (began time.Time, pid int, ok bool) {
	m, err := readCutMarker(vfs.Default, workDir)
	if err != nil {
		return time.Time{}, 0, false
	}
	return m.Began, m.Pid, true
}

// guardFacts is what the guest guard decides on.
type guardFacts struct {
	SenderAlive bool   // the sender process still runs
	CutInFlight bool   // the cut marker exists
	Stopped     bool   // and says the cut stopped the guest itself
	Final       bool   // a final cut (switch-back) paused the guest for good
	Status      string // query-status
	Migration   string // query-migrate status, "" if none ran
}

type guardAction int

const (
	guardNone   guardAction = iota // nothing to do, ever
	guardResume                    // send cont
	guardWait                      // look again shortly: QEMU is between states
)

func (a guardAction) String() string {
	return [...]string{"none", "resume", "wait"}[a]
}

// guardDecide says what the guest guard does about a guest. It resumes
// only a guest that drsync's own cut stopped: a cut was in flight when the
// sender died, and QEMU is in postmigrate after a completed migration. A
// guest the operator paused, one whose migration is someone else's, a
// switch-back's and a live sender's cut are never touched.
func guardDecide(f guardFacts) (guardAction, string) {
	switch {
	case f.SenderAlive:
		return guardNone, "the sender runs and finishes its own cut"
	case !f.CutInFlight:
		return guardNone, "no cut was in flight: a pause now is not drsync's"
	case f.Final:
		return guardNone, "a final cut (switch-back) keeps the guest paused"
	case slices.Contains(migrationActive, f.Migration) || f.Migration == "cancelling" || f.Status == "finish-migrate":
		// The stream's reader died with the sender: QEMU fails this
		// migration shortly and resumes a guest it stopped by itself.
		return guardWait, "the cut's migration is still ending"
	case f.Status == "running":
		return guardNone, "the guest runs"
	case f.Status == "postmigrate" && f.Migration == "completed":
		return guardResume, "stopped by the cut's migration, whose sender died before cont"
	case f.Stopped && f.Status == "paused":
		return guardResume, "stopped by the cut, whose sender died before its migration completed"
	}
	// paused (by the operator, or before the cut's migration completed),
	// a failed migration of a stopped guest, shutdown, panics: not ours.
	return guardNone, fmt.Sprintf("status %q after migration %q was not caused by the cut", f.Status, f.Migration)
}

// resumeAfterKilledCut is guardDecide for a restarted sender's cleanup: the
// predecessor is gone.
func resumeAfterKilledCut(o observed) bool {
	a, _ := guardDecide(guardFacts{CutInFlight: o.CutInFlight, Stopped: o.CutStopped, Status: o.Status, Migration: o.Migration})
	return a == guardResume
}

// GuardOptions configure Guard.
type GuardOptions struct {
	QMPSocket string
	WorkDir   string
	Logger    *slog.Logger
	// Settle bounds the wait for QEMU to leave a transient state (a
	// migration ending) and for the QMP socket to accept us; 10 s if 0.
	Settle time.Duration
	// Dial connects to the VM's monitor; DialQMP if nil.
	Dial DialFunc
}

// GuardReport says what Guard found and did.
type GuardReport struct {
	// Acted is set when a cut was in flight, so the guard looked at QEMU.
	Acted   bool
	Resumed bool
	Reason  string
	Status  string // QEMU's status when the guard decided
	Gen     uint64 // the cut in flight
	// Paused is about how long the guest was stopped before the guard's
	// cont returned: from the end of the cut's migration, by QEMU's figures.
	Paused time.Duration
	At     time.Time
}

// Guard runs once the sender process is gone: if the sender died during a
// cut, it takes over the VM's QMP socket (QEMU serves the next client once
// the dead one's connection closes) and resumes the guest that cut left
// stopped. Without a cut in flight it does not connect at all.
func Guard(ctx context.Context, o GuardOptions) (GuardReport, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Settle <= 0 {
		o.Settle = 10 * time.Second
	}
	if o.Dial == nil {
		o.Dial = DialQMP
	}
	rep := GuardReport{At: time.Now()}
	m, err := readCutMarker(vfs.Default, o.WorkDir)
	if errors.Is(err, fs.ErrNotExist) {
		rep.Reason = "no cut was in flight"
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("livecut: guard: %w", err)
	}
	rep.Acted, rep.Gen = true, m.Gen
	_, ferr := vfs.Default.Stat(path.Join(o.WorkDir, finalFile))
	final := ferr == nil

	ctx, cancel := context.WithTimeout(ctx, o.Settle)
	defer cancel()
	var sess Monitor
	for {
		sess, err = o.Dial(ctx, o.QMPSocket, qmp.Options{GreetingTimeout: time.Second})
		if err == nil {
			break
		}
		if errors.Is(err, qmp.ErrNoSocket) {
			// No guest of the cut's QEMU can be left stopped: a mark kept
			// would have status report a paused guest. Its NBD socket is
			// stale too.
			rep.Reason = "the VM is gone"
			vfs.Default.Remove(path.Join(o.WorkDir, cutMarkerFile))
			vfs.Default.Remove(path.Join(o.WorkDir, nbdSocketFile))
			return rep, nil
		}
		if ctx.Err() != nil {
			return rep, fmt.Errorf("livecut: guard: the guest may be left paused: %w", err)
		}
		// Busy: a new sender has the socket (it resumes the guest itself),
		// or QEMU has not yet noticed the dead sender's connection.
		log.Debug("guard: QMP socket not yet ours", "err", err)
		time.Sleep(20 * time.Millisecond)
	}
	defer sess.Close()
	for {
		var st struct{ Status string }
		var mig struct {
			Status    string `json:"status"`
			TotalTime int64  `json:"total-time"`
			Downtime  int64  `json:"downtime"`
		}
		if err := sess.Execute(ctx, "query-status", nil, &st); err != nil {
			return rep, fmt.Errorf("livecut: guard: %w", err)
		}
		if err := sess.Execute(ctx, "query-migrate", nil, &mig); err != nil {
			return rep, fmt.Errorf("livecut: guard: %w", err)
		}
		rep.Status = st.Status
		act, why := guardDecide(guardFacts{CutInFlight: true, Stopped: m.Stopped, Final: final, Status: st.Status, Migration: mig.Status})
		rep.Reason = why
		switch act {
		case guardWait:
			select {
			case <-ctx.Done():
				return rep, fmt.Errorf("livecut: guard: QEMU still %s (migration %s) after %v: the guest may be left paused", st.Status, mig.Status, o.Settle)
			case <-time.After(10 * time.Millisecond):
			}
			continue
		case guardResume:
			if _, err := vfs.Default.Stat(path.Join(o.WorkDir, cutMarkerFile)); err != nil {
				// A new sender got the socket first and cleaned up.
				rep.Reason = "a new sender handled the cut"
				return rep, nil
			}
			if err := sess.Execute(context.WithoutCancel(ctx), "cont", nil, nil); err != nil {
				return rep, fmt.Errorf("livecut: guard: resume the guest: %w", err)
			}
			rep.Resumed, rep.At = true, time.Now()
			if !m.Began.IsZero() {
				// The migration completed total-time after it began, and
				// had stopped the guest downtime before that.
				stopped := m.Began.Add(time.Duration(mig.TotalTime-mig.Downtime) * time.Millisecond)
				rep.Paused = max(rep.At.Sub(stopped), 0)
			}
			log.Warn("guard: resumed the guest a killed sender's cut left paused", "cut", m.Gen, "paused", rep.Paused.Round(time.Millisecond))
		default:
			log.Info("guard: the guest is left as it is", "cut", m.Gen, "status", st.Status, "why", why)
		}
		// Handled: the next sender must not act on this cut again.
		vfs.Default.Remove(path.Join(o.WorkDir, cutMarkerFile))
		return rep, nil
	}
}
