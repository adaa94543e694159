package wanemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drsync/drsync/internal/bufpool"
)

// Defaults for Options.
const (
	DefaultMaxLifetime = 30 * time.Minute
	DefaultMTU         = 1500
	DefaultDeviceQueue = 2048
)

// Side names one end of the link.
type Side int

const (
	SideA Side = iota
	SideB
)

func (s Side) String() string {
	if s == SideA {
		return "A"
	}
	return "B"
}

// Direction names one way through the link.
type Direction int

const (
	AtoB Direction = iota
	BtoA
)

func (d Direction) String() string {
	if d == AtoB {
		return "A->B"
	}
	return "B->A"
}

// ErrExpired is what Err returns after the emulator stopped itself at
// Options.MaxLifetime.
var ErrExpired = errors.New("wanemu: emulator reached its MaxLifetime and stopped")

// ErrStopped is returned by the methods that need a running emulator.
var ErrStopped = errors.New("wanemu: emulator stopped")

// Options configure an Emulator. Zero values take defaults.
type Options struct {
	// AtoB and BtoA are the settings of each direction; both can be
	// changed later.
	AtoB, BtoA Settings
	// Seed drives random loss and jitter, so that a run can be repeated
	// (as far as the packets arrive in the same order at the same times).
	Seed uint64
	// MaxLifetime is a hard deadline: after it the emulator stops and
	// tears itself down even if nobody calls Stop. Default 30 minutes.
	MaxLifetime time.Duration
	// MTU of both TUN devices, 68 to 65535. Default 1500.
	MTU int
	// MaxInFlightBytes bounds, per direction, the packet bytes held in
	// the queue and the delay line. Default DefaultMaxInFlightBytes.
	MaxInFlightBytes int
	// DeviceQueue is the transmit queue of each TUN device, in packets:
	// what the kernel holds for the relay to read. A sender that outruns
	// a relay starved of CPU for longer loses packets there, before the
	// emulated link (counted as DirStats.Unread). Default
	// DefaultDeviceQueue.
	DeviceQueue int
}

// Stats counts both directions.
type Stats struct {
	AtoB, BtoA DirStats
}

// Emulator is a running WAN link between two network namespaces. All
// methods are safe for concurrent use.
type Emulator struct {
	ip       string // path of the ip command
	ns       [2]string
	dev      [2]string
	addr     [2]netip.Addr
	prefix   netip.Prefix
	mtu      int
	txq      int
	reaper   *reaper
	tun      [2]*os.File
	pipes    [2]*pipe      // indexed by Direction
	quit     chan struct{} // closed when stopping begins
	done     chan struct{} // closed when stopping is over
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
	reason   atomic.Pointer[error]
}

var instances atomic.Int64

// Start creates the two namespaces and their TUN devices, and runs the
// link between them in this process until Stop, until ctx is done or until
// opts.MaxLifetime has passed, whichever comes first.
func Start(ctx context.Context, opts Options) (*Emulator, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch {
	case opts.MTU == 0:
		opts.MTU = DefaultMTU
	case opts.MTU < 68 || opts.MTU > 65535:
		return nil, fmt.Errorf("wanemu: MTU %d is outside 68..65535", opts.MTU)
	}
	if opts.MaxLifetime <= 0 {
		opts.MaxLifetime = DefaultMaxLifetime
	}
	if opts.DeviceQueue <= 0 {
		opts.DeviceQueue = DefaultDeviceQueue
	}
	ip, err := checkPrereqs()
	if err != nil {
		return nil, err
	}
	removeStale(ip)

	n := instances.Add(1)
	pid := os.Getpid()
	subnet := byte(n % 256)
	e := &Emulator{
		ip:     ip,
		ns:     [2]string{fmt.Sprintf("%s%d-%d-a", NamePrefix, pid, n), fmt.Sprintf("%s%d-%d-b", NamePrefix, pid, n)},
		dev:    [2]string{"wana", "wanb"},
		addr:   [2]netip.Addr{netip.AddrFrom4([4]byte{10, 77, subnet, 1}), netip.AddrFrom4([4]byte{10, 77, subnet, 2})},
		prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, subnet, 0}), 30),
		mtu:    opts.MTU,
		txq:    opts.DeviceQueue,
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	// The reaper first: from here on, a death of this process leaves
	// nothing behind.
	if e.reaper, err = startReaper(ip, e.ns[0], e.ns[1]); err != nil {
		return nil, err
	}
	if err := e.setup(ctx); err != nil {
		e.teardown()
		return nil, err
	}
	e.pipes[AtoB] = newPipe(NewLink(opts.AtoB, opts.Seed, 1, opts.MaxInFlightBytes), e.tun[SideA], e.tun[SideB], opts.MTU)
	e.pipes[BtoA] = newPipe(NewLink(opts.BtoA, opts.Seed, 2, opts.MaxInFlightBytes), e.tun[SideB], e.tun[SideA], opts.MTU)
	for _, p := range e.pipes {
		e.wg.Add(2)
		go e.readLoop(p)
		go e.writeLoop(p)
	}
	go e.watch(ctx, opts.MaxLifetime)
	return e, nil
}

