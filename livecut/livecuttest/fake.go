// Package livecuttest provides a scripted QEMU for tests of livecut's cut
// sequence, and TestMonitor, the behaviours every livecut.Monitor must
// have.
//
// Fake models the part of QEMU 7.2 a cut touches: run state, migration
// status, block nodes with their dirty bitmaps, backup jobs, NBD exports.
// Its monitor answers the commands livecut issues from that model, records
// every command and event in a trace, refuses what QEMU refuses (an
// unknown command fails the test too), and acts on the side channels a cut
// needs: migrate to a unix socket connects there and writes a valid QEMU
// 7.2 migration stream of the fake guest's RAM, then emits STOP and
// MIGRATION completed; an NBD export serves the fleecing overlay through
// qemu-nbd. With x-ignore-shared on, the stream leaves the RAM out (it
// stands for a shared backend), and TrackRAM follows the guest's writes
// (WriteRAM) as dirtylog does. Faults make chosen commands fail, the
// migration fail, or QEMU exit or drop its connection at a chosen point.
// Expect makes it strict: it replays a script of expected commands (name
// and argument check) with their replies, errors and events, and fails
// the test on any other.
package livecuttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/migstream"
	"github.com/drsync/drsync/qmp"
)

// Node is a block node of the fake VM.
type Node struct {
	Name    string
	Size    int64
	Bitmaps []Bitmap
	// File is the qcow2 file a blockdev-add gave the node (a fleecing
	// overlay); the NBD export of the node serves it.
	File string
	// Inactive: a migration's completion inactivated the node and no cont
	// has activated it since; it refuses to be a backup job's target.
	Inactive bool
	// Threshold is the node's write threshold (block-set-write-threshold),
	// 0 for none.
	Threshold int64
}

// Bitmap is a dirty bitmap of a node.
type Bitmap struct {
	Name      string
	Recording bool
}

// Fault changes how the fake answers one command.
type Fault struct {
	Cmd string
	// Nth is the call of Cmd the fault hits (1 for the first); every call if 0.
	Nth int
	// Error makes QEMU refuse the command with this description.
	Error string
	// Exit ends QEMU instead of answering: with a SHUTDOWN event naming
	// this reason, or, for "killed", without any event.
	Exit string
	// Hangup drops the monitor connection instead of answering; QEMU
	// itself runs on.
	Hangup bool
	// During applies Exit or Hangup to a migrate after its reply, while
	// the stream flows, instead of to the command.
	During bool
	// MigrationFails makes a migrate end "failed" with this description
	// (QEMU resumes the guest it stopped) instead of completing.
	MigrationFails string
	// PauseFirst: someone else pauses the guest just before the command
	// (which then runs as usual, unless another field says otherwise).
	PauseFirst bool
	// DiskWriteFirst: the guest writes its disks just before the command,
	// so every backup job copies into its target, whose write threshold,
	// if set, fires (BLOCK_WRITE_THRESHOLD).
	DiskWriteFirst bool
}

// Step is one command of a strict script (Fake.Expect): the command
// expected next, and how QEMU answers it.
type Step struct {
	Cmd string
	// Args, if set, checks the command's arguments (decoded JSON).
	Args func(args map[string]any) error
	// Reply, if set, is the command's return value instead of the model's
	// answer; Error makes QEMU refuse the command instead.
	Reply any
	Error string
	// Events follow the reply.
	Events []qmp.Event
}

// ArgsHave is a Step.Args that wants these top-level arguments, compared
// as JSON; others may be present too.
func ArgsHave(want map[string]any) func(map[string]any) error {
	return func(got map[string]any) error {
		for k, w := range want {
			wb, _ := json.Marshal(w)
			gb, _ := json.Marshal(got[k])
			if string(wb) != string(gb) {
				return fmt.Errorf("argument %s is %s, want %s", k, gb, wb)
			}
		}
		return nil
	}
}

