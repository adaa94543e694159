package udprelay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

const (
	maxDatagram       = 64 << 10
	defaultQueueLimit = 1024
	defaultMaxClients = 256
)

// Options configure a Relay. Zero values take defaults.
type Options struct {
	// Seed drives random loss, so that a test sees the same drops each run.
	Seed uint64
	// QueueLimit is the number of datagrams that may wait, per direction,
	// for their delay or rate slot; beyond it they are dropped. Default 1024.
	QueueLimit int
	// MaxClients bounds client sessions; datagrams from further clients are
	// dropped. Default 256: each connection of a striped stream (up to 8
	// per sender) is a client of its own, and sessions are never expired,
	// so a test that restarts senders many times needs room.
	MaxClients int
}

// DirStats counts one direction's datagrams.
type DirStats struct {
	Packets, Bytes               uint64 // forwarded
	DroppedPackets, DroppedBytes uint64
}

// Stats counts both directions.
type Stats struct {
	ToUpstream DirStats // from clients to the upstream address
	ToClient   DirStats // from upstream back to clients
}

// Relay forwards datagrams between clients and one upstream address.
// All methods are safe for concurrent use.
type Relay struct {
	ln       *net.UDPConn
	upstream *net.UDPAddr
	opts     Options
	done     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	down     bool
	delay    time.Duration
	loss     float64
	rate     int64 // bytes per second; 0 means unlimited
	sessions map[netip.AddrPort]*session
	toUp     *direction
	toClient *direction
}

// session is one client, with its own socket towards upstream so that
// replies can be told apart.
type session struct {
	client netip.AddrPort
	up     *net.UDPConn
}

// direction holds one way's impairment state. Guarded by Relay.mu.
type direction struct {
	toUpstream  bool
	rng         *rand.Rand
	queue       []packet
	sending     int // datagrams being sent outside the lock
	tokens      float64
	refilled    time.Time
	lastRelease time.Time
	wake        chan struct{}
	stats       DirStats
}

type packet struct {
	data []byte
	sess *session
	at   time.Time
}

// New starts a relay on listenAddr forwarding to upstreamAddr, with default
// options. Both must be loopback addresses.
func New(listenAddr, upstreamAddr string) (*Relay, error) {
	return NewWithOptions(listenAddr, upstreamAddr, Options{})
}

// NewWithOptions is New with options.
func NewWithOptions(listenAddr, upstreamAddr string, opts Options) (*Relay, error) {
	if opts.QueueLimit < 0 || opts.MaxClients < 0 {
		return nil, errors.New("udprelay: negative option")
	}
	if opts.QueueLimit == 0 {
		opts.QueueLimit = defaultQueueLimit
	}
	if opts.MaxClients == 0 {
		opts.MaxClients = defaultMaxClients
	}
	la, err := loopback("listen", listenAddr)
	if err != nil {
		return nil, err
	}
	ua, err := loopback("upstream", upstreamAddr)
	if err != nil {
		return nil, err
	}
	if ua.Port == 0 {
		return nil, fmt.Errorf("udprelay: upstream address %q has no port", upstreamAddr)
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, fmt.Errorf("udprelay: listen: %w", err)
	}
	r := &Relay{
		ln:       ln,
		upstream: ua,
		opts:     opts,
		done:     make(chan struct{}),
		sessions: make(map[netip.AddrPort]*session),
		toUp:     newDirection(true, opts.Seed),
		toClient: newDirection(false, opts.Seed),
	}
	r.wg.Add(3)
	go r.readClients()
	go r.pump(r.toUp)
	go r.pump(r.toClient)
	return r, nil
}

func newDirection(toUpstream bool, seed uint64) *direction {
	// Each direction has its own stream so that its drops do not depend on
	// how the two directions' datagrams interleave.
	stream := uint64(1)
	if toUpstream {
		stream = 2
	}
	return &direction{
		toUpstream: toUpstream,
		rng:        rand.New(rand.NewPCG(seed, stream)),
		wake:       make(chan struct{}, 1),
	}
}

// loopback parses addr and insists that it is a loopback address: this
// tool must never send traffic off the machine. Host names other than
// "localhost" are refused rather than looked up, so not even a DNS query
// leaves.
func loopback(what, addr string) (*net.UDPAddr, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("udprelay: %s address: %w", what, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() {
		return nil, fmt.Errorf("udprelay: %s address %q is not a loopback IP address; the relay only works within this machine", what, addr)
	}
	ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(ip.String(), port))
	if err != nil {
		return nil, fmt.Errorf("udprelay: %s address: %w", what, err)
	}
	return ua, nil
}

// Addr is the address clients send to.
func (r *Relay) Addr() net.Addr { return r.ln.LocalAddr() }

// SetDown cuts (true) or restores (false) the link in both directions.
// Cutting also loses the datagrams still queued, as on a real link.
func (r *Relay) SetDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
	if down {
		for _, d := range []*direction{r.toUp, r.toClient} {
			for _, p := range d.queue {
				d.drop(len(p.data))
			}
			clear(d.queue)
			d.queue = d.queue[:0]
			// What was queued never used the link: forget its schedule.
			d.lastRelease = time.Time{}
			d.tokens = r.burst()
		}
	}
}

// SetDelay adds d to each direction, so the round trip grows by 2d.
func (r *Relay) SetDelay(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delay = max(d, 0)
}

