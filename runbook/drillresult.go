package runbook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/drsync/drsync/vfs"
)

// DrillResultFile, in <storage dir>/<vm>/, is the outcome of the VM's last
// failover drill: "drsync failover --drill" writes it, the receiver exports
// it as metrics, so that a drill that failed raises an alert on the DR site.
const DrillResultFile = "DRILL.json"

// DrillResult is the content of DrillResultFile.
type DrillResult struct {
	VM      string    `json:"vm"`
	Runbook string    `json:"runbook"`
	OK      bool      `json:"ok"`
	At      time.Time `json:"at"`
	Epoch   uint64    `json:"epoch,omitempty"` // the epoch the drill's copy ran from
	Detail  string    `json:"detail,omitempty"`
	// LastSuccess is when a drill of this VM last passed, carried over
	// from the previous file when this one failed.
	LastSuccess time.Time `json:"last_success,omitzero"`
}

// DrillOutcomes says, per VM of a drill that ended with runErr, whether its
// part passed: its copy started and every one of its checks passed. A VM
// the drill did not reach failed too: the drill did not show it can come up.
func DrillOutcomes(rb *Runbook, log *Log, runErr error, at time.Time) []DrillResult {
	steps := rb.Steps()
	var out []DrillResult
	for _, v := range rb.VMs {
		r := DrillResult{VM: v.Name, Runbook: rb.Name, At: at.UTC(), OK: true}
		for _, s := range steps {
			if s.VM != v.Name {
				continue
			}
			rec, done := log.Done(s.ID)
			if !done {
				r.OK = false
				r.Detail = fmt.Sprintf("step %s did not pass", s.ID)
				if runErr != nil {
					r.Detail += ": " + runErr.Error()
				}
				break
			}
			if s.Kind == StepStart {
				r.Epoch = rec.Epoch
			}
		}
		if r.OK {
			r.LastSuccess = r.At
			r.Detail = fmt.Sprintf("started from epoch %d; every check passed", r.Epoch)
		}
		out = append(out, r)
	}
	return out
}

// WriteDrillResults records each result in its VM's replica directory
// under dir, durably and atomically. A VM without a replica directory is
// skipped: the drill must not create one.
func WriteDrillResults(fsys vfs.FS, dir string, results []DrillResult) error {
	var errs []error
	for _, r := range results {
		rdir := filepath.Join(dir, r.VM)
		if _, err := fsys.Stat(rdir); err != nil {
			continue
		}
		path := filepath.Join(rdir, DrillResultFile)
		if !r.OK {
			if prev, err := ReadDrillResult(fsys, path); err == nil {
				r.LastSuccess = prev.LastSuccess
			}
		}
		if err := writeFileDurable(fsys, path, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeFileDurable replaces path with v as JSON: written to a temporary
// file, synced, renamed over path, and the rename synced.
func writeFileDurable(fsys vfs.FS, path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := vfs.WriteFileDurable(fsys, path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadDrillResult reads the drill result file at path.
func ReadDrillResult(fsys vfs.FS, path string) (DrillResult, error) {
	var r DrillResult
	f, err := fsys.Open(path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ReadDrillResults reads the drill result of every replica under dir, for
// the receiver's metrics. Unreadable files are left out.
func ReadDrillResults(fsys vfs.FS, dir string) map[string]DrillResult {
	out := map[string]DrillResult{}
	names, err := fsys.List(dir)
	if err != nil {
		return out
	}
	for _, vm := range names {
		r, err := ReadDrillResult(fsys, filepath.Join(dir, vm, DrillResultFile))
		if err != nil {
			continue // no drill yet (fs.ErrNotExist), or not a replica
		}
		out[vm] = r
	}
	return out
}
