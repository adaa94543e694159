package agent

import (
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/drsync/drsync/livecut"
)

// Guest tells of a live guest that is, or was, paused when it should
// not have been.
type Guest struct {
	// Paused: the guest is, or may be, paused now; Detail says why.
	Paused bool      `json:"paused"`
	Since  time.Time `json:"since,omitzero"`
	Detail string    `json:"detail,omitempty"`
	// GuardResumes counts guests the guard resumed after a sender died
	// during a cut; LastGuard is its last intervention.
	GuardResumes uint64      `json:"guard_resumes"`
	LastGuard    *GuardEvent `json:"last_guard,omitempty"`
	LongPause    *LongPause  `json:"long_pause,omitempty"`
}

// A cut marker tells of a cut whose sender has not seen the guest run
// again after it. Its sender gone, the guard resumes the guest within
// milliseconds, so a marker older than deadCut means it could not; a live
// sender's cut gives up after its timeout (1 min), so one older than
// stuckCut is stuck.
const (
	deadCut  = 2 * time.Second
	stuckCut = 90 * time.Second
)

// GuestReport gathers a live VM's pause reports: the sender's status st,
// the guard's record in the state directory dir and a cut marker left
// unfinished in the live work directory. It is nil if there is nothing to
// tell.
func GuestReport(dir, workDir string, st *Status, now time.Time) (*Guest, error) {
	rec, err := ReadGuardRecord(dir)
	g := &Guest{GuardResumes: rec.Resumes}
	if n := len(rec.Events); n > 0 {
		g.LastGuard = &rec.Events[n-1]
		if g.LastGuard.Error != "" && g.LastGuard.At.After(st.Updated) {
			g.Paused, g.Since = true, g.LastGuard.At
			g.Detail = "a sender died during a cut and the guard could not resume the guest: " + g.LastGuard.Error
		}
	}
	if began, pid, ok := livecut.CutInFlight(workDir); ok {
		// Signal 0 only checks that the process exists.
		alive := pid > 0 && syscall.Kill(pid, 0) == nil
		switch age := now.Sub(began); {
		case !alive && age > deadCut:
			g.Paused, g.Since = true, began
			g.Detail = fmt.Sprintf("sender pid %d died during the cut begun at %s, and the guest guard did not resume the guest (start drsync send, or resume it with QMP cont)",
				pid, began.UTC().Format(time.RFC3339))
		case alive && age > stuckCut:
			g.Paused, g.Since = true, began
			g.Detail = fmt.Sprintf("the cut begun at %s by sender pid %d has not finished", began.UTC().Format(time.RFC3339), pid)
		}
	}
	if p := st.GuestPaused; p != nil {
		g.Paused, g.Since, g.Detail = true, p.Since, p.Detail
	}
	g.LongPause = st.LongPause
	if !g.Paused && g.LastGuard == nil && g.LongPause == nil {
		return nil, err
	}
	return g, err
}

// PauseSummary is the guest pause per epoch over the recent epochs.
type PauseSummary struct {
	LastMS   float64 `json:"last_ms"`
	MedianMS float64 `json:"median_ms"`
	MaxMS    float64 `json:"max_ms"`
	Epochs   int     `json:"epochs"`
}

// SummarizePauses summarises the pauses ms, oldest first.
func SummarizePauses(ms []float64) *PauseSummary {
	if len(ms) == 0 {
		return nil
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &PauseSummary{LastMS: ms[len(ms)-1], MedianMS: med, MaxMS: s[len(s)-1], Epochs: len(s)}
}