// setup creates and configures both namespaces.
func (e *Emulator) setup(ctx context.Context) error {
	for _, side := range []Side{SideA, SideB} {
		if err := addNetns(ctx, e.ip, e.ns[side]); err != nil {
			return err
		}
	}
	for _, side := range []Side{SideA, SideB} {
		f, err := openTUN(e.nsPath(side), e.dev[side])
		if err != nil {
			return err
		}
		e.tun[side] = f
		// No IPv6 link-local address: the link carries only what the
		// test sends, not router solicitations and listener reports.
		dev := e.dev[side]
		batch := fmt.Sprintf("link set dev lo up\n"+
			"link set dev %s addrgenmode none\n"+
			"link set dev %s mtu %d txqueuelen %d\n"+
			"addr add %s/%d dev %s\n"+
			"link set dev %s up\n",
			dev, dev, e.mtu, e.txq, e.addr[side], e.prefix.Bits(), dev, dev)
		if err := runIP(ctx, e.ip, batch, "-n", e.ns[side], "-batch", "-"); err != nil {
			return err
		}
	}
	return nil
}

// watch stops the emulator when ctx is done or its lifetime is over.
func (e *Emulator) watch(ctx context.Context, lifetime time.Duration) {
	t := time.NewTimer(lifetime)
	defer t.Stop()
	select {
	case <-ctx.Done():
		e.stop(context.Cause(ctx))
	case <-t.C:
		e.stop(ErrExpired)
	case <-e.quit:
	}
}

// Stop stops the relay and deletes both namespaces, with their devices.
// Sockets made in a namespace keep it alive, unreachable, until they are
// closed. Stop may be called more than once; later calls return the
// first one's result.
func (e *Emulator) Stop() error {
	e.stop(nil)
	return e.stopErr
}

func (e *Emulator) stop(reason error) {
	e.stopOnce.Do(func() {
		e.reason.Store(&reason)
		close(e.quit)
		e.stopErr = e.teardown()
		close(e.done)
	})
}

// teardown closes the devices, waits for the relay and deletes the
// namespaces.
func (e *Emulator) teardown() error {
	for _, f := range e.tun {
		if f != nil {
			f.Close() // interrupts the reads
		}
	}
	e.wg.Wait()
	var errs []error
	for _, ns := range e.ns {
		if !netnsExists(ns) {
			continue
		}
		if err := delNetns(e.ip, ns); err != nil {
			errs = append(errs, err)
		}
	}
	e.reaper.finish(len(errs) == 0)
	return errors.Join(errs...)
}

// Done is closed when the emulator has stopped and torn down, whatever the
// cause.
func (e *Emulator) Done() <-chan struct{} { return e.done }

// Err returns why the emulator stopped: nil while it runs or after Stop,
// ErrExpired after MaxLifetime, or the cause of the context given to
// Start.
func (e *Emulator) Err() error {
	if p := e.reason.Load(); p != nil {
		return *p
	}
	return nil
}

// Set changes the settings of one direction. Packets already accepted
// keep their delivery times.
func (e *Emulator) Set(dir Direction, s Settings) {
	p := e.pipes[dir]
	p.mu.Lock()
	p.link.Set(time.Now(), s)
	p.mu.Unlock()
}

// SetBoth gives both directions the settings s.
func (e *Emulator) SetBoth(s Settings) {
	e.Set(AtoB, s)
	e.Set(BtoA, s)
}

// Settings returns the settings of one direction, normalized.
func (e *Emulator) Settings(dir Direction) Settings {
	p := e.pipes[dir]
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link.Settings()
}

// SetDown cuts both directions (true), losing the packets in flight, or
// restores them (false), which also ends an Outage early.
func (e *Emulator) SetDown(down bool) {
	for _, p := range e.pipes {
		p.mu.Lock()
		p.link.SetDown(time.Now(), down)
		p.mu.Unlock()
	}
}

