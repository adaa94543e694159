package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
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
// commands run one at a time.
type Session struct {
	mon    *goqmp.SocketMonitor
	socket string
	ver    Version

	mu       sync.Mutex
	subs     map[*Subscription]struct{}
	done     chan struct{}
	shutdown string // reason of a SHUTDOWN event, if one came
	closed   bool
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
	mon, err := goqmp.NewSocketMonitor("unix", path, timeout)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("qmp: nothing listens at %s (the VM is not running?): %w", path, ErrNoSocket)
		}
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	connected := make(chan error, 1)
	go func() { connected <- mon.Connect() }()
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
		mon.Disconnect()
		return nil, fmt.Errorf("qmp: %s: %w", path, err)
	}
	s := &Session{mon: mon, socket: path, subs: map[*Subscription]struct{}{}, done: make(chan struct{})}
	if v := mon.Version; v != nil {
		s.ver = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	}
	if o.CheckVersion != nil {
		if err := o.CheckVersion(s.ver); err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("qmp: QEMU %s at %s: %w: %w", s.ver, path, err, ErrUnsupportedVersion)
		}
	}
	events, err := mon.Events(context.Background())
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("qmp: events: %w", err)
	}
	go s.pump(events)
	return s, nil
}

// pump hands events to subscribers. It must never block: go-qemu delivers
// replies and events from one goroutine, so a stalled event stalls replies.
func (s *Session) pump(events <-chan goqmp.Event) {
	for e := range events {
		ev := Event{Name: e.Event, Data: e.Data, At: time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)}
		s.mu.Lock()
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
	}
	close(s.done)
}

// Version is the QEMU version from the greeting.
func (s *Session) Version() Version { return s.ver }

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
	c := goqmp.Command{Execute: cmd}
	if args != nil {
		a, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp: %s: encode arguments: %w", cmd, err)
		}
		// A typed nil (a nil map) means no arguments: QEMU refuses null.
		if string(a) != "null" {
			c.Args = json.RawMessage(a)
		}
	}
	req, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("qmp: %s: encode: %w", cmd, err)
	}
	type result struct {
		raw []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		raw, err := s.mon.Run(req)
		ch <- result{raw, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
	case <-s.done:
		return fmt.Errorf("qmp: %s: %w", cmd, s.lostErr())
	}
	if r.err != nil {
		var se *json.SyntaxError
		if errors.As(r.err, &se) || errors.Is(r.err, net.ErrClosed) || isEOFLike(r.err) {
			// The connection ended. Let the event pump drain first, so the
			// error names a SHUTDOWN reason that arrived just before.
			select {
			case <-s.done:
			case <-time.After(time.Second):
			}
			return fmt.Errorf("qmp: %s: %w", cmd, s.lostErr())
		}
		return &CommandError{Command: cmd, Desc: r.err.Error()}
	}
	if reply == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(r.raw, &resp); err != nil {
		return fmt.Errorf("qmp: %s: decode reply: %w", cmd, err)
	}
	if err := json.Unmarshal(resp.Return, reply); err != nil {
		return fmt.Errorf("qmp: %s: decode reply %s: %w", cmd, truncate(resp.Return), err)
	}
	return nil
}

func isEOFLike(err error) bool {
	return err != nil && (err.Error() == "unexpected end of JSON input" || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
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
	err := s.mon.Disconnect()
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
