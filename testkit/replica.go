package testkit

import (
	"bytes"
	"fmt"
	"io"
	"path"

	"github.com/drsync/drsync/replica"
	"github.com/drsync/drsync/vfs"
)

// ReplicaState reads a replica's committed epoch and every image's content,
// keyed "kind/name", plus the device state under "devstate".
func ReplicaState(fsys vfs.FS, dir string) (uint64, map[string][]byte, error) {
	f, err := fsys.Open(path.Join(dir, "MANIFEST"))
	if err != nil {
		return 0, nil, err
	}
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return 0, nil, err
	}
	m, err := replica.ParseManifest(b)
	if err != nil {
		return 0, nil, err
	}
	out := map[string][]byte{}
	read := func(name string, size int64) ([]byte, error) {
		f, err := fsys.Open(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		buf := make([]byte, size)
		if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
			return nil, err
		}
		return buf, nil
	}
	for _, t := range m.Targets {
		if out[t.Kind+"/"+t.Name], err = read(t.File, t.Size); err != nil {
			return 0, nil, err
		}
	}
	if m.DeviceState != nil {
		if out["devstate"], err = read(m.DeviceState.File, m.DeviceState.Size); err != nil {
			return 0, nil, err
		}
	}
	return m.Epoch, out, nil
}

// SourceState is the MemSource's content in ReplicaState's form.
func (m *MemSource) SourceState() map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]byte{}
	for _, t := range m.Targets {
		out[t.Kind.String()+"/"+t.Name] = bytes.Clone(t.Data)
	}
	if m.DeviceState != nil {
		out["devstate"] = bytes.Clone(m.DeviceState)
	}
	return out
}

// DiffStates describes how two states differ, "" if equal.
func DiffStates(want, got map[string][]byte) string {
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return fmt.Sprintf("%s missing", k)
		}
		if len(g) != len(w) {
			return fmt.Sprintf("%s: %d bytes, want %d", k, len(g), len(w))
		}
		for i := range w {
			if w[i] != g[i] {
				return fmt.Sprintf("%s: first difference at byte %d", k, i)
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("unexpected %s", k)
		}
	}
	return ""
}
