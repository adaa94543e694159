package libvirtvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/qmp"
)

// ErrNoDomain is returned when libvirt knows no domain by the name or UUID
// given. A domain that exists but does not run is qmp.ErrNoSocket, like a
// QEMU whose socket nobody listens on.
var ErrNoDomain = errors.New("no such libvirt domain")

// Monitor is a running domain's QEMU monitor reached through libvirt: QMP
// commands passed through virDomainQemuMonitorCommand, QEMU's events from
// virConnectDomainQemuMonitorEventRegister, and the domain's end from
// libvirt's lifecycle events. It implements livecut.Monitor and follows
// qmp's conventions. It is safe for concurrent use.
type Monitor struct {
	conn *libvirt.Libvirt
	life *libvirt.Libvirt // lifecycle events only (see open)
	dom  libvirt.Domain
	uri  string
	ver  qmp.Version
	stop context.CancelFunc // ends the event streams

	mu       sync.Mutex
	subs     map[*subscription]struct{}
	done     chan struct{}
	lost     string // why the monitor ended, once done is closed
	shutdown string // reason of a SHUTDOWN event, if one came
	closed   bool
}

// LookupDomain finds a domain by name or by UUID.
func LookupDomain(l *libvirt.Libvirt, uri, domain string) (libvirt.Domain, error) {
	d, err := l.DomainLookupByName(domain)
	if err == nil {
		return d, nil
	}
	if !isCode(err, libvirt.ErrNoDomain) {
		return libvirt.Domain{}, fmt.Errorf("libvirt: %s: look up domain %q: %w", uri, domain, err)
	}
	if u, perr := parseUUID(domain); perr == nil {
		if d, err := l.DomainLookupByUUID(u); err == nil {
			return d, nil
		}
	}
	return libvirt.Domain{}, fmt.Errorf("libvirt: %s: domain %q: %w", uri, domain, ErrNoDomain)
}

// Dial connects to the QEMU monitor of the running domain named domain
// (name or UUID) at libvirt uri. o.CheckVersion applies as in qmp.Dial;
// o.GreetingTimeout bounds the connection when ctx has no deadline.
func Dial(ctx context.Context, uri, domain string, o qmp.Options) (*Monitor, error) {
	if o.GreetingTimeout <= 0 {
		o.GreetingTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, o.GreetingTimeout)
	defer cancel()
	l, err := Connect(ctx, uri)
	if err != nil {
		return nil, err
	}
	// go-libvirt routes events by callback ID alone, and libvirt numbers
	// lifecycle and QEMU monitor callbacks separately: on one connection
	// they would collide. Lifecycle events get a connection of their own.
	ll, err := Connect(ctx, uri)
	if err != nil {
		l.Disconnect()
		return nil, err
	}
	m, err := open(ctx, l, ll, uri, domain, o)
	if err != nil {
		l.Disconnect()
		ll.Disconnect()
		return nil, err
	}
	return m, nil
}

func open(ctx context.Context, l, ll *libvirt.Libvirt, uri, domain string, o qmp.Options) (*Monitor, error) {
	dom, err := LookupDomain(l, uri, domain)
	if err != nil {
		return nil, err
	}
	evctx, stop := context.WithCancel(context.Background())
	m := &Monitor{conn: l, life: ll, dom: dom, uri: uri, stop: stop, subs: map[*subscription]struct{}{}, done: make(chan struct{})}
	// Events first: a domain that stops between the state check below and
	// the subscription would otherwise never end the monitor.
	life, err := ll.SubscribeEvents(evctx, libvirt.DomainEventIDLifecycle, libvirt.OptDomain{dom})
	if err != nil {
		stop()
		return nil, fmt.Errorf("libvirt: %s: subscribe to lifecycle events: %w", uri, err)
	}
	qev, err := l.SubscribeQEMUEvents(evctx, dom.Name)
	if err != nil {
		stop()
		return nil, fmt.Errorf("libvirt: %s: subscribe to QEMU events of %q: %w", uri, dom.Name, err)
	}
	go m.watch(life, qev)
	state, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("libvirt: %s: state of %q: %w", uri, dom.Name, err)
	}
	if s := libvirt.DomainState(state); s == libvirt.DomainShutoff || s == libvirt.DomainShutdown || s == libvirt.DomainCrashed {
		m.Close()
		return nil, fmt.Errorf("libvirt: %s: domain %q is not running (%s): %w", uri, dom.Name, stateName(s), qmp.ErrNoSocket)
	}
	var v struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := m.Execute(ctx, "query-version", nil, &v); err != nil {
		m.Close()
		return nil, err
	}
	m.ver = qmp.Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	if o.CheckVersion != nil {
		if err := o.CheckVersion(m.ver); err != nil {
			m.Close()
			return nil, fmt.Errorf("libvirt: QEMU %s of domain %q: %w: %w", m.ver, dom.Name, err, qmp.ErrUnsupportedVersion)
		}
	}
	return m, nil
}

