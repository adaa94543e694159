package runbook

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Step outcomes in the run log.
const (
	StatusDone   = "done"
	StatusFailed = "failed"
)

// Record is one line of the run log.
type Record struct {
	Step   string    `json:"step"`
	Status string    `json:"status"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
	// Start steps: the VM's QEMU, what it resumed and how long it took.
	PID        int       `json:"pid,omitempty"`
	QMP        string    `json:"qmp,omitempty"`
	Epoch      uint64    `json:"epoch,omitempty"`
	Cut        time.Time `json:"cut,omitzero"`
	TakeoverMS float64   `json:"takeover_ms,omitempty"`
	// Boot: booted cold from the overlays of an earlier run (Epoch is
	// still the epoch they grew from).
	Boot bool `json:"boot,omitempty"`
}

// Log is a runbook's run log: what earlier runs finished, and where this
// run appends.
type Log struct {
	f    *os.File
	last map[string]Record // latest record per step
}

// OpenLog reads the run log at path (creating it) and opens it for
// appending. A torn last line (a run killed mid-write) is ignored.
func OpenLog(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("run log: %w", err)
	}
	l := &Log{f: f, last: map[string]Record{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil || r.Step == "" {
			continue
		}
		l.last[r.Step] = r
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("run log %s: %w", path, err)
	}
	// End a torn last line, so the next record starts on a line of its own.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			f.Write([]byte{'\n'})
		}
	}
	return l, nil
}

// Done returns the record of a step an earlier run finished.
func (l *Log) Done(step string) (Record, bool) {
	r, ok := l.last[step]
	return r, ok && r.Status == StatusDone
}

// Append writes r durably.
func (l *Log) Append(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("run log: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("run log: %w", err)
	}
	l.last[r.Step] = r
	return nil
}

// Close closes the log.
func (l *Log) Close() error { return l.f.Close() }