// Outage cuts both directions for d from now, losing the packets in
// flight; the link comes back by itself.
func (e *Emulator) Outage(d time.Duration) {
	for _, p := range e.pipes {
		p.mu.Lock()
		p.link.Outage(time.Now(), d)
		p.mu.Unlock()
	}
}

// Stats returns the counters so far.
func (e *Emulator) Stats() Stats {
	st := Stats{AtoB: e.pipes[AtoB].stats(), BtoA: e.pipes[BtoA].stats()}
	st.AtoB.Unread = e.unread(SideA, AtoB)
	st.BtoA.Unread = e.unread(SideB, BtoA)
	return st
}

// unread returns the packets a side's kernel dropped because its TUN
// device's queue was full, or the last count read while the emulator ran.
func (e *Emulator) unread(side Side, dir Direction) uint64 {
	p := e.pipes[dir]
	var n uint64
	err := e.In(side, func() (err error) {
		n, err = txDropped(e.dev[side])
		return err
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.unread = n
	}
	return p.unread
}

// txDropped reads a device's transmit drops in the network namespace of
// the calling thread.
func txDropped(dev string) (uint64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		name, counters, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != dev {
			continue
		}
		// Eight receive counters, then transmit bytes, packets, errs, drop.
		f := strings.Fields(counters)
		if len(f) < 12 {
			break
		}
		return strconv.ParseUint(f[11], 10, 64)
	}
	return 0, fmt.Errorf("wanemu: no counters for %s", dev)
}

// AddrA is the address of side A's device.
func (e *Emulator) AddrA() netip.Addr { return e.addr[SideA] }

// AddrB is the address of side B's device.
func (e *Emulator) AddrB() netip.Addr { return e.addr[SideB] }

// Addr is the address of a side's device.
func (e *Emulator) Addr(side Side) netip.Addr { return e.addr[side] }

// Prefix is the subnet of both devices.
func (e *Emulator) Prefix() netip.Prefix { return e.prefix }

// Namespace is the name of a side's network namespace, for ip netns.
func (e *Emulator) Namespace(side Side) string { return e.ns[side] }

// Device is the name of a side's TUN device inside its namespace.
func (e *Emulator) Device(side Side) string { return e.dev[side] }

func (e *Emulator) nsPath(side Side) string { return filepath.Join(netnsDir, e.ns[side]) }

func (e *Emulator) stopped() bool {
	select {
	case <-e.quit:
		return true
	default:
		return false
	}
}

// Wrap rewrites cmd, not yet started, to run inside a side's namespace
// through "ip netns exec", which also mounts that namespace's /sys for it.
// The command's Args[0] is replaced by its Path.
func (e *Emulator) Wrap(side Side, cmd *exec.Cmd) error {
	if cmd.Process != nil {
		return errors.New("wanemu: Wrap: command already started")
	}
	if cmd.Err != nil {
		return cmd.Err
	}
	if e.stopped() {
		return ErrStopped
	}
	var rest []string
	if len(cmd.Args) > 1 {
		rest = cmd.Args[1:]
	}
	args := []string{e.ip, "netns", "exec", e.ns[side], cmd.Path}
	cmd.Args = append(args, rest...)
	cmd.Path = e.ip
	return nil
}

// RunIn runs cmd inside a side's namespace and waits for it, as cmd.Run.
func (e *Emulator) RunIn(side Side, cmd *exec.Cmd) error {
	if err := e.Wrap(side, cmd); err != nil {
		return err
	}
	return cmd.Run()
}

// RunInA runs cmd inside namespace A and waits for it.
func (e *Emulator) RunInA(cmd *exec.Cmd) error { return e.RunIn(SideA, cmd) }

// RunInB runs cmd inside namespace B and waits for it.
func (e *Emulator) RunInB(cmd *exec.Cmd) error { return e.RunIn(SideB, cmd) }

// In runs fn on an OS thread inside a side's network namespace. Sockets
// fn creates belong to that namespace for their whole life and can be
// used from any goroutine afterwards. fn runs on another goroutine, so it
// must not call t.FailNow; and it must not start goroutines that create
// sockets, which would be made in this process's own namespace.
func (e *Emulator) In(side Side, fn func() error) error {
	if e.stopped() {
		return ErrStopped
	}
	return inNetns(e.nsPath(side), fn)
}

