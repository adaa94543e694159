package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	ErrNoSocket           = errors.New("no QMP socket")
	ErrBusy               = errors.New("QMP socket busy")
	ErrUnsupportedVersion = errors.New("unsupported QEMU version")
	ErrDisconnected       = errors.New("QMP connection closed")
)

// CommandError is QEMU's refusal of a command.
type CommandError struct {
	Command string
	Desc    string
}

func (e *CommandError) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Command, e.Desc) }

// Version is a QEMU version.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Event is an asynchronous QMP event. At is QEMU's own timestamp.
type Event struct {
	Name string
	Data map[string]any
	At   time.Time
}

// Str returns the string field key of the event's data, or "".
func (e Event) Str(key string) string {
	s, _ := e.Data[key].(string)
	return s
}

// Options configure a session.
type Options struct {
	// GreetingTimeout bounds the wait for QEMU's greeting; a socket held by
	// another client accepts but stays silent. Default 5 s.
	GreetingTimeout time.Duration
	// CheckVersion, if set, refuses versions the caller cannot drive; its
	// error is wrapped with ErrUnsupportedVersion.
	CheckVersion func(Version) error
}

// Session is a connected QMP monitor. It is safe for concurrent use;
// QEMU runs commands one at a time, in the order they were sent.
type Session struct {
	conn   net.Conn
	socket string
	ver    Version

	writeMu sync.Mutex // one command on the wire at a time
	nextID  atomic.Uint64

	mu       sync.Mutex
	pending  []*call // commands sent and not yet answered, oldest first
	subs     map[*Subscription]struct{}
	done     chan struct{}
	shutdown string // reason of a SHUTDOWN event, if one came
	closed   bool
}

// call is a command waiting for its reply.
type call struct {
	id string
	ch chan message // buffered: the reader never waits for an abandoned call
}

// message is one QMP message from QEMU: a reply (return or error) or an
// event.
type message struct {
	ID string `json:"id"`
	Reply
	Event     string         `json:"event"`
	Data      map[string]any `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to the QMP socket at path and negotiates capabilities.
// ctx bounds the connection and greeting.
func Dial(ctx context.Context, path string, o Options) (*Session, error) {
	if o.GreetingTimeout <= 0 {
		o.GreetingTimeout = 5 * time.Second
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("qmp: %s does not exist (is the VM running, and is -qmp unix:%s,server=on,wait=off on its command line?): %w", path, path, ErrNoSocket)
	}
	timeout := o.GreetingTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("qmp: nothing listens at %s (the VM is not running?): %w", path, ErrNoSocket)
		}
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	dec := json.NewDecoder(conn)
	var ver Version
	connected := make(chan error, 1)
	go func() { connected <- handshake(conn, dec, &ver) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err = <-connected:
	case <-t.C:
		err = fmt.Errorf("no greeting within %v; another client holds the QMP socket: %w", timeout, ErrBusy)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: %w", path, err)
	}
	s := &Session{conn: conn, socket: path, ver: ver, subs: map[*Subscription]struct{}{}, done: make(chan struct{})}
	if o.CheckVersion != nil {
		if err := o.CheckVersion(s.ver); err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp: QEMU %s at %s: %w: %w", s.ver, path, err, ErrUnsupportedVersion)
		}
	}
	go s.read(dec)
	return s, nil
}

// maxStaleBeforeGreeting bounds the events and replies left over from an
// earlier client that handshake skips before QEMU's greeting.
const maxStaleBeforeGreeting = 64

// handshake reads QEMU's greeting and leaves capabilities negotiation.
func handshake(conn net.Conn, dec *json.Decoder, ver *Version) error {
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major, Minor, Micro int
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		} `json:"QMP"`
		Event  string          `json:"event"`
		Return json.RawMessage `json:"return"`
		Error  json.RawMessage `json:"error"`
	}
	// QEMU can hand the next client output it had queued for the one
	// that just left (an event emitted as it disconnected, a reply it
	// never read) ahead of the greeting: skip a few such messages.
	for skipped := 0; ; skipped++ {
		g.QMP, g.Event, g.Return, g.Error = nil, "", nil, nil
		if err := dec.Decode(&g); err != nil {
			return fmt.Errorf("greeting: %w", err)
		}
		if g.QMP != nil {
			break
		}
		if skipped == maxStaleBeforeGreeting || (g.Event == "" && g.Return == nil && g.Error == nil) {
			return errors.New("greeting: not a QMP greeting")
		}
	}
	v := g.QMP.Version
	*ver = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}`)); err != nil {
		return fmt.Errorf("qmp_capabilities: %w", err)
	}
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp_capabilities: %w", err)
		}
		if m.Event != "" {
			continue
		}
		if m.Error != nil {
			return fmt.Errorf("qmp_capabilities: %s", m.Error.Desc)
		}
		return nil
	}
}

