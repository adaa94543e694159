// Package jsonfile reads and atomically replaces the small JSON files that
// drsync's daemons keep for people and scripts: status and guard records.
package jsonfile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/drsync/drsync/vfs"
)

// Read decodes the JSON file at path into v.
func Read(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// WriteAtomic replaces path with v's JSON encoding: readers see the old
// file or the new one, never a mix, and the new one survives a crash.
func WriteAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := vfs.Default.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	// Readable by the owner's group, for monitoring.
	if err := vfs.WriteFileDurable(vfs.Default, path, b, 0o640); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
