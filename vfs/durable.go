package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
)

// WriteFileDurable replaces name with data, atomically and durably: data
// goes to name+".tmp" in the same directory, which is written, synced,
// given mode perm and closed, then renamed over name, and the directory
// is synced. Once it returns nil, name holds data even after power loss;
// whenever it fails, or the machine stops part way, name holds either its
// old contents or data, never a mix, and a failure before the rename
// removes the temporary file. Writers of one name must not run
// concurrently: they share the temporary file.
//
// The error names the step that failed. A failure to sync the directory
// comes after the rename: name already reads as data then, but may come
// back as the old file after power loss.
func WriteFileDurable(fsys FS, name string, data []byte, perm os.FileMode) error {
	return replaceFile(fsys, name, data, perm, true)
}

// WriteFileAtomic replaces name with data so that readers, and a
// process that dies part way, see the old contents or data, never a mix.
// Nothing is synced: after power loss name may hold either, or be gone.
// It is for marks that must outlive the writing process but not the host.
func WriteFileAtomic(fsys FS, name string, data []byte, perm os.FileMode) error {
	return replaceFile(fsys, name, data, perm, false)
}

// CreateFileDurable creates name holding data with mode perm, durably,
// and refuses (an error wrapping fs.ErrExist) when name exists: it is for
// files that must never be replaced, such as a private key. As with
// WriteFileDurable, after power loss at any step name is either absent
// or holds all of data. The existence check and the rename are not one
// operation, so creators of one name must not run concurrently.
func CreateFileDurable(fsys FS, name string, data []byte, perm os.FileMode) error {
	return writeFile(fsys, name, data, perm, true, true)
}

func replaceFile(fsys FS, name string, data []byte, perm os.FileMode, durable bool) error {
	return writeFile(fsys, name, data, perm, durable, false)
}

func writeFile(fsys FS, name string, data []byte, perm os.FileMode, durable, exclusive bool) error {
	exists := func() error {
		if _, err := fsys.Stat(name); err == nil {
			return fmt.Errorf("%s already exists: %w", name, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check for an existing file: %w", err)
		}
		return nil
	}
	if exclusive {
		if err := exists(); err != nil {
			return err
		}
	}
	tmp := name + ".tmp"
	f, err := fsys.Create(tmp)
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	step, err := fill(f, data, perm, durable)
	if cerr := f.Close(); err == nil && cerr != nil {
		step, err = "close temporary file", cerr
	}
	if err == nil && exclusive {
		if err = exists(); err != nil {
			fsys.Remove(tmp)
			return err
		}
	}
	if err == nil {
		step, err = "rename temporary file", fsys.Rename(tmp, name)
	}
	if err != nil {
		fsys.Remove(tmp)
		return fmt.Errorf("%s: %w", step, err)
	}
	if durable {
		if err := fsys.SyncDir(path.Dir(name)); err != nil {
			return fmt.Errorf("sync directory: %w", err)
		}
	}
	return nil
}

// fill writes the new contents into the temporary file f and returns the
// step that failed.
func fill(f File, data []byte, perm os.FileMode, durable bool) (string, error) {
	// The mode first: a secret never sits in a file others may read.
	if err := f.Chmod(perm); err != nil {
		return "set mode of temporary file", err
	}
	if _, err := f.Write(data); err != nil {
		return "write temporary file", err
	}
	if durable {
		if err := f.Sync(); err != nil {
			return "sync temporary file", err
		}
	}
	return "", nil
}

// MkdirAllDurable creates dir and its missing parents with mode perm and
// makes their entries durable by syncing dir and every directory above
// it: a directory that vanishes on power loss takes what was written into
// it with it.
func MkdirAllDurable(fsys FS, dir string, perm os.FileMode) error {
	if err := fsys.MkdirAll(dir, perm); err != nil {
		return err
	}
	for d := path.Clean(dir); ; d = path.Dir(d) {
		if err := fsys.SyncDir(d); err != nil {
			return err
		}
		if p := path.Dir(d); p == d || d == "." {
			return nil
		}
	}
}

// ReadFile returns the contents of name, at most limit bytes of it: the
// files it is for are small, and a longer one is damage that the
// caller's parser then rejects, not something to read into memory whole.
func ReadFile(fsys FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