// read hands replies to the commands waiting for them and events to
// subscribers until the connection ends, however it ends (EOF, or a reset
// when QEMU dies with input unread), and then closes done. It never blocks
// on a reader: a stalled event would stall replies.
func (s *Session) read(dec *json.Decoder) {
	defer close(s.done)
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			return
		}
		s.mu.Lock()
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data, At: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)}
			if ev.Name == "SHUTDOWN" {
				s.shutdown = ev.Str("reason")
				if s.shutdown == "" {
					s.shutdown = "shutdown"
				}
			}
			for sub := range s.subs {
				sub.push(ev)
			}
			s.mu.Unlock()
			continue
		}
		// QEMU answers in order and echoes the command's id.
		i := slices.IndexFunc(s.pending, func(c *call) bool { return c.id == m.ID })
		if i < 0 && m.ID == "" && len(s.pending) > 0 {
			i = 0
		}
		if i >= 0 {
			c := s.pending[i]
			s.pending = slices.Delete(s.pending, i, i+1)
			c.ch <- m
		}
		s.mu.Unlock()
	}
}

// Version is the QEMU version from the greeting.
func (s *Session) Version() Version { return s.ver }

// EventsBeforeReplies reports that an event reaches the subscriptions
// before the reply of any command QEMU answered after sending it: read
// takes both from one stream, in QEMU's order, and queues an event before
// it reads on. So once a command returns, no event QEMU sent before its
// reply is still to come.
func (s *Session) EventsBeforeReplies() bool { return true }

// Done is closed when the connection ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// lostErr says why the connection is gone.
func (s *Session) lostErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("qmp: session closed: %w", ErrDisconnected)
	}
	if s.shutdown != "" {
		return fmt.Errorf("qmp: QEMU shut down (%s): %w", s.shutdown, ErrDisconnected)
	}
	return fmt.Errorf("qmp: QEMU at %s went away (exited or killed): %w", s.socket, ErrDisconnected)
}

// Err is nil while connected, and says why otherwise.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.lostErr()
	default:
		return nil
	}
}

