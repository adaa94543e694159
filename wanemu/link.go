package wanemu

import (
	"math/rand/v2"
	"time"
)

// Defaults for Settings and Options.
const (
	// MinDefaultQueueBytes is the smallest default bottleneck queue: the
	// default is 1.5 bandwidth-delay products, but never less than this.
	MinDefaultQueueBytes = 64 << 10
	// DefaultMaxInFlightBytes bounds, per direction, the packet bytes the
	// emulator holds (queued plus travelling through the delay line).
	DefaultMaxInFlightBytes = 32 << 20
)

// Settings describe one direction of the link. The zero value is a perfect
// link: no delay, unlimited rate, no loss.
type Settings struct {
	// Delay is the one-way propagation delay added to every packet.
	Delay time.Duration
	// Jitter varies each packet's delay uniformly within ±Jitter. Packets
	// are never reordered: one that would overtake its predecessor leaves
	// with it instead, so jitter much larger than the packet spacing
	// raises the mean delay.
	Jitter time.Duration
	// RateBitsPerSec is the bottleneck rate, counting whole IP packets.
	// Zero or less means unlimited (no serialization, no queue).
	RateBitsPerSec int64
	// LossProb drops each packet with this probability, clamped to [0, 1].
	// Lost packets are dropped on arrival and use no link time.
	LossProb float64
	// QueueBytes is the bottleneck queue, counting the packet being sent.
	// A packet that would overflow it is dropped, as a router drops the
	// tail. Zero means 1.5 bandwidth-delay products with the round trip
	// taken as twice Delay, at least MinDefaultQueueBytes. An idle link
	// always accepts one packet, however small the queue.
	QueueBytes int
}

// normalize clamps nonsense to the nearest meaningful value.
func (s Settings) normalize() Settings {
	s.Delay = max(s.Delay, 0)
	s.Jitter = min(max(s.Jitter, 0), time.Hour)
	s.RateBitsPerSec = max(s.RateBitsPerSec, 0)
	if !(s.LossProb > 0) { // also catches NaN
		s.LossProb = 0
	}
	s.LossProb = min(s.LossProb, 1)
	s.QueueBytes = max(s.QueueBytes, 0)
	return s
}

// queueLimit is the effective QueueBytes.
func (s Settings) queueLimit() int {
	if s.QueueBytes > 0 {
		return s.QueueBytes
	}
	// 1.5 × rate × 2·Delay, in bytes: rate/8 × 3·Delay.
	bdp := float64(s.RateBitsPerSec) / 8 * 3 * s.Delay.Seconds()
	if bdp > 1<<30 {
		bdp = 1 << 30
	}
	return max(int(bdp), MinDefaultQueueBytes)
}

// DropReason says why a packet was not delivered.
type DropReason int

const (
	// Kept means the packet was accepted for delivery.
	Kept DropReason = iota
	// DropLoss is random loss (Settings.LossProb).
	DropLoss
	// DropQueue is a full bottleneck queue (Settings.QueueBytes).
	DropQueue
	// DropOutage is a link that is down.
	DropOutage
	// DropOverload is the emulator's own bound on bytes held
	// (MaxInFlightBytes): the emulation is no longer faithful.
	DropOverload
	// DropError is a failure to hand the packet to the far side.
	DropError
)

func (r DropReason) String() string {
	switch r {
	case Kept:
		return "kept"
	case DropLoss:
		return "loss"
	case DropQueue:
		return "queue"
	case DropOutage:
		return "outage"
	case DropOverload:
		return "overload"
	case DropError:
		return "error"
	}
	return "unknown"
}

// Counter counts packets and their bytes (whole IP packets).
type Counter struct {
	Packets, Bytes uint64
}

func (c *Counter) add(size int) {
	c.Packets++
	c.Bytes += uint64(size)
}

// DirStats counts one direction's packets.
type DirStats struct {
	Forwarded Counter // delivered to the far side
	Loss      Counter // dropped by random loss
	Queue     Counter // dropped because the bottleneck queue was full
	Outage    Counter // dropped because the link was down
	Overload  Counter // dropped because the in-flight bound was reached
	Error     Counter // dropped because the far side's device refused them
	// Unread counts packets the sending side's kernel dropped before the
	// link saw them, because its TUN device's queue was full: the relay
	// fell behind. Only an Emulator fills it in; Dropped leaves it out.
	Unread uint64
}

