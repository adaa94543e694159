package memfs

import (
	"errors"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drsync/drsync/vfs"
)

// ChunkSize is the granularity of file storage and of space accounting:
// every chunk that holds data or is reserved by Allocate counts as
// ChunkSize bytes against the capacity.
const ChunkSize = 64 << 10

// ErrCrashed is the cause of every error returned by an FS (and its open
// files) after Crash was called on it.
var ErrCrashed = errors.New("memfs: file system has crashed")

// FS is an in-memory vfs.FS. It is safe for concurrent use.
type FS struct {
	mu       sync.Mutex
	strict   bool
	crashed  bool
	root     *node
	capacity int64 // 0: unlimited
	used     int64 // bytes of chunks held by linked files
	// locks are the held locks (see Lock) and their holders' notes, by
	// file: like flock, a lock belongs to the file, not to its name.
	locks map[*node]*lock
}

var _ vfs.FS = (*FS)(nil)

// New returns an empty FS in which every change is durable at once: Crash
// keeps everything.
func New() *FS { return newFS(false) }

// NewStrict returns an empty FS that keeps only synced state across Crash:
// file contents as of the file's last Sync, directory entries as of the
// directory's last SyncDir.
func NewStrict() *FS { return newFS(true) }

func newFS(strict bool) *FS {
	return &FS{strict: strict, root: newDir(0o755), locks: map[*node]*lock{}}
}

type chunk [ChunkSize]byte

// content is a sparse file image. A missing key is a hole; a present key
// with a nil chunk is space reserved by Allocate that reads as zeros. Bytes
// past size are always zero, so growing a file exposes zeros.
type content struct {
	size   int64
	chunks map[int64]*chunk
}

func (c content) clone() content {
	chunks := maps.Clone(c.chunks)
	if chunks == nil {
		chunks = make(map[int64]*chunk)
	}
	return content{size: c.size, chunks: chunks}
}

type node struct {
	dir  bool
	mode os.FileMode

	// Files. In strict mode durable shares chunk pointers with cur; a chunk
	// referenced by both is copied before it is written (see writable).
	cur     content
	durable content

	// Directories. synced is the entry set as of the last SyncDir (strict
	// mode only).
	children map[string]*node
	synced   map[string]*node

	// linked is true while the node is reachable from the root, i.e. while
	// its chunks count against the capacity.
	linked bool
}

func newDir(perm os.FileMode) *node {
	return &node{
		dir:      true,
		mode:     os.ModeDir | perm.Perm(),
		children: make(map[string]*node),
		synced:   make(map[string]*node),
		linked:   true,
	}
}

func newFile() *node {
	return &node{
		mode:    0o600,
		cur:     content{chunks: make(map[int64]*chunk)},
		durable: content{chunks: make(map[int64]*chunk)},
		linked:  true,
	}
}

// SetCapacity limits the bytes of allocated chunks (see ChunkSize). Writes
// and Allocate calls that would need more fail with an error wrapping
// syscall.ENOSPC and change nothing: there are no short writes. A limit <= 0
// removes the limit.
func (m *FS) SetCapacity(bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.capacity = max(bytes, 0)
}

// Used returns the bytes of allocated chunks of all files reachable from the
// root, the quantity SetCapacity limits.
func (m *FS) Used() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used
}

// Crash simulates power loss: it returns a new FS holding only the durable
// state of m (everything, if m is not strict) and makes m and its open files
// fail every further operation with ErrCrashed. The new FS has the same mode
// and capacity as m.
func (m *FS) Crash() *FS {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crashed = true
	n := &FS{strict: m.strict, capacity: m.capacity, locks: map[*node]*lock{}}
	n.root = m.cloneDurable(m.root)
	n.used = usage(n.root)
	return n
}