// Execute runs cmd with args (nil for none) and decodes its return value
// into reply (nil to ignore it). A context that ends abandons the wait,
// not the command: QEMU still runs it.
func (s *Session) Execute(ctx context.Context, cmd string, args, reply any) error {
	if err := s.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		// Not sent at all: an ended context must not race the reply.
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	id := fmt.Sprintf("drsync-%d", s.nextID.Add(1))
	req, err := EncodeCommand("qmp", cmd, args, id)
	if err != nil {
		return err
	}
	cl := &call{id: id, ch: make(chan message, 1)}
	s.writeMu.Lock()
	s.mu.Lock()
	s.pending = append(s.pending, cl)
	s.mu.Unlock()
	// A QEMU that stops reading its monitor fills the socket: the write
	// then ends with ctx, and the connection with it (a partial command
	// leaves the stream unusable).
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { s.conn.SetWriteDeadline(time.Unix(1, 0)); close(fired) })
	_, werr := s.conn.Write(req)
	if !stop() {
		<-fired
		s.conn.SetWriteDeadline(time.Time{})
	}
	s.writeMu.Unlock()
	if werr != nil && errors.Is(werr, os.ErrDeadlineExceeded) {
		s.conn.Close()
		return fmt.Errorf("qmp: %s: QEMU does not read its monitor: %w", cmd, ctx.Err())
	}
	if werr != nil {
		// The connection ended. Let the reader drain first, so the error
		// names a SHUTDOWN reason that arrived just before.
		select {
		case <-s.done:
		case <-time.After(time.Second):
		}
		return fmt.Errorf("qmp: %s: %w", cmd, s.lostErr())
	}
	var m message
	select {
	case m = <-cl.ch:
	case <-ctx.Done():
		return fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
	case <-s.done:
		// A reply read just before the end still counts.
		select {
		case m = <-cl.ch:
		default:
			return fmt.Errorf("qmp: %s: %w", cmd, s.lostErr())
		}
	}
	return m.Decode("qmp", cmd, reply)
}

// Close ends the session.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.conn.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Events is a queue of events from Subscribe. It is an interface so that
// other monitors than Session (a fake, QMP passed through libvirt) can hand
// out their own queues to the same callers.
type Events interface {
	// Next returns the next queued event, waiting for one if none is
	// queued; once the connection has ended and the queue is empty, the
	// error wraps ErrDisconnected.
	Next(ctx context.Context) (Event, error)
	// Wait returns the first queued or future event for which match is
	// true, dropping the others.
	Wait(ctx context.Context, match func(Event) bool) (Event, error)
	// Close stops queueing.
	Close()
}

// Subscription queues the events a Session receives after Subscribe,
// optionally only those with the given names.
type Subscription struct {
	s      *Session
	names  map[string]bool
	mu     sync.Mutex
	queue  []Event
	notify chan struct{}
}

// Subscribe starts queueing events named names (all events if none).
// Subscribe before running the command whose events you wait for.
func (s *Session) Subscribe(names ...string) Events {
	sub := &Subscription{s: s, notify: make(chan struct{}, 1)}
	if len(names) > 0 {
		sub.names = map[string]bool{}
		for _, n := range names {
			sub.names[n] = true
		}
	}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

func (sub *Subscription) push(e Event) {
	if sub.names != nil && !sub.names[e.Name] {
		return
	}
	sub.mu.Lock()
	sub.queue = append(sub.queue, e)
	sub.mu.Unlock()
	select {
	case sub.notify <- struct{}{}:
	default:
	}
}

// Next returns the next queued event, waiting for one if none is queued.
func (sub *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		sub.mu.Lock()
		if len(sub.queue) > 0 {
			e := sub.queue[0]
			sub.queue = sub.queue[1:]
			sub.mu.Unlock()
			return e, nil
		}
		sub.mu.Unlock()
		select {
		case <-sub.notify:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		case <-sub.s.done:
			// Events that arrived just before the end are still delivered.
			sub.mu.Lock()
			n := len(sub.queue)
			sub.mu.Unlock()
			if n == 0 {
				return Event{}, sub.s.lostErr()
			}
		}
	}
}

// Wait returns the first queued or future event for which match is true,
// dropping the others.
func (sub *Subscription) Wait(ctx context.Context, match func(Event) bool) (Event, error) {
	return WaitFor(ctx, sub, match)
}

// WaitFor implements Events.Wait for any queue with Next.
func WaitFor(ctx context.Context, ev interface {
	Next(context.Context) (Event, error)
}, match func(Event) bool) (Event, error) {
	for {
		e, err := ev.Next(ctx)
		if err != nil {
			return e, err
		}
		if match(e) {
			return e, nil
		}
	}
}

// Close stops queueing.
func (sub *Subscription) Close() {
	sub.s.mu.Lock()
	delete(sub.s.subs, sub)
	sub.s.mu.Unlock()
}
