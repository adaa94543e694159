package migstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// Tests against a real QEMU 7.2: they skip when qemu-system-x86_64 is not
// installed. Guests run under TCG (KVM hangs on these machines) and need
// no kernel: SeaBIOS alone writes enough RAM to give PAGE records.

const (
	qemuBin  = "qemu-system-x86_64"
	blobAddr = 16 << 20
	blobSize = 2 << 20
)

// machineArgs are shared by source and destinations: a destination must
// have the same machine type, RAM size and devices as the source.
var machineArgs = []string{"-accel", "tcg", "-machine", "pc", "-m", "64",
	"-display", "none", "-nodefaults", "-vga", "std", "-no-user-config"}

type qemuVM struct {
	t      *testing.T
	qmp    *qmpConn
	stderr *hosttools.SyncBuffer
}

// startQEMU starts a VM with a QMP socket in dir and negotiates QMP.
func startQEMU(t *testing.T, dir, name string, extra ...string) *qemuVM {
	t.Helper()
	sock := filepath.Join(dir, name+".qmp")
	args := append(append([]string{}, machineArgs...), "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd := exec.Command(qemuBin, append(args, extra...)...)
	vm := &qemuVM{t: t, stderr: &hosttools.SyncBuffer{}}
	cmd.Stderr = vm.stderr
	cmd.Stdout = vm.stderr
	exited := hosttools.StartProcess(t, cmd)
	// Cleanups run last-in first-out: the QMP connection closes before
	// QEMU is killed.
	t.Cleanup(func() {
		if vm.qmp != nil {
			vm.qmp.c.Close()
		}
	})
	hosttools.WaitSocket(t, sock, exited, 10*time.Second, vm.stderr.String)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	vm.qmp = &qmpConn{c: c, dec: json.NewDecoder(c)}
	if err := vm.qmp.greeting(); err != nil {
		t.Fatalf("%s: QMP greeting: %v", name, err)
	}
	vm.do("qmp_capabilities", nil)
	return vm
}

// do runs a QMP command and fails the test on error.
func (vm *qemuVM) do(cmd string, args any) json.RawMessage {
	vm.t.Helper()
	ret, err := vm.qmp.do(cmd, args)
	if err != nil {
		vm.t.Fatalf("QMP %s: %v\nqemu stderr: %s", cmd, err, vm.stderr.String())
	}
	return ret
}

// waitMigration polls query-migrate until the migration completes and
// returns the final reply.
func (vm *qemuVM) waitMigration() map[string]any {
	vm.t.Helper()
	st, err := vm.pollMigration()
	if err != nil {
		vm.t.Fatal(err)
	}
	return st
}

func (vm *qemuVM) pollMigration() (map[string]any, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ret, err := vm.qmp.do("query-migrate", nil)
		if err != nil {
			return nil, fmt.Errorf("query-migrate: %w", err)
		}
		var st map[string]any
		if err := json.Unmarshal(ret, &st); err != nil {
			return nil, err
		}
		switch st["status"] {
		case "completed":
			return st, nil
		case "failed", "cancelled":
			return nil, fmt.Errorf("migration %v: %v\nqemu stderr: %s", st["status"], st, vm.stderr.String())
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("migration not completed in time: %v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (vm *qemuVM) status() string {
	vm.t.Helper()
	var st struct{ Status string }
	if err := json.Unmarshal(vm.do("query-status", nil), &st); err != nil {
		vm.t.Fatal(err)
	}
	return st.Status
}

// migrateOut migrates the (stopped) VM to a unix socket the test listens
// on and parses the stream as it arrives into a new Flat.
func (vm *qemuVM) migrateOut(dir string) (*Result, *Flat, int64) {
	vm.t.Helper()
	t := vm.t
	sock := filepath.Join(dir, "mig.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type parsed struct {
		res *Result
		n   int64
		err error
	}
	flat := NewFlat()
	t.Cleanup(func() { flat.Close() })
	done := make(chan parsed, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- parsed{err: err}
			return
		}
		defer c.Close()
		cr := &countingReader{r: c}
		res, err := Parse(cr, flat, Options{})
		if err == nil {
			// Parse stops at EOF; make sure nothing followed.
			var one [1]byte
			if n, _ := c.Read(one[:]); n != 0 {
				err = errors.New("bytes after the parsed stream")
			}
		}
		done <- parsed{res, cr.n, err}
	}()
	vm.do("migrate-set-parameters", map[string]any{"max-bandwidth": int64(10 << 30)})
	vm.do("migrate", map[string]any{"uri": "unix:" + sock})
	_, merr := vm.pollMigration()
	select {
	case p := <-done:
		// A parse error makes QEMU's side fail too: report the parse first.
		if p.err != nil {
			t.Fatalf("parsing QEMU's stream: %v (migration: %v)", p.err, merr)
		}
		if merr != nil {
			t.Fatal(merr)
		}
		return p.res, flat, p.n
	case <-time.After(10 * time.Second):
		t.Fatalf("stream parse did not finish (migration: %v)", merr)
	}
	return nil, nil, 0
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type qmpConn struct {
	c   net.Conn
	dec *json.Decoder
}

type qmpReply struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func (q *qmpConn) greeting() error {
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	var r qmpReply
	if err := q.dec.Decode(&r); err != nil {
		return err
	}
	if r.QMP == nil {
		return fmt.Errorf("no QMP greeting")
	}
	return nil
}

// do sends one command and returns its "return" value, skipping events.
func (q *qmpConn) do(cmd string, args any) (json.RawMessage, error) {
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		var r qmpReply
		if err := q.dec.Decode(&r); err != nil {
			return nil, err
		}
		switch {
		case r.Error != nil:
			return nil, fmt.Errorf("%s: %s", r.Error.Class, r.Error.Desc)
		case r.Return != nil:
			return r.Return, nil
		}
		// An event; keep reading.
	}
}

// TestQEMU migrates a real VM into Parse/Flat, then proves the output is
// loadable: a full stream from WriteStream into a fresh destination, and
// the bare skeleton into a destination whose RAM comes from -mem-path.
// Each destination is migrated out again to compare its RAM with the
// source's.
func TestQEMU(t *testing.T) {
	hosttools.Need(t, qemuBin)
	dir := hosttools.ShortTempDir(t, "migq")

	// Random data that the generic loader copies into guest RAM at reset:
	// known content for the parse to find, besides what SeaBIOS writes.
	blob := randBytes(1, blobSize)
	blobFile := filepath.Join(dir, "blob.bin")
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	src := startQEMU(t, dir, "src", "-S",
		"-device", fmt.Sprintf("loader,file=%s,addr=0x%x,force-raw=on", blobFile, blobAddr))
	// Let SeaBIOS run for a moment so RAM holds more data, then freeze it.
	src.do("cont", nil)
	time.Sleep(300 * time.Millisecond)
	src.do("stop", nil)
	res, flat, n := src.migrateOut(dir)

	if res.Stats.StreamBytes != n {
		t.Fatalf("parse consumed %d of %d stream bytes", res.Stats.StreamBytes, n)
	}
	pc := -1
	for i, b := range res.Blocks {
		t.Logf("block %d: %q length 0x%x, %d non-zero pages", i, b.ID, b.Length, flat.NonZero(i).Count())
		if b.ID == "pc.ram" {
			pc = i
		}
	}
	if pc < 0 || res.Blocks[pc].Length != 64<<20 {
		t.Fatalf("pc.ram missing or not 64 MiB: %+v", res.Blocks)
	}
	if !bytes.Equal(flat.Block(pc)[blobAddr:blobAddr+blobSize], blob) {
		t.Fatal("pc.ram does not hold the loader's data")
	}
	t.Logf("stream %d bytes: %+v; skeleton %d bytes", n, res.Stats, len(res.Skeleton))
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatalf("ParseSkeleton: %v", err)
	}
	t.Logf("machine %q, capabilities %q, RAM section %+v, device state %d bytes",
		sk.Machine, sk.Capabilities, sk.RAM, len(sk.DeviceState()))
	if len(sk.Blocks) != len(res.Blocks) {
		t.Fatalf("skeleton lists %d blocks, stream %d", len(sk.Blocks), len(res.Blocks))
	}

	t.Run("full", func(t *testing.T) {
		ram := make([]io.ReaderAt, len(sk.Blocks))
		for i := range ram {
			ram[i] = bytes.NewReader(flat.Block(i))
		}
		file := filepath.Join(dir, "full.mig")
		writeFile(t, file, func(w io.Writer) error { return WriteStream(w, sk, ram) })
		dst := startQEMU(t, dir, "full", "-incoming", "defer")
		dst.do("migrate-incoming", map[string]any{"uri": "exec:cat " + file})
		st := dst.waitMigration()
		t.Logf("destination after load: query-migrate %v, query-status %q", st["status"], dst.status())
		_, back, _ := dst.migrateOut(dir)
		for i, b := range sk.Blocks {
			if !bytes.Equal(back.Block(i), flat.Block(i)) {
				t.Errorf("block %q differs after a load of WriteStream's stream", b.ID)
			}
		}
	})

	t.Run("skeleton-mem-path", func(t *testing.T) {
		img := filepath.Join(dir, "pcram.img")
		if err := os.WriteFile(img, flat.Block(pc), 0o600); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "skel.mig")
		if err := os.WriteFile(file, res.Skeleton, 0o600); err != nil {
			t.Fatal(err)
		}
		dst := startQEMU(t, dir, "skel", "-mem-path", img, "-incoming", "defer")
		dst.do("migrate-incoming", map[string]any{"uri": "exec:cat " + file})
		st := dst.waitMigration()
		t.Logf("destination after skeleton load: query-migrate %v, query-status %q", st["status"], dst.status())
		back, bflat, _ := dst.migrateOut(dir)
		if back.Blocks[pc].ID != "pc.ram" || !bytes.Equal(bflat.Block(pc), flat.Block(pc)) {
			t.Error("pc.ram from -mem-path differs from the source's")
		}
	})
}