// watch hands QEMU's events to subscribers and ends the monitor when the
// domain stops, is undefined, or the libvirt connection is lost.
func (m *Monitor) watch(life <-chan any, qev <-chan libvirt.DomainEvent) {
	for {
		select {
		case ev, ok := <-qev:
			if !ok {
				m.end("the QEMU event stream ended")
				return
			}
			m.event(ev)
		case ev, ok := <-life:
			if !ok {
				m.end("the lifecycle event stream ended")
				return
			}
			msg, ok := ev.(*libvirt.DomainEventCallbackLifecycleMsg)
			if !ok || msg.Msg.Dom.UUID != m.dom.UUID {
				continue
			}
			switch libvirt.DomainEventType(msg.Msg.Event) {
			case libvirt.DomainEventStopped:
				m.end("domain stopped (" + stoppedDetail(msg.Msg.Detail) + ")")
				return
			case libvirt.DomainEventUndefined:
				m.end("domain undefined")
				return
			}
		case <-m.conn.Disconnected():
			m.end("the libvirt connection was lost")
			return
		case <-m.life.Disconnected():
			m.end("the libvirt connection was lost")
			return
		}
	}
}

func (m *Monitor) event(ev libvirt.DomainEvent) {
	e := qmp.Event{Name: ev.Event, At: time.Unix(int64(ev.Seconds), int64(ev.Microseconds)*1000)}
	if len(ev.Details) > 0 {
		json.Unmarshal(ev.Details, &e.Data) // data that is not an object is dropped
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Name == "SHUTDOWN" {
		m.shutdown = e.Str("reason")
		if m.shutdown == "" {
			m.shutdown = "shutdown"
		}
	}
	for sub := range m.subs {
		sub.push(e)
	}
}

// end closes done once, with why.
func (m *Monitor) end(why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return
	default:
	}
	m.lost = why
	close(m.done)
}

// Version is the domain's QEMU version.
func (m *Monitor) Version() qmp.Version { return m.ver }

// Done is closed when the monitor ends: the domain stopped, the libvirt
// connection was lost, or Close.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Domain is the domain's name.
func (m *Monitor) Domain() string { return m.dom.Name }

// Conn is the libvirt connection the monitor uses.
func (m *Monitor) Conn() *libvirt.Libvirt { return m.conn }

func (m *Monitor) lostErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return fmt.Errorf("libvirt: monitor of %q closed: %w", m.dom.Name, qmp.ErrDisconnected)
	case m.shutdown != "":
		return fmt.Errorf("libvirt: QEMU of domain %q shut down (%s): %w", m.dom.Name, m.shutdown, qmp.ErrDisconnected)
	default:
		return fmt.Errorf("libvirt: domain %q at %s: %s: %w", m.dom.Name, m.uri, m.lost, qmp.ErrDisconnected)
	}
}

// Err is nil while the monitor works, and says why otherwise.
func (m *Monitor) Err() error {
	select {
	case <-m.done:
		return m.lostErr()
	default:
		return nil
	}
}

// Execute runs cmd with args (nil for none) through libvirt and decodes
// QEMU's return value into reply (nil to ignore it). A context that ends
// abandons the wait, not the command.
func (m *Monitor) Execute(ctx context.Context, cmd string, args, reply any) error {
	if err := m.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("libvirt: %s: %w", cmd, err)
	}
	// libvirt gives the command its own id.
	req, err := qmp.EncodeCommand("libvirt", cmd, args, "")
	if err != nil {
		return err
	}
	type result struct {
		out string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		out, err := m.conn.QEMUDomainMonitorCommand(m.dom, string(req), 0)
		ch <- result{out, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("libvirt: %s: %w", cmd, ctx.Err())
	case <-m.done:
		select {
		case r = <-ch:
		case <-time.After(time.Second):
			return fmt.Errorf("libvirt: %s: %w", cmd, m.lostErr())
		}
	}
	if r.err != nil {
		return m.rpcErr(cmd, r.err)
	}
	var msg qmp.Reply
	if err := json.Unmarshal([]byte(r.out), &msg); err != nil {
		return fmt.Errorf("libvirt: %s: decode QEMU's reply %.200q: %w", cmd, r.out, err)
	}
	return msg.Decode("libvirt", cmd, reply)
}