// Fake is a scripted QEMU. Its exported fields are its state; lock it
// (Lock, Unlock) to change them while a monitor connection is open.
type Fake struct {
	T testing.TB
	// Status is query-status's (running, paused, postmigrate, shutdown).
	Status string
	// Migration is query-migrate's status, "" if none ran.
	Migration      string
	MigrationError string
	Nodes          []*Node
	Exports        map[string]string // export id -> node
	Jobs           []string
	// JobTargets are the running backup jobs' targets (job -> node);
	// JobCopied what each copied into it (query-block-jobs' offset).
	JobTargets map[string]string
	JobCopied  map[string]int64
	// UnorderedEvents: the monitor does not promise to deliver an event
	// before the replies that follow it (as libvirt's passthrough).
	UnorderedEvents bool
	// RAM is the guest's main RAM (pc.ram), written whole by a migration.
	RAM []byte
	// Replace rewrites strings in the trace (a temporary directory into
	// $WORK, say).
	Replace *strings.Replacer
	Faults  []Fault
	// Params are the migration parameters (migrate-set-parameters), as
	// QEMU keeps them across migrations and senders; Migrated are those in
	// effect at the last migrate.
	Params   map[string]any
	Migrated map[string]any
	// NoNBD answers block-export-add without serving the export (the
	// side channel needs qemu-nbd).
	NoNBD bool
	// TCG says the guest runs under TCG: query-kvm answers KVM disabled.
	TCG bool
	// IgnoreShared is the x-ignore-shared capability: a migration then
	// leaves RAM out, the fake's RAM being a shared backend (pc.ram).
	IgnoreShared bool
	// Background is the background-snapshot capability: a migration then
	// stops the guest (if it runs), saves the device state, resumes the
	// guest and completes with it running, inactivating no node.
	// NoBackground, if set, is why QEMU refuses to turn it on.
	Background   bool
	NoBackground string

	script []Step // strict mode: the commands still expected
	strict bool

	mu      sync.Mutex
	calls   map[string]int
	trace   []string
	conns   []*Conn
	exited  bool
	nbdPath string
	nbd     map[string]*exec.Cmd // export id -> qemu-nbd
	// pendingCont is set when a migration stops the guest and cleared by
	// the next cont (whatever its outcome).
	pendingCont bool
	migrations  sync.WaitGroup
	// tracking: a TrackRAM tracker has scanned once; written are the
	// pages WriteRAM wrote since its last scan.
	tracking bool
	written  map[int]bool
}

// New returns a running fake VM with the given disks (node -> size) and
// 64 KiB of RAM.
func New(t testing.TB, disks map[string]int64) *Fake {
	f := &Fake{T: t, Status: "running", Exports: map[string]string{}, RAM: make([]byte, 16*migstream.PageSize),
		JobTargets: map[string]string{}, JobCopied: map[string]int64{},
		Params: map[string]any{"downtime-limit": 300, "max-bandwidth": 134217728},
		calls:  map[string]int{}, nbd: map[string]*exec.Cmd{}}
	for i := range f.RAM {
		f.RAM[i] = byte(i / migstream.PageSize * 7)
	}
	names := make([]string, 0, len(disks))
	for n := range disks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f.Nodes = append(f.Nodes, &Node{Name: n, Size: disks[n]})
	}
	t.Cleanup(f.shutdown)
	return f
}

// Expect makes the fake strict: every command from now on must be the
// next of steps, or the test fails and QEMU refuses the command. Steps
// without a Reply or Error are answered by the model.
func (f *Fake) Expect(steps ...Step) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script, f.strict = append(f.script, steps...), true
}

// Unmet lists the expected commands that did not come.
func (f *Fake) Unmet() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, st := range f.script {
		out = append(out, st.Cmd)
	}
	return out
}

func (f *Fake) Lock()   { f.mu.Lock() }
func (f *Fake) Unlock() { f.mu.Unlock() }

// Node returns the node named name, or nil.
func (f *Fake) Node(name string) *Node {
	for _, n := range f.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Trace returns the commands and events since the last call, one a line:
// commands with their arguments as JSON, events indented.
func (f *Fake) Trace() []string {
	f.migrations.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.trace
	f.trace = nil
	return t
}

// PendingCont reports a guest that a migration stopped and no cont has
// been issued to since.
func (f *Fake) PendingCont() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pendingCont
}

// Exit ends QEMU: a SHUTDOWN event with reason (none if "killed"), then
// every monitor connection ends and no new one is accepted.
func (f *Fake) Exit(reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exitLocked(reason)
}

// DropClients ends the monitor connections from the client's side, as
// when the client process dies.
func (f *Fake) DropClients() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.end(fmt.Errorf("qmp: session closed: %w", qmp.ErrDisconnected))
	}
	f.conns = nil
}

func (f *Fake) exitLocked(reason string) {
	if f.exited {
		return
	}
	if reason != "killed" {
		f.emitLocked("SHUTDOWN", map[string]any{"guest": false, "reason": reason})
	}
	f.exited = true
	f.Status = "shutdown"
	f.pendingCont = false // no guest left to resume
	for _, c := range f.conns {
		if reason == "killed" {
			c.end(fmt.Errorf("qmp: QEMU at fake went away (exited or killed): %w", qmp.ErrDisconnected))
		} else {
			c.end(fmt.Errorf("qmp: QEMU shut down (%s): %w", reason, qmp.ErrDisconnected))
		}
	}
	f.conns = nil
	f.stopNBDLocked("")
}

func (f *Fake) shutdown() {
	f.migrations.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopNBDLocked("")
}