// SetLoss drops each datagram with probability p, clamped to [0, 1].
func (r *Relay) SetLoss(p float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loss = min(max(p, 0), 1)
}

// SetRate limits each direction to bytesPerSec with a token bucket holding
// 50 ms worth of bytes; datagrams over the rate wait in the queue. Zero or
// less removes the limit.
func (r *Relay) SetRate(bytesPerSec int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rate = max(bytesPerSec, 0)
	now := time.Now()
	for _, d := range []*direction{r.toUp, r.toClient} {
		d.tokens = r.burst()
		d.refilled = now
	}
}

func (r *Relay) burst() float64 {
	return max(float64(r.rate)/20, 1500)
}

// Stats returns the counters so far.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{ToUpstream: r.toUp.stats, ToClient: r.toClient.stats}
}

// Close stops the relay and waits for all its goroutines to end.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	sessions := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	r.mu.Unlock()

	close(r.done)
	err := r.ln.Close()
	for _, s := range sessions {
		s.up.Close()
	}
	r.wg.Wait()
	return err
}

func (r *Relay) isClosed() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// readClients forwards what clients send towards upstream.
func (r *Relay) readClients() {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := r.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.isClosed() {
				return
			}
			continue
		}
		if !from.Addr().Unmap().IsLoopback() {
			continue // unreachable on a loopback socket; never answer it
		}
		s := r.session(from)
		if s == nil {
			r.mu.Lock()
			r.toUp.drop(n)
			r.mu.Unlock()
			continue
		}
		r.forward(r.toUp, s, buf[:n])
	}
}

// session returns the client's session, creating it if there is room.
func (r *Relay) session(client netip.AddrPort) *session {
	r.mu.Lock()
	s, ok := r.sessions[client]
	full := len(r.sessions) >= r.opts.MaxClients
	r.mu.Unlock()
	if ok {
		return s
	}
	if full {
		return nil
	}
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	if r.upstream.IP.To4() == nil {
		local = &net.UDPAddr{IP: net.IPv6loopback}
	}
	up, err := net.DialUDP("udp", local, r.upstream)
	if err != nil {
		return nil
	}
	s = &session{client: client, up: up}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		up.Close()
		return nil
	}
	r.sessions[client] = s
	r.wg.Add(1)
	go r.readUpstream(s)
	return s
}

// readUpstream forwards what upstream sends back to the session's client.
func (r *Relay) readUpstream(s *session) {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := s.up.Read(buf)
		if err != nil {
			if r.isClosed() {
				return
			}
			// A connected UDP socket reports an ICMP "port unreachable"
			// from an absent upstream as a read error; keep going.
			continue
		}
		r.forward(r.toClient, s, buf[:n])
	}
}

// forward applies the impairments to one datagram: drop it, send it now,
// or queue it for the pump.
func (r *Relay) forward(d *direction, s *session, b []byte) {
	r.mu.Lock()
	if r.down || (r.loss > 0 && d.rng.Float64() < r.loss) || len(d.queue) >= r.opts.QueueLimit {
		d.drop(len(b))
		r.mu.Unlock()
		return
	}
	now := time.Now()
	at := now.Add(r.delay)
	if r.rate > 0 {
		d.tokens = min(r.burst(), d.tokens+now.Sub(d.refilled).Seconds()*float64(r.rate))
		d.refilled = now
		// Tokens may go negative: the debt is the wait of this datagram,
		// and every later one queues behind it, which keeps order.
		d.tokens -= float64(len(b))
		if d.tokens < 0 {
			at = at.Add(time.Duration(-d.tokens / float64(r.rate) * float64(time.Second)))
		}
	}
	if at.Before(d.lastRelease) {
		at = d.lastRelease // a shortened delay must not reorder
	}
	d.lastRelease = at
	if !at.After(now) && len(d.queue) == 0 && d.sending == 0 {
		d.sending++
		r.mu.Unlock()
		r.send(d, packet{data: b, sess: s})
		return
	}
	d.queue = append(d.queue, packet{data: append([]byte(nil), b...), sess: s, at: at})
	r.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// send writes one datagram; the caller has counted it in d.sending.
func (r *Relay) send(d *direction, p packet) {
	var err error
	if d.toUpstream {
		_, err = p.sess.up.Write(p.data)
	} else {
		_, err = r.ln.WriteToUDPAddrPort(p.data, p.sess.client)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d.sending--
	if err != nil {
		d.drop(len(p.data))
		return
	}
	d.stats.Packets++
	d.stats.Bytes += uint64(len(p.data))
}

// pump sends queued datagrams when they are due.
func (r *Relay) pump(d *direction) {
	defer r.wg.Done()
	timer := time.NewTimer(0)
	timer.Stop()
	defer timer.Stop()
	for {
		var due <-chan time.Time
		r.mu.Lock()
		if len(d.queue) > 0 {
			head := d.queue[0]
			if wait := time.Until(head.at); wait > 0 {
				timer.Reset(wait)
				due = timer.C
			} else {
				d.queue[0] = packet{}
				d.queue = d.queue[1:]
				d.sending++
				r.mu.Unlock()
				r.send(d, head)
				continue
			}
		}
		r.mu.Unlock()
		select {
		case <-d.wake:
		case <-due:
		case <-r.done:
			return
		}
	}
}

func (d *direction) drop(n int) {
	d.stats.DroppedPackets++
	d.stats.DroppedBytes += uint64(n)
}
