package lifecycle

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/datadriven"
)

// TestScripts runs testdata/*.txt: each line an input, its output the
// decision and what status says.
//
//	event TYPE [DETAIL] at=HH:MM:SS [host=H]   a libvirt event
//	observe STATE [REASON] [migrating] at=...   what the sender found
//	probe at=...                               is an observation due?
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/*.txt", func(t *testing.T, path string) {
		var m Machine
		datadriven.RunFile(t, path, func(line string) string {
			out, err := run(&m, line)
			if err != nil {
				return "error: " + err.Error()
			}
			return out
		})
	})
}

var types = map[string]Type{
	"defined": Defined, "undefined": Undefined, "started": Started, "suspended": Suspended,
	"resumed": Resumed, "stopped": Stopped, "shutdown": Shutdown, "pmsuspended": PMSuspended,
	"crashed": Crashed, "iteration": MigrationIteration, "job-completed": JobCompleted,
}

var details = map[Type]map[string]int{
	Stopped: {"shutdown": StoppedShutdown, "destroyed": StoppedDestroyed, "crashed": StoppedCrashed, "migrated": StoppedMigrated,
		"saved": StoppedSaved, "failed": StoppedFailed, "from-snapshot": StoppedFromSnapshot},
	Started:   {"booted": StartedBooted, "migrated": StartedMigrated, "restored": StartedRestored, "from-snapshot": StartedFromSnapshot, "wakeup": StartedWakeup},
	Suspended: {"paused": 0, "migrated": SuspendedMigrated, "ioerror": 2, "postcopy": SuspendedPostcopy, "postcopy-failed": SuspendedPostcopyFailed},
	Resumed:   {"unpaused": 0, "migrated": ResumedMigrated, "postcopy": 3, "postcopy-failed": ResumedPostcopyFailed},
}

var states = map[string]DomState{
	"absent": Absent, "running": Running, "paused": Paused, "shutting-off": ShuttingOff, "shutoff": ShutOff, "crashed": CrashedDom,
}

var reasons = map[string]int{
	"shutdown": ShutoffShutdown, "destroyed": ShutoffDestroyed, "crashed": ShutoffCrashed, "migrated": ShutoffMigrated,
	"saved": ShutoffSaved, "failed": ShutoffFailed,
}

var day = time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)

func run(m *Machine, line string) (string, error) {
	f := strings.Fields(line)
	var ev Event
	var words []string
	for _, w := range f[1:] {
		switch {
		case strings.HasPrefix(w, "at="):
			t, err := time.Parse("15:04:05", strings.TrimPrefix(w, "at="))
			if err != nil {
				return "", err
			}
			ev.At = day.Add(t.Sub(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)))
		case strings.HasPrefix(w, "host="):
			ev.Host = strings.TrimPrefix(w, "host=")
		case w == "migrating":
			ev.MigratingOut = true
		default:
			words = append(words, w)
		}
	}
	if ev.At.IsZero() {
		return "", fmt.Errorf("no at=")
	}
	switch f[0] {
	case "probe":
		return fmt.Sprintf("due=%v", m.ProbeDue(ev.At)), nil
	case "event":
		if len(words) == 0 {
			return "", fmt.Errorf("no event type")
		}
		typ, ok := types[words[0]]
		if !ok {
			return "", fmt.Errorf("unknown event %q", words[0])
		}
		ev.Type = typ
		if len(words) > 1 {
			d, ok := details[typ][words[1]]
			if !ok {
				return "", fmt.Errorf("unknown detail %q of %s", words[1], words[0])
			}
			ev.Detail = d
		}
	case "observe":
		if len(words) == 0 {
			return "", fmt.Errorf("no state")
		}
		st, ok := states[words[0]]
		if !ok {
			return "", fmt.Errorf("unknown state %q", words[0])
		}
		ev.Type, ev.State = Observed, st
		if len(words) > 1 {
			r, ok := reasons[words[1]]
			if !ok {
				return "", fmt.Errorf("unknown reason %q", words[1])
			}
			ev.Reason = r
		}
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	d := m.Step(ev)
	return fmt.Sprintf("%s %s changed=%v\nstatus: %s", d.State.Phase, d.Action, d.Changed, d.State.Describe()), nil
}