// cloneDurable copies the durable state of the tree under dir. A node that
// is durable under two names (a rename whose source directory was not
// synced) becomes two independent files.
func (m *FS) cloneDurable(dir *node) *node {
	nd := newDir(dir.mode)
	entries := dir.children
	if m.strict {
		entries = dir.synced
	}
	for name, c := range entries {
		var nc *node
		if c.dir {
			nc = m.cloneDurable(c)
		} else {
			src := c.cur
			if m.strict {
				src = c.durable
			}
			nc = newFile()
			nc.mode = c.mode
			nc.cur = src.clone()
			nc.durable = src.clone()
		}
		nd.children[name] = nc
		nd.synced[name] = nc
	}
	return nd
}

func usage(n *node) int64 {
	if n.dir {
		var u int64
		for _, c := range n.children {
			u += usage(c)
		}
		return u
	}
	return int64(len(n.cur.chunks)) * ChunkSize
}

// unlink stops counting the space of n and everything below it.
func (m *FS) unlink(n *node) {
	if !n.linked {
		return
	}
	n.linked = false
	if n.dir {
		for _, c := range n.children {
			m.unlink(c)
		}
		return
	}
	m.used -= int64(len(n.cur.chunks)) * ChunkSize
}

// reserve accounts for k new chunks of n.
func (m *FS) reserve(n *node, k int64) error {
	if !n.linked || k == 0 {
		return nil
	}
	if m.capacity > 0 && m.used+k*ChunkSize > m.capacity {
		return syscall.ENOSPC
	}
	m.used += k * ChunkSize
	return nil
}

func (m *FS) release(n *node, k int64) {
	if n.linked {
		m.used -= k * ChunkSize
	}
}

func pathErr(op, name string, err error) error {
	return &os.PathError{Op: op, Path: name, Err: err}
}

// split turns name into path components below the root. Relative names are
// taken relative to the root.
func split(name string) []string {
	p := path.Clean("/" + name)
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

// walk returns the node at parts.
func (m *FS) walk(parts []string) (*node, error) {
	n := m.root
	for _, p := range parts {
		if !n.dir {
			return nil, syscall.ENOTDIR
		}
		c, ok := n.children[p]
		if !ok {
			return nil, syscall.ENOENT
		}
		n = c
	}
	return n, nil
}

// parent returns the directory holding name and the last path component.
// For the root, base is empty.
func (m *FS) parent(name string) (dir *node, base string, err error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", nil
	}
	dir, err = m.walk(parts[:len(parts)-1])
	if err != nil {
		return nil, "", err
	}
	if !dir.dir {
		return nil, "", syscall.ENOTDIR
	}
	return dir, parts[len(parts)-1], nil
}

func (m *FS) Create(name string) (vfs.File, error) {
	return m.open(name, true, true, true)
}

func (m *FS) Open(name string) (vfs.File, error) {
	return m.open(name, false, false, false)
}

func (m *FS) OpenReadWrite(name string) (vfs.File, error) {
	return m.open(name, true, true, false)
}

func (m *FS) open(name string, write, create, trunc bool) (vfs.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, pathErr("open", name, ErrCrashed)
	}
	dir, base, err := m.parent(name)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	var n *node
	if dir == nil {
		n = m.root
	} else if c, ok := dir.children[base]; ok {
		n = c
	} else if create {
		n = newFile()
		dir.children[base] = n
	} else {
		return nil, pathErr("open", name, syscall.ENOENT)
	}
	if n.dir && write {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	if trunc {
		m.truncate(n, 0)
	}
	return &file{fs: m, n: n, name: name, write: write}, nil
}

func (m *FS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return pathErr("remove", name, ErrCrashed)
	}
	dir, base, err := m.parent(name)
	if err != nil {
		return pathErr("remove", name, err)
	}
	if dir == nil {
		return pathErr("remove", name, syscall.EBUSY)
	}
	n, ok := dir.children[base]
	if !ok {
		return pathErr("remove", name, syscall.ENOENT)
	}
	if n.dir && len(n.children) > 0 {
		return pathErr("remove", name, syscall.ENOTEMPTY)
	}
	delete(dir.children, base)
	m.unlink(n)
	return nil
}

func (m *FS) RemoveAll(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return pathErr("removeall", name, ErrCrashed)
	}
	dir, base, err := m.parent(name)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return pathErr("removeall", name, err)
	}
	if dir == nil {
		return pathErr("removeall", name, syscall.EINVAL)
	}
	if n, ok := dir.children[base]; ok {
		delete(dir.children, base)
		m.unlink(n)
	}
	return nil
}

