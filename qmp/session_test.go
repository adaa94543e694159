package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/hosttools"
)

// fakeQEMU serves QMP on a unix socket: a greeting, then one reply per
// command from handle, which may also write events before replying.
type fakeQEMU struct {
	path     string
	greeting string
	silent   bool // accept but never greet
	handle   func(cmd string, args json.RawMessage, w *json.Encoder) (reply any, errDesc string, hangup bool)
}

func (f *fakeQEMU) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(t, c)
		}
	}()
}

func (f *fakeQEMU) serve(t *testing.T, c net.Conn) {
	defer c.Close()
	if f.silent {
		time.Sleep(2 * time.Second)
		return
	}
	greet := f.greeting
	if greet == "" {
		greet = `{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":"Debian 1:7.2+dfsg-7"},"capabilities":["oob"]}}`
	}
	c.Write([]byte(greet + "\r\n"))
	enc := json.NewEncoder(c)
	// QMP requests are a JSON stream, not lines: go-qemu sends no newline.
	dec := json.NewDecoder(c)
	for {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		if string(req.Arguments) == "null" {
			enc.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}})
			continue
		}
		if req.Execute == "qmp_capabilities" {
			enc.Encode(map[string]any{"return": map[string]any{}})
			continue
		}
		reply, desc, hangup := f.handle(req.Execute, req.Arguments, enc)
		if hangup {
			return
		}
		if desc != "" {
			enc.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": desc}})
			continue
		}
		enc.Encode(map[string]any{"return": reply})
	}
}

func event(name string, data any) map[string]any {
	return map[string]any{"event": name, "data": data, "timestamp": map[string]any{"seconds": 1700000000, "microseconds": 250000}}
}

func TestDialErrors(t *testing.T) {
	dir := hosttools.ShortTempDir(t, "qmp")
	ctx := context.Background()

	_, err := qmp.Dial(ctx, filepath.Join(dir, "missing.sock"), qmp.Options{})
	if !errors.Is(err, qmp.ErrNoSocket) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing socket: %v", err)
	}

	// A socket file left by a QEMU that died: it exists, nothing listens.
	stale := filepath.Join(dir, "stale.sock")
	l, _ := net.Listen("unix", stale)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := qmp.Dial(ctx, stale, qmp.Options{}); !errors.Is(err, qmp.ErrNoSocket) {
		t.Errorf("stale socket: %v", err)
	}

	busy := &fakeQEMU{path: filepath.Join(dir, "busy.sock"), silent: true}
	busy.start(t)
	if _, err := qmp.Dial(ctx, busy.path, qmp.Options{GreetingTimeout: 200 * time.Millisecond}); !errors.Is(err, qmp.ErrBusy) {
		t.Errorf("busy socket: %v", err)
	}

	// Output QEMU had queued for the client before (an event emitted as
	// it left, a reply it never read) reaches the next one ahead of the
	// greeting; anything else there is not QMP.
	const greeting = `{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":""},"capabilities":[]}}`
	leftovers := &fakeQEMU{path: filepath.Join(dir, "leftovers.sock"), greeting: `{"timestamp":{"seconds":1,"microseconds":2},"event":"MIGRATION","data":{"status":"completed"}}` + "\r\n" + `{"return":{}}` + "\r\n" + greeting}
	leftovers.start(t)
	if s, err := qmp.Dial(ctx, leftovers.path, qmp.Options{}); err != nil {
		t.Errorf("greeting after an earlier client's leftovers: %v", err)
	} else {
		s.Close()
	}
	notQMP := &fakeQEMU{path: filepath.Join(dir, "notqmp.sock"), greeting: `{"hello":"world"}` + "\r\n" + greeting}
	notQMP.start(t)
	if _, err := qmp.Dial(ctx, notQMP.path, qmp.Options{}); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Errorf("not QMP: %v", err)
	}
	flood := &fakeQEMU{path: filepath.Join(dir, "flood.sock"), greeting: strings.Repeat(`{"return":{}}`+"\r\n", 100) + greeting}
	flood.start(t)
	if _, err := qmp.Dial(ctx, flood.path, qmp.Options{}); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Errorf("100 replies before the greeting: %v", err)
	}

	old := &fakeQEMU{path: filepath.Join(dir, "old.sock"), greeting: `{"QMP":{"version":{"qemu":{"micro":0,"minor":0,"major":6},"package":""},"capabilities":[]}}`}
	old.start(t)
	check := func(v qmp.Version) error {
		if v.Major != 7 || v.Minor != 2 {
			return errors.New("drives QEMU 7.2 only")
		}
		return nil
	}
	_, err = qmp.Dial(ctx, old.path, qmp.Options{CheckVersion: check})
	if !errors.Is(err, qmp.ErrUnsupportedVersion) || !strings.Contains(err.Error(), "6.0.0") {
		t.Errorf("old QEMU: %v", err)
	}
}

