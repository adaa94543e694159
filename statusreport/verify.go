package statusreport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/internal/units"
	"github.com/drsync/drsync/replica"
)

// lockPoll is how often Verify retries a replica locked by an epoch being
// applied.
const lockPoll = 250 * time.Millisecond

// ErrNotReplica is a directory that holds no replica.
var ErrNotReplica = errors.New("not a replica directory")

// Verify checks vm's replica in store, retrying for up to wait while it is
// locked; for a replica.DirStore vm is "" (the VM its manifest names). A
// replica where nothing is committed yet is trivially exactly its epoch 0.
func Verify(ctx context.Context, store replica.Store, vm string, wait time.Duration) (*replica.Report, error) {
	where := store.Where(vm)
	// Checked first so that verify never leaves a lock behind where there
	// is no replica (a lock file in a directory, a lock image in a pool).
	if !present(store, vm) {
		return nil, fmt.Errorf("%s is %w (no manifest, no lock); give an existing replica", where, ErrNotReplica)
	}
	deadline := time.Now().Add(wait)
	for {
		rep, err := store.Verify(vm)
		if err == nil {
			return rep, nil
		}
		left := time.Until(deadline)
		if !errors.Is(err, replica.ErrLocked) {
			if _, merr := store.Manifest(vm); errors.Is(merr, fs.ErrNotExist) && !errors.Is(err, replica.ErrStorage) {
				return emptyReport(store, vm), nil
			}
			return nil, fmt.Errorf("verify %s: %w", where, err)
		}
		if left <= 0 {
			return nil, fmt.Errorf("%w; the replica stayed in use for %s: retry later or raise --wait", err, wait)
		}
		if agent.SleepCtx(ctx, min(lockPoll, left)) != nil {
			return nil, err
		}
	}
}

// stagedStore is a store that tells whether a replica is there and has an
// epoch staged without taking its lock (replica.FileStore).
type stagedStore interface {
	Present(vm string) (present, staged bool)
}

// present reports whether store holds a replica of vm (set up by a
// receiver, committed or not).
func present(store replica.Store, vm string) bool {
	if s, ok := store.(stagedStore); ok {
		p, _ := s.Present(vm)
		return p
	}
	vms, err := store.VMs()
	if err != nil {
		return true // let Verify say what is wrong with the store
	}
	return slices.Contains(vms, vm)
}

// emptyReport describes a replica the receiver has set up but where no
// epoch is committed yet.
func emptyReport(store replica.Store, vm string) *replica.Report {
	rep := &replica.Report{VM: vm}
	if vm == "" {
		rep.VM = filepath.Base(store.Where(""))
	}
	if s, ok := store.(stagedStore); ok {
		if _, staged := s.Present(vm); staged {
			rep.Staged = "epoch 1 is being staged (not committed)"
		}
	}
	return rep
}

// WriteVerify prints rep, the report of the replica at where, for people.
func WriteVerify(w io.Writer, where string, rep *replica.Report) {
	fmt.Fprintf(w, "Replica %s: VM %s, epoch %d\n", where, rep.VM, rep.Epoch)
	if rep.Epoch == 0 && len(rep.Targets) == 0 {
		if rep.Staged != "" {
			fmt.Fprintf(w, "  journal  NOTE  %s\n", rep.Staged)
		}
		fmt.Fprintln(w, "Result: OK, nothing committed yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range rep.Targets {
		if t.OK {
			fmt.Fprintf(tw, "  %s %s\tOK\t%s, digest %016x\n", t.Kind, t.Name, units.FormatBytes(uint64(t.Size)), t.Digest)
			continue
		}
		detail := "see problems below"
		if t.BadCount > 0 {
			detail = fmt.Sprintf("%d block(s) differ, first %s", t.BadCount, joinInts(t.BadBlocks))
		}
		fmt.Fprintf(tw, "  %s %s\tMISMATCH\t%s\n", t.Kind, t.Name, detail)
	}
	if d := rep.DeviceState; d != nil {
		state := "MISMATCH"
		if d.OK {
			state = "OK"
		}
		fmt.Fprintf(tw, "  device state\t%s\t%s\n", state, d.File)
	} else {
		fmt.Fprintf(tw, "  device state\t-\tnone in this epoch\n")
	}
	if rep.Staged != "" {
		fmt.Fprintf(tw, "  journal\tNOTE\t%s\n", rep.Staged)
	}
	tw.Flush()
	if rep.OK() {
		fmt.Fprintln(w, "Result: OK, the replica is exactly its committed epoch")
		return
	}
	fmt.Fprintln(w, "Problems:")
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
	fmt.Fprintf(w, "Result: %d problem(s)\n", len(rep.Problems))
}

// VerifyView is the JSON form of a verify run ("drsync verify --json").
type VerifyView struct {
	Replica     string       `json:"replica"`
	OK          bool         `json:"ok"`
	Error       string       `json:"error,omitempty"`
	VM          string       `json:"vm,omitempty"`
	Epoch       uint64       `json:"epoch"`
	Targets     []TargetView `json:"targets,omitempty"`
	DeviceState *DeviceView  `json:"device_state,omitempty"`
	Staged      string       `json:"staged,omitempty"`
	Problems    []string     `json:"problems,omitempty"`
}

// TargetView is one image of a VerifyView.
type TargetView struct {
	Kind     string  `json:"kind"`
	Name     string  `json:"name"`
	Size     int64   `json:"size"`
	Digest   string  `json:"digest"`
	OK       bool    `json:"ok"`
	BadCount int64   `json:"bad_blocks,omitempty"`
	FirstBad []int64 `json:"first_bad_blocks,omitempty"`
}

// DeviceView is the device state of a VerifyView.
type DeviceView struct {
	File string `json:"file"`
	OK   bool   `json:"ok"`
}

// NewVerifyView is the JSON form of a verify run of the replica at where
// that returned rep and err.
func NewVerifyView(where string, rep *replica.Report, err error) VerifyView {
	v := VerifyView{Replica: where}
	if err != nil {
		v.Error = err.Error()
	}
	if rep == nil {
		return v
	}
	v.OK = err == nil && rep.OK()
	v.VM, v.Epoch, v.Staged, v.Problems = rep.VM, rep.Epoch, rep.Staged, rep.Problems
	for _, t := range rep.Targets {
		v.Targets = append(v.Targets, TargetView{Kind: t.Kind, Name: t.Name, Size: t.Size, Digest: fmt.Sprintf("%016x", t.Digest), OK: t.OK, BadCount: t.BadCount, FirstBad: t.BadBlocks})
	}
	if d := rep.DeviceState; d != nil {
		v.DeviceState = &DeviceView{File: d.File, OK: d.OK}
	}
	return v
}

// WriteJSON prints v indented, as the commands print JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