// rpcErr is libvirt's refusal of a pass-through: a domain that stopped
// (or a lost connection) is a lost monitor, as with a QMP socket.
func (m *Monitor) rpcErr(cmd string, err error) error {
	if isCode(err, libvirt.ErrOperationInvalid) || isCode(err, libvirt.ErrNoDomain) || !m.conn.IsConnected() {
		// The lifecycle event may trail libvirt's refusal.
		select {
		case <-m.done:
		case <-time.After(time.Second):
			m.end(err.Error())
		}
		return fmt.Errorf("libvirt: %s: %w", cmd, m.lostErr())
	}
	return fmt.Errorf("libvirt: %s on domain %q: %w", cmd, m.dom.Name, err)
}

// Close ends the monitor and its libvirt connection.
func (m *Monitor) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.stop()
	m.end("closed")
	m.life.Disconnect()
	if err := m.conn.Disconnect(); err != nil && m.conn.IsConnected() {
		return fmt.Errorf("libvirt: disconnect %s: %w", m.uri, err)
	}
	return nil
}

// Subscribe queues the QEMU events named (all if none) from now on.
func (m *Monitor) Subscribe(names ...string) qmp.Events {
	sub := &subscription{m: m, notify: make(chan struct{}, 1)}
	if len(names) > 0 {
		sub.names = map[string]bool{}
		for _, n := range names {
			sub.names[n] = true
		}
	}
	m.mu.Lock()
	m.subs[sub] = struct{}{}
	m.mu.Unlock()
	return sub
}

type subscription struct {
	m      *Monitor
	names  map[string]bool
	mu     sync.Mutex
	queue  []qmp.Event
	notify chan struct{}
}

func (sub *subscription) push(e qmp.Event) {
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

func (sub *subscription) Next(ctx context.Context) (qmp.Event, error) {
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
			return qmp.Event{}, ctx.Err()
		case <-sub.m.done:
			sub.mu.Lock()
			n := len(sub.queue)
			sub.mu.Unlock()
			if n == 0 {
				return qmp.Event{}, sub.m.lostErr()
			}
		}
	}
}

func (sub *subscription) Wait(ctx context.Context, match func(qmp.Event) bool) (qmp.Event, error) {
	return qmp.WaitFor(ctx, sub, match)
}

func (sub *subscription) Close() {
	sub.m.mu.Lock()
	delete(sub.m.subs, sub)
	sub.m.mu.Unlock()
}

func isCode(err error, code libvirt.ErrorNumber) bool {
	var e libvirt.Error
	return errors.As(err, &e) && e.Code == uint32(code)
}

func parseUUID(s string) (libvirt.UUID, error) {
	var u libvirt.UUID
	hex := make([]byte, 0, 32)
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			hex = append(hex, s[i])
		}
	}
	if len(hex) != 32 {
		return u, errors.New("not a UUID")
	}
	for i := range u {
		var b byte
		if _, err := fmt.Sscanf(string(hex[2*i:2*i+2]), "%02x", &b); err != nil {
			return u, errors.New("not a UUID")
		}
		u[i] = b
	}
	return u, nil
}

func stateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DomainShutoff:
		return "shut off"
	case libvirt.DomainShutdown:
		return "shutting down"
	case libvirt.DomainCrashed:
		return "crashed"
	}
	return fmt.Sprintf("state %d", s)
}

func stoppedDetail(d int32) string {
	switch libvirt.DomainEventStoppedDetailType(d) {
	case libvirt.DomainEventStoppedShutdown:
		return "shut down"
	case libvirt.DomainEventStoppedDestroyed:
		return "destroyed"
	case libvirt.DomainEventStoppedCrashed:
		return "crashed"
	case libvirt.DomainEventStoppedMigrated:
		return "migrated to another host"
	case libvirt.DomainEventStoppedSaved:
		return "saved"
	case libvirt.DomainEventStoppedFailed:
		return "failed"
	}
	return fmt.Sprintf("detail %d", d)
}