func TestExecuteAndEvents(t *testing.T) {
	dir := hosttools.ShortTempDir(t, "qmp")
	f := &fakeQEMU{path: filepath.Join(dir, "q.sock")}
	f.handle = func(cmd string, args json.RawMessage, w *json.Encoder) (any, string, bool) {
		switch cmd {
		case "query-status":
			return map[string]any{"status": "running", "running": true}, "", false
		case "stop":
			// Events interleaved with the reply must not block it.
			for range 50 {
				w.Encode(event("NOISE", nil))
			}
			w.Encode(event("STOP", nil))
			return map[string]any{}, "", false
		case "blockdev-del":
			return nil, "Failed to find node with node-name='x'", false
		case "quit":
			w.Encode(event("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"}))
			return nil, "", true
		}
		return nil, "The command " + cmd + " has not been found", false
	}
	f.start(t)
	ctx := context.Background()
	s, err := qmp.Dial(ctx, f.path, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Version().String(); got != "7.2.22" {
		t.Errorf("version %s", got)
	}
	var st struct{ Status string }
	if err := s.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	// A nil map is no arguments, not "arguments": null, which QEMU refuses.
	var noArgs map[string]any
	if err := s.Execute(ctx, "query-status", noArgs, &st); err != nil {
		t.Fatalf("query-status with a nil map: %v", err)
	}
	sub := s.Subscribe("STOP")
	if err := s.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := sub.Next(wctx)
	if err != nil || e.Name != "STOP" || e.At.Unix() != 1700000000 || e.At.Nanosecond() != 250000000 {
		t.Fatalf("STOP event: %+v %v", e, err)
	}
	err = s.Execute(ctx, "blockdev-del", map[string]string{"node-name": "x"}, nil)
	var ce *qmp.CommandError
	if !errors.As(err, &ce) || ce.Command != "blockdev-del" || !strings.Contains(ce.Desc, "Failed to find node") {
		t.Fatalf("command error: %v", err)
	}
	// The connection ending mid-command names QEMU's shutdown reason.
	err = s.Execute(ctx, "quit", nil, nil)
	if !errors.Is(err, qmp.ErrDisconnected) || !strings.Contains(err.Error(), "host-qmp-quit") {
		t.Fatalf("quit: %v", err)
	}
	if _, err := sub.Next(wctx); !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("subscription after disconnect: %v", err)
	}
	if err := s.Execute(ctx, "query-status", nil, &st); !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("after disconnect: %v", err)
	}
}

func TestExecuteContext(t *testing.T) {
	dir := hosttools.ShortTempDir(t, "qmp")
	release := make(chan struct{})
	f := &fakeQEMU{path: filepath.Join(dir, "q.sock")}
	f.handle = func(cmd string, _ json.RawMessage, _ *json.Encoder) (any, string, bool) {
		if cmd == "slow" {
			<-release
		}
		return map[string]any{}, "", false
	}
	f.start(t)
	s, err := qmp.Dial(context.Background(), f.path, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow command: %v", err)
	}
	close(release)
	// The abandoned reply is consumed by its own call; the next command
	// gets its own reply.
	var st map[string]any
	if err := s.Execute(context.Background(), "fast", nil, &st); err != nil {
		t.Fatal(err)
	}
}

// TestRealQEMU drives a real QEMU: version, a command, STOP and RESUME
// events, and the connection ending when QEMU is killed.
func TestRealQEMU(t *testing.T) {
	hosttools.Need(t, "qemu-system-x86_64")
	dir := hosttools.ShortTempDir(t, "qmp")
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "32", "-display", "none", "-nodefaults",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var s *qmp.Session
	var err error
	for {
		if s, err = qmp.Dial(ctx, sock, qmp.Options{}); err == nil || !errors.Is(err, qmp.ErrNoSocket) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Version().Major < 7 {
		t.Fatalf("version %v", s.Version())
	}
	sub := s.Subscribe("STOP", "RESUME")
	for _, c := range []string{"stop", "cont"} {
		if err := s.Execute(ctx, c, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"STOP", "RESUME"} {
		e, err := sub.Next(ctx)
		if err != nil || e.Name != want || time.Since(e.At) > time.Minute {
			t.Fatalf("want %s: %+v %v", want, e, err)
		}
	}
	err = s.Execute(ctx, "no-such-command", nil, nil)
	var ce *qmp.CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("unknown command: %v", err)
	}
	cmd.Process.Kill()
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("session did not notice QEMU's death")
	}
	if err := s.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("after kill: %v", err)
	}
}