// Dial is a livecut.DialFunc connecting to the fake: one client at a
// time, as QEMU serves a QMP socket.
func (f *Fake) Dial(ctx context.Context, socket string, o qmp.Options) (livecut.Monitor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exited {
		return nil, fmt.Errorf("qmp: nothing listens at %s (the VM is not running?): %w", socket, qmp.ErrNoSocket)
	}
	if len(f.conns) > 0 {
		return nil, fmt.Errorf("qmp: %s: no greeting; another client holds the QMP socket: %w", socket, qmp.ErrBusy)
	}
	v := qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7"}
	if o.CheckVersion != nil {
		if err := o.CheckVersion(v); err != nil {
			return nil, fmt.Errorf("qmp: QEMU %s at %s: %w: %w", v, socket, err, qmp.ErrUnsupportedVersion)
		}
	}
	c := &Conn{f: f, ver: v, done: make(chan struct{}), subs: map[*events]struct{}{}}
	f.conns = append(f.conns, c)
	return c, nil
}

// Conn is a monitor connection to the fake; it implements livecut.Monitor.
type Conn struct {
	f    *Fake
	ver  qmp.Version
	done chan struct{}
	err  error // why it ended; under f.mu
	subs map[*events]struct{}
}

var _ livecut.Monitor = (*Conn)(nil)

// EventsBeforeReplies: the fake emits an event to the subscriptions
// before it answers the command that caused it, as QEMU's stream orders
// them, and says so unless told not to (Fake.UnorderedEvents).
func (c *Conn) EventsBeforeReplies() bool {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	return !c.f.UnorderedEvents
}

func (c *Conn) end(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
}

func (c *Conn) Version() qmp.Version  { return c.ver }
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) Err() error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	return c.err
}

func (c *Conn) Close() error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.end(fmt.Errorf("qmp: session closed: %w", qmp.ErrDisconnected))
	c.f.conns = slices.DeleteFunc(c.f.conns, func(x *Conn) bool { return x == c })
	return nil
}

func (c *Conn) Subscribe(names ...string) qmp.Events {
	e := &events{c: c, notify: make(chan struct{}, 1)}
	if len(names) > 0 {
		e.names = map[string]bool{}
		for _, n := range names {
			e.names[n] = true
		}
	}
	c.f.mu.Lock()
	c.subs[e] = struct{}{}
	c.f.mu.Unlock()
	return e
}

// Execute runs cmd against the model. Arguments go through JSON as they
// would to QEMU, and so does the reply.
func (c *Conn) Execute(ctx context.Context, cmd string, args, reply any) error {
	f := c.f
	if err := c.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	a := map[string]any{}
	raw := []byte("{}")
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp: %s: encode arguments: %w", cmd, err)
		}
		if string(b) != "null" {
			raw = b
			if err := json.Unmarshal(b, &a); err != nil {
				return &qmp.CommandError{Command: cmd, Desc: "QMP input member 'arguments' must be an object"}
			}
		}
	}
	f.mu.Lock()
	f.calls[cmd]++
	line := cmd
	if string(raw) != "{}" {
		line += " " + string(raw)
	}
	f.traceLocked(line)
	if f.strict {
		var step Step
		var bad error
		switch {
		case len(f.script) == 0:
			bad = errors.New("no more commands expected")
		case f.script[0].Cmd != cmd:
			bad = fmt.Errorf("expected %s", f.script[0].Cmd)
		case f.script[0].Args != nil:
			bad = f.script[0].Args(a)
		}
		if bad == nil {
			step, f.script = f.script[0], f.script[1:]
		}
		if bad != nil || step.Reply != nil || step.Error != "" {
			if bad != nil && f.T != nil {
				f.T.Errorf("livecuttest: unexpected command %s: %v", line, bad)
			}
			if bad == nil && step.Error != "" {
				bad = errors.New(step.Error)
			}
			if bad != nil {
				f.traceLocked("  error: " + bad.Error())
				f.mu.Unlock()
				return &qmp.CommandError{Command: cmd, Desc: bad.Error()}
			}
			for _, e := range step.Events {
				f.emitLocked(e.Name, e.Data)
			}
			f.mu.Unlock()
			return decodeReply(cmd, step.Reply, reply)
		}
		defer func() {
			f.mu.Lock()
			for _, e := range step.Events {
				f.emitLocked(e.Name, e.Data)
			}
			f.mu.Unlock()
		}()
	}
	fault := f.faultLocked(cmd)
	if fault != nil && fault.DiskWriteFirst && f.Status == "running" {
		f.traceLocked("  (the guest writes its disks)")
		f.diskWriteLocked()
	}
	if fault != nil && fault.PauseFirst && f.Status == "running" {
		// The operator's stop, just before this command arrives.
		f.traceLocked("  (the operator pauses the guest)")
		f.Status = "paused"
		f.emitLocked("STOP", nil)
	}
	if fault != nil && !fault.During {
		switch {
		case fault.Exit != "":
			f.exitLocked(fault.Exit)
			err := c.err
			f.mu.Unlock()
			return fmt.Errorf("qmp: %s: %w", cmd, err)
		case fault.Hangup:
			c.end(fmt.Errorf("qmp: QEMU at fake went away (exited or killed): %w", qmp.ErrDisconnected))
			f.conns = slices.DeleteFunc(f.conns, func(x *Conn) bool { return x == c })
			err := c.err
			f.mu.Unlock()
			return fmt.Errorf("qmp: %s: %w", cmd, err)
		case fault.Error != "":
			f.traceLocked("  error: " + fault.Error)
			if cmd == "cont" {
				f.pendingCont = false // issued, refused
			}
			f.mu.Unlock()
			return &qmp.CommandError{Command: cmd, Desc: fault.Error}
		}
	}
	ret, after, err := f.handleLocked(c, cmd, a, fault)
	if err != nil {
		f.traceLocked("  error: " + err.Error())
	}
	f.mu.Unlock()
	if after != nil {
		f.migrations.Add(1)
		go func() {
			defer f.migrations.Done()
			after()
		}()
	}
	if err != nil {
		return &qmp.CommandError{Command: cmd, Desc: err.Error()}
	}
	return decodeReply(cmd, ret, reply)
}