func writeFile(t *testing.T, path string, fn func(io.Writer) error) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := fn(f); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestQEMUConfiguration covers the optional configuration subsections on
// real streams: "configuration/capabilities" with x-ignore-shared (and the
// per-block GPA it adds) and "configuration/uuid" with validate-uuid. A
// destination with the same setup must accept the skeleton.
func TestQEMUConfiguration(t *testing.T) {
	hosttools.Need(t, qemuBin)
	dir := hosttools.ShortTempDir(t, "migc")
	const uuid = "6a3e6c2e-3b8f-4f55-9d7e-0c1f2a3b4c5d"
	wantUUID := []byte{0x6a, 0x3e, 0x6c, 0x2e, 0x3b, 0x8f, 0x4f, 0x55, 0x9d, 0x7e, 0x0c, 0x1f, 0x2a, 0x3b, 0x4c, 0x5d}
	ramFile := filepath.Join(dir, "ram0")
	if err := os.WriteFile(ramFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-uuid", uuid,
		"-object", "memory-backend-file,id=ram0,size=64M,mem-path=" + ramFile + ",share=on",
		"-machine", "memory-backend=ram0"}
	caps := map[string]any{"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": true},
		{"capability": "validate-uuid", "state": true},
	}}

	src := startQEMU(t, dir, "src", append([]string{"-S"}, args...)...)
	src.do("migrate-set-capabilities", caps)
	res, _, _ := src.migrateOut(dir)
	sk, err := ParseSkeleton(res.Skeleton)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capabilities %q, uuid %x", sk.Capabilities, sk.UUID)
	if !sk.IgnoreShared() || len(sk.Capabilities) != 1 || sk.Capabilities[0] != "x-ignore-shared" {
		t.Errorf("capabilities %q, want [x-ignore-shared]", sk.Capabilities)
	}
	if !bytes.Equal(sk.UUID, wantUUID) {
		t.Errorf("uuid %x, want %x", sk.UUID, wantUUID)
	}
	for _, b := range sk.Blocks {
		t.Logf("block %q length 0x%x GPA 0x%x", b.ID, b.Length, b.GPA)
		if !b.HasGPA {
			t.Errorf("block %q has no GPA", b.ID)
		}
		if b.ID == "ram0" && (b.GPA != 0 || b.Length != 64<<20) {
			t.Errorf("ram0 at GPA 0x%x length 0x%x", b.GPA, b.Length)
		}
	}
	if res.Stats.Pages+res.Stats.ZeroPages >= 64<<20/PageSize {
		t.Errorf("%d page records: ram0 should have been skipped", res.Stats.Pages+res.Stats.ZeroPages)
	}

	file := filepath.Join(dir, "skel.mig")
	if err := os.WriteFile(file, res.Skeleton, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := startQEMU(t, dir, "dst", append([]string{"-incoming", "defer"}, args...)...)
	dst.do("migrate-set-capabilities", caps)
	dst.do("migrate-incoming", map[string]any{"uri": "exec:cat " + file})
	st := dst.waitMigration()
	t.Logf("destination: query-migrate %v, query-status %q", st["status"], dst.status())
}