// Dropped sums the drops of every reason.
func (d DirStats) Dropped() Counter {
	var c Counter
	for _, x := range []Counter{d.Loss, d.Queue, d.Outage, d.Overload, d.Error} {
		c.Packets += x.Packets
		c.Bytes += x.Bytes
	}
	return c
}

func (d *DirStats) drop(r DropReason, size int) {
	switch r {
	case DropLoss:
		d.Loss.add(size)
	case DropQueue:
		d.Queue.add(size)
	case DropOutage:
		d.Outage.add(size)
	case DropOverload:
		d.Overload.add(size)
	default:
		d.Error.add(size)
	}
}

// Packet is a packet the Link holds, with the time it is due at the far
// side.
type Packet struct {
	At   time.Time
	Data []byte
}

// Link models one direction of a WAN link: random loss, a bottleneck of
// limited rate with a drop-tail queue, a propagation delay with optional
// jitter, and outages. It does no IO and never reads a clock: every call
// takes the current time, which must not go backwards between calls, so
// that a test can drive it with a fake clock and get the same result every
// run.
//
// Packets are delivered in the order they were sent. Changed settings
// apply to packets sent after the change; packets already accepted keep
// the delivery time they were given.
//
// A Link is not safe for concurrent use.
type Link struct {
	s           Settings
	limit       int // effective queue limit, bytes
	maxInFlight int
	rng         *rand.Rand

	busyUntil time.Time // when the bottleneck finishes the last accepted packet
	rem       int64     // serialization time remainder, in ns·bits/s
	lastAt    time.Time // delivery time of the last accepted packet

	down      bool
	downUntil time.Time

	serial   fifo[serialEntry] // accepted packets not yet through the bottleneck
	queued   int               // their bytes
	pending  fifo[Packet]      // accepted packets not yet delivered
	inFlight int               // their bytes
	stats    DirStats
}

type serialEntry struct {
	done time.Time
	size int
}

// NewLink returns a link with settings s. The seed and stream select the
// random sequence used for loss and jitter; maxInFlightBytes bounds the
// packet bytes the link holds (zero means DefaultMaxInFlightBytes).
func NewLink(s Settings, seed, stream uint64, maxInFlightBytes int) *Link {
	if maxInFlightBytes <= 0 {
		maxInFlightBytes = DefaultMaxInFlightBytes
	}
	l := &Link{
		maxInFlight: maxInFlightBytes,
		rng:         rand.New(rand.NewPCG(seed, stream)),
	}
	l.s = s.normalize()
	l.limit = l.s.queueLimit()
	return l
}

// Settings returns the settings in force, normalized.
func (l *Link) Settings() Settings { return l.s }

// Set changes the settings from now on.
func (l *Link) Set(now time.Time, s Settings) {
	l.advance(now)
	s = s.normalize()
	if s.RateBitsPerSec != l.s.RateBitsPerSec {
		l.rem = 0
	}
	l.s = s
	l.limit = s.queueLimit()
}

// SetDown takes the link down (true) until further notice, or brings it
// back up (false), also ending any Outage. Taking it down loses every
// packet not yet delivered, as a cut cable loses what was queued or on the
// wire.
func (l *Link) SetDown(now time.Time, down bool) {
	l.down = down
	l.downUntil = time.Time{}
	if down {
		l.flush()
	}
}

// Outage takes the link down from now for d, losing every packet not yet
// delivered and every packet sent before now+d.
func (l *Link) Outage(now time.Time, d time.Duration) {
	if d <= 0 {
		return
	}
	if until := now.Add(d); until.After(l.downUntil) {
		l.downUntil = until
	}
	l.flush()
}

// Down reports whether the link is down at now.
func (l *Link) Down(now time.Time) bool {
	return l.down || now.Before(l.downUntil)
}