// decodeReply hands ret to reply through JSON, as a QMP reply travels.
func decodeReply(cmd string, ret, reply any) error {
	if reply == nil {
		return nil
	}
	b, err := json.Marshal(ret)
	if err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	if err := json.Unmarshal(b, reply); err != nil {
		return fmt.Errorf("qmp: %s: decode reply %s: %w", cmd, b, err)
	}
	return nil
}

func (f *Fake) traceLocked(s string) {
	if f.Replace != nil {
		s = f.Replace.Replace(s)
	}
	f.trace = append(f.trace, s)
}

func (f *Fake) faultLocked(cmd string) *Fault {
	for i := range f.Faults {
		fl := &f.Faults[i]
		if fl.Cmd == cmd && (fl.Nth == 0 || fl.Nth == f.calls[cmd]) {
			return fl
		}
	}
	return nil
}

// diskWriteLocked plays a guest write to every disk: each backup job's
// copy-before-write filter copies the old data into its target first,
// which crosses the target's write threshold.
func (f *Fake) diskWriteLocked() {
	for _, j := range f.Jobs {
		f.JobCopied[j] += 65536
		n := f.Node(f.JobTargets[j])
		if n == nil || n.Threshold <= 0 {
			continue
		}
		f.emitLocked("BLOCK_WRITE_THRESHOLD", map[string]any{"node-name": n.Name, "write-threshold": n.Threshold, "amount-exceeded": 65536 - n.Threshold})
		n.Threshold = 0 // QEMU disarms it once it fired
	}
}

// emitLocked hands an event to the subscribers of every open connection.
func (f *Fake) emitLocked(name string, data map[string]any) {
	line := "  event " + name
	if data != nil {
		b, _ := json.Marshal(data)
		line += " " + string(b)
	}
	f.traceLocked(line)
	e := qmp.Event{Name: name, Data: data, At: time.Now()}
	for _, c := range f.conns {
		for s := range c.subs {
			s.push(e)
		}
	}
}

func (f *Fake) emit(name string, data map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emitLocked(name, data)
}

var migrationActive = []string{"setup", "active", "device", "cancelling"}