func (m *FS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	lerr := func(err error) error {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	if m.crashed {
		return lerr(ErrCrashed)
	}
	odir, obase, err := m.parent(oldname)
	if err != nil {
		return lerr(err)
	}
	ndir, nbase, err := m.parent(newname)
	if err != nil {
		return lerr(err)
	}
	if odir == nil || ndir == nil {
		return lerr(syscall.EBUSY)
	}
	n, ok := odir.children[obase]
	if !ok {
		return lerr(syscall.ENOENT)
	}
	if n.dir {
		// A directory cannot move below itself.
		op, np := split(oldname), split(newname)
		if len(np) > len(op) && slices.Equal(np[:len(op)], op) {
			return lerr(syscall.EINVAL)
		}
	}
	target, exists := ndir.children[nbase]
	if exists {
		switch {
		case target == n:
			return nil
		case target.dir && !n.dir:
			return lerr(syscall.EISDIR)
		case !target.dir && n.dir:
			return lerr(syscall.ENOTDIR)
		case target.dir && len(target.children) > 0:
			return lerr(syscall.ENOTEMPTY)
		}
		m.unlink(target)
	}
	delete(odir.children, obase)
	ndir.children[nbase] = n
	return nil
}

func (m *FS) MkdirAll(dir string, perm os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return pathErr("mkdir", dir, ErrCrashed)
	}
	n := m.root
	for _, p := range split(dir) {
		c, ok := n.children[p]
		if !ok {
			c = newDir(perm)
			n.children[p] = c
		} else if !c.dir {
			return pathErr("mkdir", dir, syscall.ENOTDIR)
		}
		n = c
	}
	return nil
}

func (m *FS) Stat(name string) (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, pathErr("stat", name, ErrCrashed)
	}
	n, err := m.walk(split(name))
	if err != nil {
		return nil, pathErr("stat", name, err)
	}
	return info(name, n), nil
}

func (m *FS) List(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, pathErr("open", dir, ErrCrashed)
	}
	n, err := m.walk(split(dir))
	if err != nil {
		return nil, pathErr("open", dir, err)
	}
	if !n.dir {
		return nil, pathErr("readdirent", dir, syscall.ENOTDIR)
	}
	return slices.Sorted(maps.Keys(n.children)), nil
}

func (m *FS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return pathErr("sync", dir, ErrCrashed)
	}
	n, err := m.walk(split(dir))
	if err != nil {
		return pathErr("open", dir, err)
	}
	if !n.dir {
		return pathErr("sync", dir, syscall.ENOTDIR)
	}
	m.syncDir(n)
	return nil
}

func (m *FS) syncDir(n *node) {
	if m.strict {
		n.synced = maps.Clone(n.children)
	}
}

func (m *FS) syncFile(n *node) {
	if m.strict {
		n.durable = n.cur.clone()
	}
}

// writable returns chunk idx of n for modification, copying it if the
// durable image still refers to it. The caller has reserved space for a
// chunk that did not exist.
func (m *FS) writable(n *node, idx int64) *chunk {
	c := n.cur.chunks[idx]
	if c != nil && n.durable.chunks[idx] != c {
		return c
	}
	nc := new(chunk)
	if c != nil {
		*nc = *c
	}
	n.cur.chunks[idx] = nc
	return nc
}

// missing counts the chunks in [first, last] that n does not have.
func missing(n *node, first, last int64) int64 {
	var k int64
	for idx := first; idx <= last; idx++ {
		if _, ok := n.cur.chunks[idx]; !ok {
			k++
		}
	}
	return k
}

func (m *FS) writeAt(n *node, p []byte, off int64) error {
	if off < 0 {
		return syscall.EINVAL
	}
	if len(p) == 0 {
		return nil
	}
	end := off + int64(len(p))
	if end < 0 {
		return syscall.EFBIG
	}
	first, last := off/ChunkSize, (end-1)/ChunkSize
	if err := m.reserve(n, missing(n, first, last)); err != nil {
		return err
	}
	for i := 0; i < len(p); {
		pos := off + int64(i)
		c := m.writable(n, pos/ChunkSize)
		i += copy(c[pos%ChunkSize:], p[i:])
	}
	n.cur.size = max(n.cur.size, end)
	return nil
}

