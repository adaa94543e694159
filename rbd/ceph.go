//go:build ceph && cgo

package rbd

/*
#cgo LDFLAGS: -lrados -lrbd
#include <errno.h>
#include <stdlib.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
*/
import "C"

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"unsafe"
)

// Supported says whether this binary can reach a Ceph cluster.
const Supported = true

// Conn is a connection to a Ceph cluster as one cephx user.
type Conn struct {
	c C.rados_t
}

// Connect reads c.ConfFile, authenticates as client.c.Client and connects.
func Connect(c Config) (*Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	user := c.Client
	if user == "" {
		user = "admin"
	}
	cuser := C.CString(user)
	defer C.free(unsafe.Pointer(cuser))
	var cl C.rados_t
	if err := errnoErr("create cluster handle for", "client."+user, int(C.rados_create(&cl, cuser))); err != nil {
		return nil, err
	}
	fail := func(err error) (*Conn, error) { C.rados_shutdown(cl); return nil, err }
	var cconf *C.char
	if c.ConfFile != "" {
		cconf = C.CString(c.ConfFile)
		defer C.free(unsafe.Pointer(cconf))
	}
	if err := errnoErr("read configuration", c.ConfFile, int(C.rados_conf_read_file(cl, cconf))); err != nil {
		return fail(err)
	}
	if c.Keyring != "" {
		if err := confSet(cl, "keyring", c.Keyring); err != nil {
			return fail(err)
		}
	}
	// A hung cluster is an error after a while, not a hung receiver.
	for k, v := range map[string]string{"client_mount_timeout": "30", "rados_mon_op_timeout": "30"} {
		if err := confSet(cl, k, v); err != nil {
			return fail(err)
		}
	}
	if err := errnoErr("connect as", "client."+user, int(C.rados_connect(cl))); err != nil {
		return fail(err)
	}
	return &Conn{c: cl}, nil
}

func confSet(cl C.rados_t, k, v string) error {
	ck, cv := C.CString(k), C.CString(v)
	defer C.free(unsafe.Pointer(ck))
	defer C.free(unsafe.Pointer(cv))
	return errnoErr("set option", k, int(C.rados_conf_set(cl, ck, cv)))
}

// Close disconnects; pools and images opened through c must be closed
// first.
func (c *Conn) Close() {
	if c != nil && c.c != nil {
		C.rados_shutdown(c.c)
		c.c = nil
	}
}

// MonCommand sends a JSON command to the monitors and returns its output
// and status string.
func (c *Conn) MonCommand(cmd string) ([]byte, string, error) {
	ccmd := C.CString(cmd)
	defer C.free(unsafe.Pointer(ccmd))
	var out, outs *C.char
	var outLen, outsLen C.size_t
	cmds := (**C.char)(C.malloc(C.size_t(unsafe.Sizeof(ccmd))))
	defer C.free(unsafe.Pointer(cmds))
	*cmds = ccmd
	ret := C.rados_mon_command(c.c, cmds, 1, nil, 0, &out, &outLen, &outs, &outsLen)
	o := C.GoBytes(unsafe.Pointer(out), C.int(outLen))
	s := C.GoStringN(outs, C.int(outsLen))
	C.rados_buffer_free(out)
	C.rados_buffer_free(outs)
	if err := errnoErr("monitor command", cmd, int(ret)); err != nil {
		return o, s, fmt.Errorf("%w: %s", err, s)
	}
	return o, s, nil
}

// OpenPool opens an I/O context on pool.
func (c *Conn) OpenPool(pool string) (Pool, error) {
	cp := C.CString(pool)
	defer C.free(unsafe.Pointer(cp))
	var io C.rados_ioctx_t
	if err := errnoErr("open pool", pool, int(C.rados_ioctx_create(c.c, cp, &io))); err != nil {
		return nil, err
	}
	// A write to a full pool or one over its quota is sent anyway and
	// refused (ENOSPC, EDQUOT) rather than held until space appears:
	// a receiver must say its storage is full, not hang.
	C.rados_set_pool_full_try(io)
	return &pool_{io: io, name: pool}, nil
}

type pool_ struct {
	io   C.rados_ioctx_t
	name string
}

func (p *pool_) Name() string { return p.name }

func (p *pool_) Close() {
	if p.io != nil {
		C.rados_ioctx_destroy(p.io)
		p.io = nil
	}
}

func (p *pool_) CreateImage(name string, size uint64) error {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var order C.int
	return errnoErr("create image", p.name+"/"+name, int(C.rbd_create(p.io, cn, C.uint64_t(size), &order)))
}

func (p *pool_) RemoveImage(name string) error {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return errnoErr("remove image", p.name+"/"+name, int(C.rbd_remove(p.io, cn)))
}