// flush drops everything held.
func (l *Link) flush() {
	for l.pending.len() > 0 {
		p := l.pending.pop()
		l.stats.drop(DropOutage, len(p.Data))
	}
	l.serial.reset()
	l.queued, l.inFlight = 0, 0
	l.busyUntil, l.lastAt, l.rem = time.Time{}, time.Time{}, 0
}

// advance forgets the packets the bottleneck has finished with by now.
func (l *Link) advance(now time.Time) {
	for l.serial.len() > 0 && !l.serial.peek().done.After(now) {
		l.queued -= l.serial.pop().size
	}
}

// Send offers a packet arriving at now. The link keeps data (without
// copying) until Deliver returns it. It returns the time the packet is due
// at the far side, or why it was dropped; a dropped packet's data is not
// kept.
func (l *Link) Send(now time.Time, data []byte) (time.Time, DropReason) {
	size := len(data)
	l.advance(now)
	why := Kept
	switch {
	case l.Down(now):
		why = DropOutage
	case l.s.LossProb > 0 && l.rng.Float64() < l.s.LossProb:
		why = DropLoss
	case l.s.RateBitsPerSec > 0 && l.queued > 0 && l.queued+size > l.limit:
		why = DropQueue
	case l.inFlight > 0 && l.inFlight+size > l.maxInFlight:
		why = DropOverload
	}
	if why != Kept {
		l.stats.drop(why, size)
		return time.Time{}, why
	}

	sent := now // when the last bit has left the bottleneck
	if r := l.s.RateBitsPerSec; r > 0 {
		if l.busyUntil.After(now) {
			sent = l.busyUntil
		} else {
			l.rem = 0 // the bottleneck went idle
		}
		// size·8 bits at r bits/s, carrying the remainder so that the
		// rounding does not add up over many packets.
		num := int64(size)*8*int64(time.Second) + l.rem
		sent = sent.Add(time.Duration(num / r))
		l.rem = num % r
		l.busyUntil = sent
		l.serial.push(serialEntry{done: sent, size: size})
		l.queued += size
	}
	d := l.s.Delay
	if j := l.s.Jitter; j > 0 {
		d += time.Duration(l.rng.Int64N(2*int64(j)+1)) - j
		d = max(d, 0)
	}
	at := sent.Add(d)
	if at.Before(l.lastAt) {
		at = l.lastAt // no overtaking
	}
	l.lastAt = at
	l.pending.push(Packet{At: at, Data: data})
	l.inFlight += size
	return at, Kept
}

// Next returns when the earliest held packet is due, if any is held.
func (l *Link) Next() (time.Time, bool) {
	if l.pending.len() == 0 {
		return time.Time{}, false
	}
	return l.pending.peek().At, true
}

// Held returns the number of packets and bytes the link holds.
func (l *Link) Held() (packets, bytes int) {
	return l.pending.len(), l.inFlight
}

// Deliver appends to dst, in order, the packets due by now, forgets them
// and counts them as forwarded.
func (l *Link) Deliver(now time.Time, dst []Packet) []Packet {
	l.advance(now)
	for l.pending.len() > 0 && !l.pending.peek().At.After(now) {
		p := l.pending.pop()
		l.inFlight -= len(p.Data)
		l.stats.Forwarded.add(len(p.Data))
		dst = append(dst, p)
	}
	return dst
}

// Stats returns the counters so far. Forwarded counts what Deliver
// returned.
func (l *Link) Stats() DirStats { return l.stats }

// fifo is a queue on a slice that reuses its space.
type fifo[T any] struct {
	buf  []T
	head int
}

func (q *fifo[T]) len() int { return len(q.buf) - q.head }

func (q *fifo[T]) push(v T) { q.buf = append(q.buf, v) }

func (q *fifo[T]) peek() *T { return &q.buf[q.head] }

func (q *fifo[T]) pop() T {
	var zero T
	v := q.buf[q.head]
	q.buf[q.head] = zero
	q.head++
	switch {
	case q.head == len(q.buf):
		q.buf, q.head = q.buf[:0], 0
	case q.head >= 1024 && q.head*2 >= len(q.buf):
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	return v
}

func (q *fifo[T]) reset() {
	clear(q.buf)
	q.buf, q.head = q.buf[:0], 0
}