// ListenPacket is net.ListenPacket inside a side's namespace.
func (e *Emulator) ListenPacket(side Side, network, address string) (net.PacketConn, error) {
	if err := literalHost(address, true); err != nil {
		return nil, err
	}
	var c net.PacketConn
	err := e.In(side, func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Listen is net.Listen inside a side's namespace.
func (e *Emulator) Listen(side Side, network, address string) (net.Listener, error) {
	if err := literalHost(address, true); err != nil {
		return nil, err
	}
	var l net.Listener
	err := e.In(side, func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// Dial is net.Dialer.DialContext inside a side's namespace. The address
// must be an IP address and port: a host name would be looked up, and
// dialled, from other threads.
func (e *Emulator) Dial(ctx context.Context, side Side, network, address string) (net.Conn, error) {
	if err := literalHost(address, false); err != nil {
		return nil, err
	}
	var c net.Conn
	err := e.In(side, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// literalHost insists on an IP address (or, when emptyOK, no host) in a
// host:port address.
func literalHost(address string, emptyOK bool) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("wanemu: address %q: %w", address, err)
	}
	if host == "" && emptyOK {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("wanemu: address %q: host must be an IP address", address)
	}
	return nil
}

// pipe is one direction of the relay: packets read from src pass through
// link and are written to dst when due.
type pipe struct {
	src, dst *os.File
	wake     chan struct{}
	bufs     *bufpool.Pool // MTU-sized buffers for reuse

	mu     sync.Mutex
	link   *Link
	errs   Counter // writes that failed
	unread uint64  // last count of drops in the source device
}

// smallPacket is the size up to which a packet gets a buffer of its own
// size rather than one of MTU size, so that a delay line full of ACKs
// does not hold MTU-sized buffers.
const smallPacket = 512

func newPipe(l *Link, src, dst *os.File, mtu int) *pipe {
	return &pipe{
		src:  src,
		dst:  dst,
		link: l,
		wake: make(chan struct{}, 1),
		bufs: bufpool.New(mtu, 1024),
	}
}

func (p *pipe) alloc(n int) []byte {
	if n <= smallPacket {
		return make([]byte, n)
	}
	return p.bufs.Get(n)
}

func (p *pipe) release(b []byte) {
	if cap(b) > smallPacket {
		p.bufs.Put(b)
	}
}

func (p *pipe) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pipe) stats() DirStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.link.Stats()
	s.Forwarded.Packets -= p.errs.Packets
	s.Forwarded.Bytes -= p.errs.Bytes
	s.Error = p.errs
	return s
}

// write hands delivered packets to the far side.
func (p *pipe) write(batch []Packet) {
	var failed Counter
	for i := range batch {
		if _, err := p.dst.Write(batch[i].Data); err != nil {
			failed.add(len(batch[i].Data))
		}
		p.release(batch[i].Data)
		batch[i] = Packet{}
	}
	if failed.Packets > 0 {
		p.mu.Lock()
		p.errs.Packets += failed.Packets
		p.errs.Bytes += failed.Bytes
		p.mu.Unlock()
	}
}

// readLoop feeds the link with what its source device emits. Writing is
// left to writeLoop even for packets due at once: the two then run on two
// threads, which BenchmarkRelay shows to carry about twice the packets.
func (e *Emulator) readLoop(p *pipe) {
	defer e.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := p.src.Read(buf)
		if err != nil {
			if e.stopped() || errors.Is(err, os.ErrClosed) {
				return
			}
			// Not expected from a TUN device; do not spin on it.
			select {
			case <-e.quit:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if n == 0 {
			continue
		}
		data := p.alloc(n)
		copy(data, buf[:n])
		p.mu.Lock()
		wasEmpty := p.link.pending.len() == 0
		_, why := p.link.Send(time.Now(), data)
		p.mu.Unlock()
		switch {
		case why != Kept:
			p.release(data)
		case wasEmpty:
			// Packets are due in the order they are sent, so only a
			// packet into an empty link changes when writeLoop must wake.
			p.signal()
		}
	}
}

// writeLoop writes packets to the destination device when they are due.
func (e *Emulator) writeLoop(p *pipe) {
	defer e.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []Packet
	for {
		// Times are read under the lock, so that the link sees them in
		// order.
		p.mu.Lock()
		now := time.Now()
		batch = p.link.Deliver(now, batch[:0])
		next, armed := p.link.Next()
		p.mu.Unlock()
		if len(batch) > 0 {
			p.write(batch)
			continue
		}
		if armed {
			timer.Reset(next.Sub(now))
		}
		select {
		case <-e.quit:
			timer.Stop()
			return
		case <-p.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// String describes the emulator for logs.
func (e *Emulator) String() string {
	return "wanemu " + e.ns[SideA] + " " + e.addr[SideA].String() + " <-> " + e.ns[SideB] + " " + e.addr[SideB].String() + " mtu " + strconv.Itoa(e.mtu)
}