func (p *pool_) ListImages() ([]string, error) {
	max := C.size_t(64)
	for {
		specs := make([]C.rbd_image_spec_t, max)
		ret := C.rbd_list2(p.io, &specs[0], &max)
		if ret == -C.ERANGE {
			continue
		}
		if err := errnoErr("list images of", p.name, int(ret)); err != nil {
			return nil, err
		}
		names := make([]string, 0, int(max))
		for i := range int(max) {
			names = append(names, C.GoString(specs[i].name))
		}
		C.rbd_image_spec_list_cleanup(&specs[0], max)
		return names, nil
	}
}

func (p *pool_) OpenImage(name, snap string) (Image, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var cs *C.char
	full := p.name + "/" + name
	if snap != "" {
		cs = C.CString(snap)
		defer C.free(unsafe.Pointer(cs))
		full += "@" + snap
	}
	var im C.rbd_image_t
	var ret C.int
	if snap != "" {
		ret = C.rbd_open_read_only(p.io, cn, &im, cs)
	} else {
		ret = C.rbd_open(p.io, cn, &im, nil)
	}
	if err := errnoErr("open image", full, int(ret)); err != nil {
		return nil, err
	}
	return &image{im: im, name: full}, nil
}

func (p *pool_) Clone(parent, snap, child string) error {
	cp, cs, cc := C.CString(parent), C.CString(snap), C.CString(child)
	defer C.free(unsafe.Pointer(cp))
	defer C.free(unsafe.Pointer(cs))
	defer C.free(unsafe.Pointer(cc))
	var order C.int
	// Layering (1) and exclusive-lock (4): a clone QEMU writes to.
	ret := C.rbd_clone(p.io, cp, cs, p.io, cc, C.RBD_FEATURE_LAYERING|C.RBD_FEATURE_EXCLUSIVE_LOCK, &order)
	return errnoErr("clone "+p.name+"/"+parent+"@"+snap+" to", child, int(ret))
}

func (p *pool_) WriteObject(oid string, data []byte) error {
	co := C.CString(oid)
	defer C.free(unsafe.Pointer(co))
	var ptr *C.char
	if len(data) > 0 {
		ptr = (*C.char)(unsafe.Pointer(&data[0]))
	}
	return errnoErr("write object", p.name+"/"+oid, int(C.rados_write_full(p.io, co, ptr, C.size_t(len(data)))))
}

func (p *pool_) ReadObject(oid string) ([]byte, error) {
	co := C.CString(oid)
	defer C.free(unsafe.Pointer(co))
	for {
		var size C.uint64_t
		var mtime C.time_t
		if err := errnoErr("stat object", p.name+"/"+oid, int(C.rados_stat(p.io, co, &size, &mtime))); err != nil {
			return nil, err
		}
		// One byte more than the size: a read that fills it saw the
		// object grow, and is done again.
		buf := make([]byte, int(size)+1)
		ret := C.rados_read(p.io, co, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), 0)
		if err := errnoErr("read object", p.name+"/"+oid, int(ret)); err != nil {
			return nil, err
		}
		if int(ret) < len(buf) {
			return buf[:ret], nil
		}
	}
}

func (p *pool_) RemoveObject(oid string) error {
	co := C.CString(oid)
	defer C.free(unsafe.Pointer(co))
	return errnoErr("remove object", p.name+"/"+oid, int(C.rados_remove(p.io, co)))
}

type image struct {
	mu   sync.Mutex // guards im against use after Close
	im   C.rbd_image_t
	name string
}

func (m *image) Name() string { return m.name }

var errClosed = &Error{Op: "use closed image", Errno: 9 /* EBADF */}

func (m *image) do(op string, f func(C.rbd_image_t) C.int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.im == nil {
		return errClosed
	}
	return errnoErr(op, m.name, int(f(m.im)))
}

func (m *image) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.im == nil {
		return nil
	}
	ret := C.rbd_close(m.im)
	m.im = nil
	return errnoErr("close image", m.name, int(ret))
}

func (m *image) Size() (uint64, error) {
	var s C.uint64_t
	err := m.do("get size of", func(im C.rbd_image_t) C.int { return C.rbd_get_size(im, &s) })
	return uint64(s), err
}

func (m *image) Resize(size uint64) error {
	return m.do("resize", func(im C.rbd_image_t) C.int { return C.rbd_resize(im, C.uint64_t(size)) })
}

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n C.ssize_t
	err := m.do("read", func(im C.rbd_image_t) C.int {
		n = C.rbd_read(im, C.uint64_t(off), C.size_t(len(p)), (*C.char)(unsafe.Pointer(&p[0])))
		return C.int(min(n, 0))
	})
	if err != nil {
		return 0, err
	}
	if int(n) < len(p) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (m *image) WriteAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n C.ssize_t
	err := m.do("write", func(im C.rbd_image_t) C.int {
		n = C.rbd_write(im, C.uint64_t(off), C.size_t(len(p)), (*C.char)(unsafe.Pointer(&p[0])))
		return C.int(min(n, 0))
	})
	if err != nil {
		return 0, err
	}
	if int(n) < len(p) {
		return int(n), fmt.Errorf("rbd: write %s: %d of %d bytes at %d", m.name, n, len(p), off)
	}
	return int(n), nil
}