// handleLocked answers cmd from the model. after, if set, runs once the
// reply is out (a migration's stream and events).
func (f *Fake) handleLocked(c *Conn, cmd string, a map[string]any, fault *Fault) (ret any, after func(), err error) {
	str := func(k string) string { s, _ := a[k].(string); return s }
	ok := map[string]any{}
	switch cmd {
	case "query-status":
		return map[string]any{"status": f.Status, "running": f.Status == "running", "singlestep": false}, nil, nil
	case "query-migrate":
		if f.Migration == "" {
			return ok, nil, nil
		}
		m := map[string]any{"status": f.Migration}
		if f.Migration == "completed" {
			m["downtime"], m["total-time"] = 3, 20
		}
		if f.MigrationError != "" {
			m["error-desc"] = f.MigrationError
		}
		return m, nil, nil
	case "query-block-exports":
		ids := make([]string, 0, len(f.Exports))
		for id := range f.Exports {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		var out []map[string]any
		for _, id := range ids {
			out = append(out, map[string]any{"id": id, "type": "nbd", "node-name": f.Exports[id], "shutting-down": false})
		}
		return orEmpty(out), nil, nil
	case "query-block-jobs":
		var out []map[string]any
		for _, j := range f.Jobs {
			out = append(out, map[string]any{"device": j, "type": "backup", "status": "running", "offset": f.JobCopied[j]})
		}
		return orEmpty(out), nil, nil
	case "query-named-block-nodes":
		var out []map[string]any
		for _, n := range f.Nodes {
			bms := []map[string]any{}
			for _, b := range n.Bitmaps {
				bms = append(bms, map[string]any{"name": b.Name, "recording": b.Recording, "granularity": 65536, "persistent": false, "busy": false})
			}
			out = append(out, map[string]any{"node-name": n.Name, "drv": "qcow2", "image": map[string]any{"virtual-size": n.Size}, "dirty-bitmaps": bms})
		}
		return orEmpty(out), nil, nil
	case "migrate-set-parameters":
		maps.Copy(f.Params, a)
		return ok, nil, nil
	case "migrate-set-capabilities":
		caps, _ := a["capabilities"].([]any)
		for _, x := range caps {
			c, _ := x.(map[string]any)
			on, _ := c["state"].(bool)
			switch name, _ := c["capability"].(string); name {
			case "x-ignore-shared":
				f.IgnoreShared = on
			case "background-snapshot":
				if on && f.NoBackground != "" {
					return nil, nil, errors.New(f.NoBackground)
				}
				f.Background = on
			}
		}
		return ok, nil, nil
	case "nbd-server-start":
		if f.nbdPath != "" {
			return nil, nil, errors.New("NBD server already running")
		}
		addr, _ := a["addr"].(map[string]any)
		data, _ := addr["data"].(map[string]any)
		p, _ := data["path"].(string)
		if p == "" {
			return nil, nil, errors.New("Parameter 'addr.data.path' is missing")
		}
		f.nbdPath = p
		return ok, nil, nil
	case "nbd-server-stop":
		if f.nbdPath == "" {
			return nil, nil, errors.New("NBD server not running")
		}
		f.stopNBDLocked("")
		f.nbdPath = ""
		return ok, nil, nil
	case "query-kvm":
		return map[string]any{"enabled": !f.TCG, "present": true}, nil, nil
	case "stop":
		if f.Status == "running" {
			f.Status = "paused"
			f.pendingCont = true
			f.emitLocked("STOP", nil)
		}
		return ok, nil, nil
	case "cont":
		f.pendingCont = false
		switch f.Status {
		case "running":
			return ok, nil, nil
		case "paused", "postmigrate":
			f.Status = "running"
			for _, n := range f.Nodes {
				n.Inactive = false
			}
			f.emitLocked("RESUME", nil)
			return ok, nil, nil
		}
		return nil, nil, fmt.Errorf("cannot resume the guest in state %s", f.Status)
	case "migrate":
		uri := str("uri")
		if slices.Contains(migrationActive, f.Migration) {
			return nil, nil, errors.New("There's a migration process in progress")
		}
		path, isUnix := strings.CutPrefix(uri, "unix:")
		if !isUnix {
			return nil, nil, fmt.Errorf("the fake migrates to unix sockets only, not %q", uri)
		}
		f.Migration, f.MigrationError = "setup", ""
		f.Migrated = maps.Clone(f.Params)
		f.emitLocked("MIGRATION", map[string]any{"status": "setup"})
		ram := slices.Clone(f.RAM)
		if f.IgnoreShared {
			ram = nil // in the shared backend: left out
		}
		wasRunning := f.Status == "running"
		if f.Background {
			if ram != nil {
				f.T.Errorf("livecuttest: a background snapshot of all RAM is not modelled")
			}
			return ok, func() { f.snapshot(path, fault) }, nil
		}
		return ok, func() { f.migrate(path, ram, fault, wasRunning) }, nil
	case "migrate_cancel":
		if slices.Contains(migrationActive, f.Migration) {
			f.Migration = "cancelled"
			f.emitLocked("MIGRATION", map[string]any{"status": "cancelled"})
		}
		return ok, nil, nil
	case "blockdev-add":
		name, backing := str("node-name"), str("backing")
		if name == "" || f.Node(name) != nil {
			return nil, nil, fmt.Errorf("Duplicate nodes with node-name='%s'", name)
		}
		b := f.Node(backing)
		if b == nil {
			return nil, nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", backing)
		}
		file, _ := a["file"].(map[string]any)
		fn, _ := file["filename"].(string)
		f.Nodes = append(f.Nodes, &Node{Name: name, Size: b.Size, File: fn})
		return ok, nil, nil
	case "blockdev-del":
		name := str("node-name")
		if f.Node(name) == nil {
			return nil, nil, fmt.Errorf("Failed to find node with node-name='%s'", name)
		}
		for _, n := range f.Exports {
			if n == name {
				return nil, nil, fmt.Errorf("Node %s is in use", name)
			}
		}
		f.Nodes = slices.DeleteFunc(f.Nodes, func(n *Node) bool { return n.Name == name })
		return ok, nil, nil
	case "transaction":
		return f.transactionLocked(a)
	case "block-dirty-bitmap-remove":
		n := f.Node(str("node"))
		if n == nil || !slices.ContainsFunc(n.Bitmaps, func(b Bitmap) bool { return b.Name == str("name") }) {
			return nil, nil, fmt.Errorf("Dirty bitmap '%s' not found", str("name"))
		}
		n.Bitmaps = slices.DeleteFunc(n.Bitmaps, func(b Bitmap) bool { return b.Name == str("name") })
		return ok, nil, nil
	case "block-export-add":
		return f.exportAddLocked(a)
	case "block-export-del":
		id := str("id")
		if _, ok := f.Exports[id]; !ok {
			return nil, nil, fmt.Errorf("Export '%s' is not found", id)
		}
		delete(f.Exports, id)
		f.stopNBDLocked(id)
		f.emitLocked("BLOCK_EXPORT_DELETED", map[string]any{"id": id})
		return ok, nil, nil
	case "block-set-write-threshold":
		n := f.Node(str("node-name"))
		if n == nil {
			return nil, nil, fmt.Errorf("Device '%s' not found", str("node-name"))
		}
		v, _ := a["write-threshold"].(float64)
		n.Threshold = int64(v)
		return ok, nil, nil
	case "block-job-cancel":
		id := str("device")
		if !slices.Contains(f.Jobs, id) {
			return nil, nil, fmt.Errorf("Block job '%s' not found", id)
		}
		f.Jobs = slices.DeleteFunc(f.Jobs, func(j string) bool { return j == id })
		delete(f.JobTargets, id)
		delete(f.JobCopied, id)
		f.emitLocked("BLOCK_JOB_CANCELLED", map[string]any{"device": id, "type": "backup"})
		return ok, nil, nil
	}
	if f.T != nil {
		f.T.Errorf("livecuttest: unexpected command %s %v", cmd, a)
	}
	return nil, nil, fmt.Errorf("The command %s has not been found", cmd)
}

func orEmpty(v []map[string]any) []map[string]any {
	if v == nil {
		return []map[string]any{}
	}
	return v
}

// transactionLocked checks every action before applying any, as QEMU's
// transactions are all or nothing.
func (f *Fake) transactionLocked(a map[string]any) (any, func(), error) {
	acts, _ := a["actions"].([]any)
	type action struct {
		typ  string
		data map[string]any
	}
	var list []action
	newBitmaps := map[string]bool{}
	newJobs := map[string]bool{}
	for _, x := range acts {
		m, _ := x.(map[string]any)
		typ, _ := m["type"].(string)
		data, _ := m["data"].(map[string]any)
		s := func(k string) string { v, _ := data[k].(string); return v }
		switch typ {
		case "block-dirty-bitmap-disable", "block-dirty-bitmap-add":
			n := f.Node(s("node"))
			if n == nil {
				return nil, nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", s("node"))
			}
			has := slices.ContainsFunc(n.Bitmaps, func(b Bitmap) bool { return b.Name == s("name") })
			if typ == "block-dirty-bitmap-disable" && !has {
				return nil, nil, fmt.Errorf("Dirty bitmap '%s' not found", s("name"))
			}
			if typ == "block-dirty-bitmap-add" && (has || newBitmaps[n.Name+"/"+s("name")]) {
				return nil, nil, fmt.Errorf("Bitmap already exists: %s", s("name"))
			}
			newBitmaps[n.Name+"/"+s("name")] = true
		case "blockdev-backup":
			if f.Node(s("device")) == nil || f.Node(s("target")) == nil {
				return nil, nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", s("device"), s("target"))
			}
			if f.Node(s("target")).Inactive {
				return nil, nil, errors.New("Could not create node: Block node is read-only")
			}
			if slices.Contains(f.Jobs, s("job-id")) || newJobs[s("job-id")] {
				return nil, nil, fmt.Errorf("Job ID '%s' already in use", s("job-id"))
			}
			newJobs[s("job-id")] = true
		default:
			return nil, nil, fmt.Errorf("the fake knows no transaction action %q", typ)
		}
		list = append(list, action{typ, data})
	}
	for _, x := range list {
		s := func(k string) string { v, _ := x.data[k].(string); return v }
		switch x.typ {
		case "block-dirty-bitmap-disable":
			n := f.Node(s("node"))
			for i := range n.Bitmaps {
				if n.Bitmaps[i].Name == s("name") {
					n.Bitmaps[i].Recording = false
				}
			}
		case "block-dirty-bitmap-add":
			n := f.Node(s("node"))
			n.Bitmaps = append(n.Bitmaps, Bitmap{Name: s("name"), Recording: true})
		case "blockdev-backup":
			f.Jobs = append(f.Jobs, s("job-id"))
			f.JobTargets[s("job-id")] = s("target")
		}
	}
	return map[string]any{}, nil, nil
}

// migrate plays QEMU's side of a migration to a unix socket: the stream,
// the guest stopped for the last pass, MIGRATION completed.
func (f *Fake) migrate(path string, ram []byte, fault *Fault, wasRunning bool) {
	f.mu.Lock()
	f.Migration = "active"
	f.emitLocked("MIGRATION", map[string]any{"status": "active"})
	f.mu.Unlock()
	if fault != nil && fault.During {
		f.mu.Lock()
		defer f.mu.Unlock()
		if fault.Exit != "" {
			f.exitLocked(fault.Exit)
		} else if fault.Hangup {
			for _, c := range f.conns {
				c.end(fmt.Errorf("qmp: QEMU at fake went away (exited or killed): %w", qmp.ErrDisconnected))
			}
			f.conns = nil
		}
		return
	}
	fail := func(desc string) { f.failMigration(desc, wasRunning) }
	conn := openStream(path, fault, fail)
	if conn == nil {
		return
	}
	defer conn.Close()
	f.mu.Lock()
	f.Status = "finish-migrate"
	if wasRunning {
		// A guest already stopped is not stopped again: no event.
		f.emitLocked("STOP", nil)
	}
	f.pendingCont = true
	f.mu.Unlock()
	f.mu.Lock()
	blocks := []migstream.Block{{ID: "pc.ram", Length: int64(len(f.RAM))}}
	f.mu.Unlock()
	if err := writeMigration(conn, blocks, ram); err != nil {
		fail(fmt.Sprintf("Unable to write to socket: %v", err))
		return
	}
	conn.Close()
	f.mu.Lock()
	if len(f.Jobs) > 0 {
		// Inactivating the disks fails while a backup job holds them.
		f.mu.Unlock()
		fail("bdrv_inactivate_all() failed")
		return
	}
	defer f.mu.Unlock()
	for _, n := range f.Nodes {
		n.Inactive = true
	}
	f.Status, f.Migration = "postmigrate", "completed"
	f.emitLocked("MIGRATION", map[string]any{"status": "completed"})
}

// failMigration ends a migration "failed" with desc; a guest the
// migration stopped is resumed if it ran before (wasRunning), as QEMU
// does, and otherwise left paused.
func (f *Fake) failMigration(desc string, wasRunning bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Migration, f.MigrationError = "failed", desc
	if f.Status == "postmigrate" || f.Status == "finish-migrate" {
		if wasRunning {
			f.Status = "running"
			f.emitLocked("RESUME", nil)
		} else {
			f.Status = "paused"
		}
	}
	f.emitLocked("MIGRATION", map[string]any{"status": "failed"})
}

// openStream connects a migration to the socket at path, or fails it (by
// fault, or for want of a listener) and returns nil.
func openStream(path string, fault *Fault, fail func(desc string)) net.Conn {
	if fault != nil && fault.MigrationFails != "" {
		fail(fault.MigrationFails)
		return nil
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		fail(fmt.Sprintf("Failed to connect to '%s': %v", path, err))
		return nil
	}
	return conn
}

// snapshot plays a background snapshot to a unix socket: the guest
// stopped (if it runs) for the device state and resumed by QEMU, then
// the stream, whose RAM sections end with no RAM END, and MIGRATION
// completed. No node is inactivated.
func (f *Fake) snapshot(path string, fault *Fault) {
	f.mu.Lock()
	f.Migration = "active"
	f.emitLocked("MIGRATION", map[string]any{"status": "active"})
	f.mu.Unlock()
	// A background snapshot never leaves the guest stopped by a
	// migration: failMigration leaves its run state alone.
	fail := func(desc string) { f.failMigration(desc, false) }
	conn := openStream(path, fault, fail)
	if conn == nil {
		return
	}
	defer conn.Close()
	f.mu.Lock()
	if f.Status == "running" {
		f.emitLocked("STOP", nil)
	}
	f.Status, f.pendingCont = "running", false
	f.emitLocked("RESUME", nil)
	blocks := []migstream.Block{{ID: "pc.ram", Length: int64(len(f.RAM))}}
	f.mu.Unlock()
	if _, err := conn.Write(backgroundBytes(blocks)); err != nil {
		fail(fmt.Sprintf("Unable to write to socket: %v", err))
		return
	}
	conn.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Migration = "completed"
	f.emitLocked("MIGRATION", map[string]any{"status": "completed"})
}

func (f *Fake) exportAddLocked(a map[string]any) (any, func(), error) {
	id, _ := a["id"].(string)
	node, _ := a["node-name"].(string)
	name, _ := a["name"].(string)
	if f.nbdPath == "" {
		return nil, nil, errors.New("NBD server not running")
	}
	if _, ok := f.Exports[id]; ok {
		return nil, nil, fmt.Errorf("Block export id '%s' is already in use", id)
	}
	n := f.Node(node)
	if n == nil {
		return nil, nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", node)
	}
	var bitmap string
	if bms, _ := a["bitmaps"].([]any); len(bms) > 0 {
		if len(bms) > 1 {
			return nil, nil, errors.New("the fake exports one bitmap at most")
		}
		m, _ := bms[0].(map[string]any)
		bn, _ := m["node"].(string)
		bitmap, _ = m["name"].(string)
		src := f.Node(bn)
		if src == nil || !slices.ContainsFunc(src.Bitmaps, func(b Bitmap) bool { return b.Name == bitmap }) {
			return nil, nil, fmt.Errorf("Bitmap '%s' is not found", bitmap)
		}
	}
	if !f.NoNBD {
		if err := f.serveNBDLocked(id, name, n, bitmap); err != nil {
			return nil, nil, err
		}
	}
	f.Exports[id] = node
	return map[string]any{}, nil, nil
}

// serveNBDLocked serves a fleecing node's overlay at the NBD server's
// socket with qemu-nbd: one export at a time, with the dirty bitmap's
// metadata context when asked (an empty bitmap: nothing changed).
func (f *Fake) serveNBDLocked(id, name string, n *Node, bitmap string) error {
	if len(f.nbd) > 0 {
		return errors.New("the fake serves one NBD export at a time (one disk per test VM)")
	}
	if n.File == "" {
		return fmt.Errorf("the fake exports overlay nodes only, not %s", n.Name)
	}
	args := []string{"--read-only", "--persistent", "--shared=4", "--socket=" + f.nbdPath, "--export-name=" + name, "--format=qcow2"}
	if bitmap != "" {
		out, err := exec.Command("qemu-img", "bitmap", "--add", n.File, bitmap).CombinedOutput()
		if err != nil {
			return fmt.Errorf("fake: qemu-img bitmap: %v: %s", err, out)
		}
		args = append(args, "--bitmap="+bitmap)
	}
	os.Remove(f.nbdPath)
	// Its stderr is dropped: the readiness probe below makes it complain.
	cmd := exec.Command("qemu-nbd", append(args, n.File)...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("fake: qemu-nbd: %v", err)
	}
	f.nbd[id] = cmd
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.Dial("unix", f.nbdPath)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			f.stopNBDLocked(id)
			return fmt.Errorf("fake: qemu-nbd does not listen: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopNBDLocked ends the qemu-nbd of export id, or all if id is "".
func (f *Fake) stopNBDLocked(id string) {
	for x, cmd := range f.nbd {
		if id != "" && x != id {
			continue
		}
		cmd.Process.Kill()
		cmd.Wait()
		delete(f.nbd, x)
		if f.nbdPath != "" {
			os.Remove(f.nbdPath)
		}
	}
}

// events is a subscription of one connection.
type events struct {
	c      *Conn
	names  map[string]bool
	mu     sync.Mutex
	queue  []qmp.Event
	notify chan struct{}
}

func (e *events) push(ev qmp.Event) {
	if e.names != nil && !e.names[ev.Name] {
		return
	}
	e.mu.Lock()
	e.queue = append(e.queue, ev)
	e.mu.Unlock()
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

func (e *events) Next(ctx context.Context) (qmp.Event, error) {
	for {
		e.mu.Lock()
		if len(e.queue) > 0 {
			ev := e.queue[0]
			e.queue = e.queue[1:]
			e.mu.Unlock()
			return ev, nil
		}
		e.mu.Unlock()
		select {
		case <-e.notify:
		case <-ctx.Done():
			return qmp.Event{}, ctx.Err()
		case <-e.c.done:
			e.mu.Lock()
			n := len(e.queue)
			e.mu.Unlock()
			if n == 0 {
				return qmp.Event{}, e.c.Err()
			}
		}
	}
}

func (e *events) Wait(ctx context.Context, match func(qmp.Event) bool) (qmp.Event, error) {
	return qmp.WaitFor(ctx, e, match)
}

func (e *events) Close() {
	e.c.f.mu.Lock()
	delete(e.c.subs, e)
	e.c.f.mu.Unlock()
}
