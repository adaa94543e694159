package replica

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// ErrCorrupt marks replica metadata (manifest, table, journal) that cannot
// be trusted. Callers branch on it: the replica needs operator attention.
var ErrCorrupt = errors.New("replica corrupt")

const manifestFormat = 1

// maxManifest bounds what ReadManifest accepts.
const maxManifest = 16 << 20

// Manifest is the durable description of a replica's committed epoch.
type Manifest struct {
	Format      int              `json:"format"`
	VM          string           `json:"vm"`
	Epoch       uint64           `json:"epoch"`
	Cut         time.Time        `json:"cut"`
	Applied     time.Time        `json:"applied"`
	StateID     uint64           `json:"state_id"`
	Targets     []TargetEntry    `json:"targets"`
	DeviceState *DeviceStateInfo `json:"device_state,omitempty"`
	// Group is the consistency-group tag of the epoch, nil for an epoch
	// of the VM on its own.
	Group *GroupTag `json:"group,omitempty"`
	// KeepPoints is the retention rule of the store that committed the
	// epoch (the receiver's keep_points), so that another opener finishing
	// an interrupted apply keeps and prunes recovery points by it, not by
	// its own (KeepInherited). Absent in manifests of older versions.
	KeepPoints *int `json:"keep_points,omitempty"`
}

// GroupTag is a manifest's consistency-group tag. Its JSON names are the
// manifest's own, so that the file format does not follow Go field names:
//
//	"group": {"group": "shop", "cut": 12, "members": ["app-1", "db"]}
type GroupTag struct{ vmspec.GroupCut }

type groupTagJSON struct {
	Group   string   `json:"group"`
	Cut     uint64   `json:"cut"`
	Members []string `json:"members"`
}

// MarshalJSON implements json.Marshaler.
func (g GroupTag) MarshalJSON() ([]byte, error) {
	return json.Marshal(groupTagJSON{g.Group, g.Cut, g.Members})
}

// UnmarshalJSON implements json.Unmarshaler, refusing unknown fields as
// the rest of the manifest does.
func (g *GroupTag) UnmarshalJSON(b []byte) error {
	var j groupTagJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	g.GroupCut = vmspec.GroupCut{Group: j.Group, Cut: j.Cut, Members: j.Members}
	return nil
}

// Tag is the epoch's group tag as the wire carries it, nil if none.
func (m *Manifest) Tag() *vmspec.GroupCut {
	if m.Group == nil {
		return nil
	}
	return &m.Group.GroupCut
}

// TargetEntry is one disk or RAM block of the replica.
type TargetEntry struct {
	Kind      string `json:"kind"` // "disk", "ram" or "blob"
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	File      string `json:"file"`  // image, relative to the replica directory
	Table     string `json:"table"` // block hash table, likewise
	Digest    uint64 `json:"digest"`
	// TableBase and TablePatch are for a store that writes a target's
	// table whole now and then and, in between, only the entries changed
	// since (rbdstore): the table is the whole one written at epoch
	// TableBase with the blockhash.Patch written at epoch TablePatch laid
	// over it (0: no patch). TableBase 0 is the whole table written at the
	// manifest's epoch, which is all the file store, updating its table
	// file in place, ever records.
	TableBase  uint64 `json:"table_base,omitempty"`
	TablePatch uint64 `json:"table_patch,omitempty"`
}

// DeviceStateInfo names the epoch's opaque device-state blob.
type DeviceStateInfo struct {
	File string `json:"file"`
	Size int64  `json:"size"`
	Hash uint64 `json:"hash"`
}

func kindName(k vmspec.TargetKind) string { return k.String() }

func kindOf(s string) vmspec.TargetKind {
	switch s {
	case "ram":
		return vmspec.KindRAM
	case "blob":
		return vmspec.KindBlob
	}
	return vmspec.KindDisk
}

// Find returns the entry for (kind, name), or nil.
func (m *Manifest) Find(kind vmspec.TargetKind, name string) *TargetEntry {
	for i := range m.Targets {
		if m.Targets[i].Kind == kindName(kind) && m.Targets[i].Name == name {
			return &m.Targets[i]
		}
	}
	return nil
}

// Disk returns the entry of the disk name, or nil.
func (m *Manifest) Disk(name string) *TargetEntry { return m.Find(vmspec.KindDisk, name) }

// RAM returns the entry of the RAM block name, or nil.
func (m *Manifest) RAM(name string) *TargetEntry { return m.Find(vmspec.KindRAM, name) }