func (m *image) WriteZeroes(off, n uint64) error {
	return m.do("write zeroes to", func(im C.rbd_image_t) C.int {
		return C.int(min(C.rbd_write_zeroes(im, C.uint64_t(off), C.size_t(n), 0, 0), 0))
	})
}

func (m *image) Flush() error {
	return m.do("flush", func(im C.rbd_image_t) C.int { return C.rbd_flush(im) })
}

func withName(name string, f func(*C.char) C.int) C.int {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return f(cn)
}

func (m *image) CreateSnap(name string) error {
	return m.do("create snapshot "+name+" of", func(im C.rbd_image_t) C.int {
		return withName(name, func(cn *C.char) C.int { return C.rbd_snap_create(im, cn) })
	})
}

func (m *image) RemoveSnap(name string) error {
	return m.do("remove snapshot "+name+" of", func(im C.rbd_image_t) C.int {
		return withName(name, func(cn *C.char) C.int { return C.rbd_snap_remove(im, cn) })
	})
}

func (m *image) ProtectSnap(name string) error {
	return m.do("protect snapshot "+name+" of", func(im C.rbd_image_t) C.int {
		return withName(name, func(cn *C.char) C.int { return C.rbd_snap_protect(im, cn) })
	})
}

func (m *image) UnprotectSnap(name string) error {
	return m.do("unprotect snapshot "+name+" of", func(im C.rbd_image_t) C.int {
		return withName(name, func(cn *C.char) C.int { return C.rbd_snap_unprotect(im, cn) })
	})
}

func (m *image) RollbackSnap(name string) error {
	return m.do("roll back to snapshot "+name+":", func(im C.rbd_image_t) C.int {
		return withName(name, func(cn *C.char) C.int { return C.rbd_snap_rollback(im, cn) })
	})
}

func (m *image) Snaps() ([]Snap, error) {
	var out []Snap
	err := m.do("list snapshots of", func(im C.rbd_image_t) C.int {
		max := C.int(16)
		for {
			infos := make([]C.rbd_snap_info_t, max+1)
			ret := C.rbd_snap_list(im, &infos[0], &max)
			if ret == -C.ERANGE {
				continue
			}
			if ret < 0 {
				return ret
			}
			for i := range int(ret) {
				out = append(out, Snap{ID: uint64(infos[i].id), Name: C.GoString(infos[i].name), Size: uint64(infos[i].size)})
			}
			C.rbd_snap_list_end(&infos[0])
			for i := range out {
				var prot C.int
				if ret := withName(out[i].Name, func(cn *C.char) C.int { return C.rbd_snap_is_protected(im, cn, &prot) }); ret < 0 {
					return ret
				}
				out[i].Protected = prot != 0
			}
			return 0
		}
	})
	return out, err
}

func (m *image) Acquire() error {
	return m.do("take the exclusive lock of", func(im C.rbd_image_t) C.int {
		return C.rbd_lock_acquire(im, C.RBD_LOCK_MODE_EXCLUSIVE)
	})
}

func (m *image) Release() error {
	return m.do("release the exclusive lock of", func(im C.rbd_image_t) C.int { return C.rbd_lock_release(im) })
}

func (m *image) Owners() ([]string, error) {
	var out []string
	err := m.do("list the lock owners of", func(im C.rbd_image_t) C.int {
		var mode C.rbd_lock_mode_t
		owners := make([]*C.char, 8)
		max := C.size_t(len(owners))
		ret := C.rbd_lock_get_owners(im, &mode, &owners[0], &max)
		if ret == -C.ENOENT {
			return 0 // nobody holds it
		}
		if ret < 0 {
			return ret
		}
		for i := range int(max) {
			out = append(out, C.GoString(owners[i]))
		}
		C.rbd_lock_get_owners_cleanup(&owners[0], max)
		return 0
	})
	return out, err
}

func (m *image) BreakLock(owner string) error {
	return m.do("break "+owner+"'s lock of", func(im C.rbd_image_t) C.int {
		return withName(owner, func(co *C.char) C.int { return C.rbd_lock_break(im, C.RBD_LOCK_MODE_EXCLUSIVE, co) })
	})
}

func (m *image) Metadata(key string) (string, error) {
	var v string
	err := m.do("read metadata "+key+" of", func(im C.rbd_image_t) C.int {
		return withName(key, func(ck *C.char) C.int {
			n := C.size_t(256)
			for {
				buf := make([]byte, n)
				ret := C.rbd_metadata_get(im, ck, (*C.char)(unsafe.Pointer(&buf[0])), &n)
				if ret == -C.ERANGE {
					continue
				}
				if ret == 0 {
					v = string(bytes.TrimRight(buf[:n], "\x00"))
				}
				return ret
			}
		})
	})
	return v, err
}

func (m *image) SetMetadata(key, value string) error {
	return m.do("set metadata "+key+" of", func(im C.rbd_image_t) C.int {
		return withName(key, func(ck *C.char) C.int {
			return withName(value, func(cv *C.char) C.int { return C.rbd_metadata_set(im, ck, cv) })
		})
	})
}
