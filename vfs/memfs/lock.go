package memfs

import (
	"syscall"

	"github.com/drsync/drsync/vfs"
)

// lock is a held lock. Locks are process state: Crash drops them all,
// as power loss drops flocks.
type lock struct {
	fs   *FS
	n    *node
	note string
}

// Lock is FS.Lock with an in-memory lock table, so that every FS layered
// over this one excludes the others as flock would: two Lock calls on the
// same file conflict, whoever makes them.
func (m *FS) Lock(name, note string) (vfs.Locked, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, pathErr("open", name, ErrCrashed)
	}
	dir, base, err := m.parent(name)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if dir == nil {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	var n *node
	switch c, ok := dir.children[base]; {
	case ok && c.dir:
		return nil, pathErr("open", name, syscall.EISDIR)
	case ok:
		n = c
	default:
		n = newFile()
		n.mode = 0o640
		dir.children[base] = n
	}
	if held, ok := m.locks[n]; ok {
		return nil, &vfs.LockedError{Name: name, Note: held.note}
	}
	l := &lock{fs: m, n: n, note: note}
	m.locks[n] = l
	return l, nil
}

func (l *lock) Note(note string) error {
	l.fs.mu.Lock()
	defer l.fs.mu.Unlock()
	l.note = note
	return nil
}

func (l *lock) Unlock() error {
	l.fs.mu.Lock()
	defer l.fs.mu.Unlock()
	if l.fs.locks[l.n] == l {
		delete(l.fs.locks, l.n)
	}
	return nil
}