// TargetKind is the entry's kind as the wire names it.
func (t *TargetEntry) TargetKind() vmspec.TargetKind { return kindOf(t.Kind) }

// ComputeStateID derives the manifest's state identity from its targets.
func (m *Manifest) ComputeStateID() uint64 {
	ts := make([]blockhash.TargetState, len(m.Targets))
	for i, t := range m.Targets {
		ts[i] = blockhash.TargetState{Kind: uint8(kindOf(t.Kind)), Name: t.Name, Size: t.Size, BlockSize: t.BlockSize, Digest: t.Digest}
	}
	return blockhash.StateID(m.Epoch, ts)
}

// Marshal encodes the manifest as indented JSON followed by a trailer line
// "xxh64 <hex>" over the JSON bytes, so a torn or edited manifest is caught.
func (m *Manifest) Marshal() ([]byte, error) {
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	return fmt.Appendf(body, "xxh64 %016x\n", xxhash.Sum64(body)), nil
}

// ParseManifest decodes and validates a manifest file.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifest {
		return nil, fmt.Errorf("manifest is %d bytes: %w", len(b), ErrCorrupt)
	}
	i := bytes.LastIndex(bytes.TrimRight(b, "\n"), []byte("\nxxh64 "))
	if i < 0 {
		return nil, fmt.Errorf("manifest has no checksum trailer: %w", ErrCorrupt)
	}
	body, trailer := b[:i+1], strings.TrimSpace(string(b[i+1:]))
	sum, err := strconv.ParseUint(strings.TrimPrefix(trailer, "xxh64 "), 16, 64)
	if err != nil || !strings.HasPrefix(trailer, "xxh64 ") {
		return nil, fmt.Errorf("manifest checksum trailer %q: %w", trailer, ErrCorrupt)
	}
	if got := xxhash.Sum64(body); got != sum {
		return nil, fmt.Errorf("manifest checksum %016x, want %016x: %w", got, sum, ErrCorrupt)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w (%w)", err, ErrCorrupt)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w (%w)", err, ErrCorrupt)
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.Format != manifestFormat {
		return fmt.Errorf("unsupported format %d", m.Format)
	}
	if err := vmspec.ValidVMName(m.VM); err != nil {
		return err
	}
	if len(m.Targets) > wire.MaxTargets {
		return fmt.Errorf("%d targets", len(m.Targets))
	}
	if m.KeepPoints != nil && *m.KeepPoints < 0 {
		return fmt.Errorf("keep_points %d", *m.KeepPoints)
	}
	if m.Group != nil {
		if err := m.Group.Validate(m.VM); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	files := map[string]bool{}
	for _, t := range m.Targets {
		if kindOf(t.Kind).String() != t.Kind { // disk, ram or blob
			return fmt.Errorf("target %q: kind %q", t.Name, t.Kind)
		}
		if err := vmspec.ValidTargetName(t.Name); err != nil {
			return err
		}
		if seen[t.Kind+"/"+t.Name] {
			return fmt.Errorf("target %s %q listed twice", t.Kind, t.Name)
		}
		seen[t.Kind+"/"+t.Name] = true
		if t.Size <= 0 || t.BlockSize < 512 || t.BlockSize > 4<<20 || t.BlockSize&(t.BlockSize-1) != 0 {
			return fmt.Errorf("target %q: size %d block size %d", t.Name, t.Size, t.BlockSize)
		}
		if t.TableBase > m.Epoch || t.TablePatch > m.Epoch || (t.TablePatch != 0 && (t.TableBase == 0 || t.TablePatch <= t.TableBase)) {
			return fmt.Errorf("target %q: table written at epochs %d and %d, manifest at %d", t.Name, t.TableBase, t.TablePatch, m.Epoch)
		}
		for _, f := range []string{t.File, t.Table} {
			if !safeFileName(f) || files[f] {
				return fmt.Errorf("target %q: file name %q", t.Name, f)
			}
			files[f] = true
		}
	}
	if d := m.DeviceState; d != nil && (!safeFileName(d.File) || d.Size < 0) {
		return fmt.Errorf("device state file %q", d.File)
	}
	if m.Epoch > 0 && m.StateID != m.ComputeStateID() {
		return fmt.Errorf("state id %016x does not match targets", m.StateID)
	}
	return nil
}

// safeFileName accepts the names the replica itself generates: no path
// separators, no dot files, so a tampered manifest cannot point outside the
// replica directory.
func safeFileName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