func readAt(n *node, p []byte, off int64) int {
	if off >= n.cur.size {
		return 0
	}
	p = p[:min(int64(len(p)), n.cur.size-off)]
	for i := 0; i < len(p); {
		pos := off + int64(i)
		lo := pos % ChunkSize
		k := min(len(p)-i, int(ChunkSize-lo))
		if c := n.cur.chunks[pos/ChunkSize]; c != nil {
			copy(p[i:i+k], c[lo:])
		} else {
			clear(p[i : i+k])
		}
		i += k
	}
	return len(p)
}

// truncate sets the size of n. Shrinking frees whole chunks past the new
// end (reservations included, as ftruncate does) and zeroes the tail of the
// last one.
func (m *FS) truncate(n *node, size int64) {
	if size < n.cur.size || size == 0 {
		// Reservations beyond the old size also go, so scan the whole map.
		first := (size + ChunkSize - 1) / ChunkSize
		for idx := range n.cur.chunks {
			if idx >= first {
				delete(n.cur.chunks, idx)
				m.release(n, 1)
			}
		}
		if lo := size % ChunkSize; lo != 0 && n.cur.chunks[size/ChunkSize] != nil {
			clear(m.writable(n, size/ChunkSize)[lo:])
		}
	}
	n.cur.size = size
}

func (m *FS) allocate(n *node, off, length int64) error {
	if off < 0 || length <= 0 {
		return syscall.EINVAL
	}
	if off+length < 0 {
		return syscall.EFBIG
	}
	first, last := off/ChunkSize, (off+length-1)/ChunkSize
	if err := m.reserve(n, missing(n, first, last)); err != nil {
		return err
	}
	for idx := first; idx <= last; idx++ {
		if _, ok := n.cur.chunks[idx]; !ok {
			n.cur.chunks[idx] = nil
		}
	}
	return nil
}

func (m *FS) punchHole(n *node, off, length int64) error {
	if off < 0 || length <= 0 {
		return syscall.EINVAL
	}
	if off+length < 0 {
		return syscall.EFBIG
	}
	end := off + length
	zero := func(idx, lo, hi int64) {
		if lo == 0 && hi == ChunkSize {
			if _, ok := n.cur.chunks[idx]; ok {
				delete(n.cur.chunks, idx)
				m.release(n, 1)
			}
			return
		}
		if n.cur.chunks[idx] != nil {
			clear(m.writable(n, idx)[lo:hi])
		}
	}
	first, last := off/ChunkSize, (end-1)/ChunkSize
	if first == last {
		zero(first, off%ChunkSize, (end-1)%ChunkSize+1)
		return nil
	}
	zero(first, off%ChunkSize, ChunkSize)
	zero(last, 0, (end-1)%ChunkSize+1)
	// Holes may be huge compared to the data, so visit whichever is smaller:
	// the interior chunk range or the chunks present.
	if last-first-1 <= int64(len(n.cur.chunks)) {
		for idx := first + 1; idx < last; idx++ {
			zero(idx, 0, ChunkSize)
		}
	} else {
		for idx := range n.cur.chunks {
			if idx > first && idx < last {
				zero(idx, 0, ChunkSize)
			}
		}
	}
	return nil
}

type fileInfo struct {
	name string
	size int64
	mode os.FileMode
}

func info(name string, n *node) fileInfo {
	fi := fileInfo{name: path.Base(path.Clean("/" + name)), mode: n.mode}
	if !n.dir {
		fi.size = n.cur.size
	}
	return fi
}

func (fi fileInfo) Name() string       { return fi.name }
func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) Mode() os.FileMode  { return fi.mode }
func (fi fileInfo) ModTime() time.Time { return time.Time{} }
func (fi fileInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi fileInfo) Sys() any           { return nil }
