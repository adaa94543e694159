package stripe

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowConn delays every write, as a connection with less bandwidth would.
type slowConn struct {
	net.Conn
	delay time.Duration
}

func (s slowConn) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.Conn.Write(p)
}

// pairs joins two Conns over n pipes; delays[i], if any, slows pipe i on
// the first Conn's side.
func pairs(t *testing.T, n int, o Options, delays ...time.Duration) (*Conn, *Conn) {
	t.Helper()
	var a, b []io.ReadWriteCloser
	for i := range n {
		x, y := net.Pipe()
		var xa io.ReadWriteCloser = x
		if i < len(delays) && delays[i] > 0 {
			xa = slowConn{x, delays[i]}
		}
		a, b = append(a, xa), append(b, y)
	}
	ca, err := New(a, o)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := New(b, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close(); cb.Close() })
	return ca, cb
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Both directions at once, in writes of odd sizes, over connections of
// unequal speed, with a reorder buffer much smaller than the data: every
// byte arrives in order. Then one side closes, and the other reads io.EOF
// after the last byte.
func TestStreamInOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		o      Options
		delays []time.Duration
	}{
		{"one connection", 1, Options{}, nil},
		{"four equal", 4, Options{ChunkSize: 4096}, nil},
		// Full chunks: their buffers are shared by both directions and
		// reused while the other direction still reads.
		{"four, default chunks", 4, Options{}, nil},
		{"one slow of three, small buffer", 3, Options{ChunkSize: 1000, MaxBuffered: 8192}, []time.Duration{0, 2 * time.Millisecond, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pairs(t, tc.n, tc.o, tc.delays...)
			ab, ba := random(1<<20+17), random(300<<10+3)
			var wg sync.WaitGroup
			send := func(c *Conn, data []byte) {
				defer wg.Done()
				for p := data; len(p) > 0; {
					n := min(len(p), 777+len(p)%5000)
					if w, err := c.Write(p[:n]); err != nil || w != n {
						t.Errorf("write: %d, %v", w, err)
						return
					}
					p = p[n:]
				}
			}
			got := [][]byte{make([]byte, len(ab)), make([]byte, len(ba))}
			recv := func(i int, c *Conn) {
				defer wg.Done()
				if _, err := io.ReadFull(c, got[i]); err != nil {
					t.Errorf("read: %v", err)
				}
			}
			wg.Add(4)
			go send(a, ab)
			go send(b, ba)
			go recv(0, b)
			go recv(1, a)
			wg.Wait()
			if !bytes.Equal(got[0], ab) || !bytes.Equal(got[1], ba) {
				t.Fatal("the bytes read differ from those written")
			}
			tail := random(100 << 10)
			go func() { a.Write(tail); a.Close() }()
			rest, err := io.ReadAll(b)
			if err != nil || !bytes.Equal(rest, tail) {
				t.Fatalf("after the peer closed: %d bytes, %v; want the %d written before Close, then io.EOF", len(rest), err, len(tail))
			}
		})
	}
}

// A connection lost mid-stream fails the stream on both sides: no side
// mistakes it for the end.
func TestLostConnectionFailsTheStream(t *testing.T) {
	var a, b []io.ReadWriteCloser
	for range 3 {
		x, y := net.Pipe()
		a, b = append(a, x), append(b, y)
	}
	ca, _ := New(a, Options{ChunkSize: 512})
	cb, _ := New(b, Options{})
	defer ca.Close()
	defer cb.Close()
	if _, err := ca.Write(random(64 << 10)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(cb, buf); err != nil {
		t.Fatal(err)
	}
	a[1].Close() // connection 1 drops
	_, err := io.ReadAll(cb)
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("read after a lost connection: %v, want an error", err)
	}
	t.Logf("reader: %v", err)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := ca.Write(random(4096)); err != nil {
			t.Logf("writer: %v", err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes still succeed after a connection was lost")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close ends a Write that waits for a peer that reads nothing.
func TestCloseEndsBlockedWrite(t *testing.T) {
	x, y := net.Pipe()
	defer y.Close()
	c, _ := New([]io.ReadWriteCloser{x}, Options{CloseWait: 50 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(random(4 << 20))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a write nobody read succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write still blocked after Close")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func TestHello(t *testing.T) {
	h := Hello{Index: 2, Count: 4}
	copy(h.Session[:], "0123456789abcdef")
	b := h.Marshal()
	if !IsHello(b) || len(b) != HelloSize {
		t.Fatal("marshalled hello not recognised")
	}
	if got, err := ParseHello(b); err != nil || got != h {
		t.Fatalf("ParseHello = %+v, %v", got, err)
	}
	for name, mut := range map[string]func([]byte){
		"magic":    func(b []byte) { b[0] = 1 },
		"reserved": func(b []byte) { b[27] = 1 },
		"index":    func(b []byte) { b[24] = 4 },
		"count 0":  func(b []byte) { b[24], b[25] = 0, 0 },
		"count":    func(b []byte) { b[25] = MaxCount + 1 },
	} {
		c := bytes.Clone(b)
		mut(c)
		if _, err := ParseHello(c); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// A wire frame starts with a small type byte, never the magic.
	if IsHello([]byte{1, 0, 0, 0, 0, 0, 0, 12}) {
		t.Error("a frame header taken for a hello")
	}
}

// Dial on one side, Joiner on the other: the connections of one stream
// join into one Conn served by one caller; another owner's connection with
// the same session number does not join it.
func TestDialAndJoin(t *testing.T) {
	j := &Joiner{Timeout: 2 * time.Second}
	type joined struct {
		c    *Conn
		lead bool
		err  error
	}
	results := make(chan joined, 8)
	accept := func(owner string, sub net.Conn) {
		first := make([]byte, 8)
		if _, err := io.ReadFull(sub, first); err != nil || !IsHello(first) {
			results <- joined{err: errors.New("no hello")}
			return
		}
		h, err := ReadHello(first, sub)
		if err != nil {
			results <- joined{err: err}
			return
		}
		c, lead, err := j.Join(context.Background(), owner, h, sub)
		results <- joined{c, lead, err}
	}
	var sessionSeen Hello
	var mu sync.Mutex
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		x, y := net.Pipe()
		go accept("alice", y)
		return recorder{x, &mu, &sessionSeen}, nil
	}
	c, err := Dial(context.Background(), 3, dial, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var lead *Conn
	leads := 0
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.lead {
			leads++
			lead = r.c
		}
	}
	if leads != 1 {
		t.Fatalf("%d callers lead the stream", leads)
	}
	go c.Write([]byte("over three connections"))
	buf := make([]byte, 22)
	if _, err := io.ReadFull(lead, buf); err != nil || string(buf) != "over three connections" {
		t.Fatalf("read %q, %v", buf, err)
	}

	// mallory replays alice's session number: she gets a stream of her
	// own that never completes.
	x, y := net.Pipe()
	defer x.Close()
	mu.Lock()
	h := sessionSeen
	mu.Unlock()
	h.Index, h.Count = 0, 2
	go x.Write(h.Marshal())
	go accept("mallory", y)
	if r := <-results; r.err == nil || r.c != nil {
		t.Fatalf("a connection of another owner joined: %+v", r)
	}
}

// recorder notes the hello a dialer sends.
type recorder struct {
	net.Conn
	mu   *sync.Mutex
	seen *Hello
}

func (r recorder) Write(p []byte) (int, error) {
	if IsHello(p) {
		if h, err := ParseHello(p); err == nil {
			r.mu.Lock()
			*r.seen = h
			r.mu.Unlock()
		}
	}
	return r.Conn.Write(p)
}

// link carries chunks, one at a time and each taking delay, to the pipes
// of the connections that share it, holding a few in its buffer as a
// socket would: one connection can keep it busy. It counts the chunks it
// carried: the busiest link's count times delay is the links' clock, on
// which goodput does not depend on how busy this machine is.
type link struct {
	ch      chan linkChunk
	delay   time.Duration
	done    chan struct{}
	carried atomic.Int64
}

// linkClock is the time the busiest of links took, after a fixed instant.
func linkClock(links []*link) time.Time {
	var d time.Duration
	for _, l := range links {
		d = max(d, time.Duration(l.carried.Load())*l.delay)
	}
	return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(d)
}

type linkChunk struct {
	to net.Conn
	p  []byte // nil: close to, after what is ahead in the link
}

func newLink(t *testing.T, delay time.Duration) *link {
	l := &link{ch: make(chan linkChunk, 2), delay: delay, done: make(chan struct{})}
	t.Cleanup(func() { close(l.done) })
	go func() {
		for {
			select {
			case c := <-l.ch:
				if c.p == nil {
					c.to.Close()
					continue
				}
				time.Sleep(l.delay)
				l.carried.Add(1)
				c.to.Write(c.p)
			case <-l.done:
				return
			}
		}
	}()
	return l
}

// countingConn counts the chunks written to it and sends them over its link.
type countingConn struct {
	net.Conn
	link   *link
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	select {
	case c.link.ch <- linkChunk{c.Conn, bytes.Clone(p)}:
		return len(p), nil
	case <-c.link.done:
		return 0, net.ErrClosed
	}
}

// Close closes the connection once its chunks are through, as closing a
// QUIC stream sends what was written first.
func (c *countingConn) Close() error {
	select {
	case c.link.ch <- linkChunk{c.Conn, nil}:
	case <-c.link.done:
		c.Conn.Close()
	}
	return nil
}

// With Grow, a stream starts on one connection and hands chunks to more
// only while they raise goodput: over connections each with its own pace
// it grows to all four, each doubling seen before a connection beyond it
// carries anything; over one link that all share it tries two and goes
// back to one, and the last two never carry a chunk.
func TestGrowUsesActiveConnections(t *testing.T) {
	for _, tc := range []struct {
		name       string
		shared     bool
		wantActive int
		wantUsed   int // connections that carried data
	}{
		{"a link each", false, 4, 4},
		{"one link", true, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 4
			const delay = 20 * time.Millisecond
			shared := newLink(t, delay)
			links := []*link{shared}
			var a, b []io.ReadWriteCloser
			var subs []*countingConn
			for i := range n {
				x, y := net.Pipe()
				cc := &countingConn{Conn: x, link: shared}
				if !tc.shared && i > 0 {
					cc.link = newLink(t, delay)
					links = append(links, cc.link)
				}
				subs = append(subs, cc)
				a, b = append(a, cc), append(b, y)
			}
			var mu sync.Mutex
			var steps []Step
			var bad []string
			o := Options{ChunkSize: 4 << 10, Grow: &GrowConfig{Window: 400 * time.Millisecond}, Now: func() time.Time { return linkClock(links) }, OnGrow: func(st Step) {
				mu.Lock()
				defer mu.Unlock()
				steps = append(steps, st)
				if !st.Changed {
					return
				}
				// Before a change, only the connections of the level before
				// it (or, going back, of the level probed) carried data.
				from := st.Active
				for _, s := range steps[:len(steps)-1] {
					from = max(from, s.Active)
				}
				for i := from; i < n; i++ {
					if w := subs[i].writes.Load(); w > 0 {
						bad = append(bad, fmt.Sprintf("connection %d carried %d chunks before %d were active", i, w, i+1))
					}
				}
			}}
			ca, err := New(a, o)
			if err != nil {
				t.Fatal(err)
			}
			cb, _ := New(b, Options{})
			defer ca.Close()
			defer cb.Close()
			if ca.Active() != 1 {
				t.Fatalf("%d connections active at first, want 1", ca.Active())
			}
			got := make(chan int64, 1)
			go func() {
				n, err := io.Copy(io.Discard, cb)
				if err != nil {
					t.Errorf("read: %v", err)
				}
				got <- n
			}()
			buf := random(64 << 10)
			var sent int64
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
				if _, err := ca.Write(buf); err != nil {
					t.Fatal(err)
				}
				sent += int64(len(buf))
			}
			active := ca.Active()
			used := 0
			for _, s := range subs {
				if s.writes.Load() > 0 {
					used++
				}
			}
			// The connections that carried nothing end with the others:
			// Close does not wait out CloseWait for them, and the reader
			// gets every byte, then the end.
			start := time.Now()
			ca.Close()
			if d := time.Since(start); d > DefaultCloseWait/2 {
				t.Errorf("Close took %s", d)
			}
			if n := <-got; n != sent {
				t.Errorf("read %d bytes of %d", n, sent)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, st := range steps {
				t.Logf("%s window, %.1f MB/s, busy %.2f: %s; %d active", st.Length.Round(time.Millisecond), st.Goodput/1e6, st.Busy, st.Reason, st.Active)
			}
			for _, s := range bad {
				t.Error(s)
			}
			if active != tc.wantActive || used != tc.wantUsed {
				t.Errorf("%d active, %d carried data; want %d and %d", active, used, tc.wantActive, tc.wantUsed)
			}
		})
	}
}

// scripted is a connection whose reads give data, then err. With hold
// set, its first read waits until the stream has failed, or 300 ms.
type scripted struct {
	r    *bytes.Reader
	err  error
	hold chan *Conn
}

func (s *scripted) Read(p []byte) (int, error) {
	if s.hold != nil {
		c := <-s.hold
		select {
		case <-c.Done():
		case <-time.After(300 * time.Millisecond):
		}
		s.hold = nil
	}
	if s.r.Len() > 0 {
		return s.r.Read(p)
	}
	return 0, s.err
}
func (s *scripted) Write(p []byte) (int, error) { return len(p), nil }
func (s *scripted) Close() error                { return nil }

// A peer that says its last word on one connection and closes another on
// purpose first: with ClosedByPeer the word is read, then the end; without
// it the closed connection fails the stream. A gap is an error either way.
func TestClosedByPeerReadsTheLastWord(t *testing.T) {
	errBye := errors.New("closed by the peer (code 0)")
	chunk := func(seq uint64, data string) []byte {
		b := binary.BigEndian.AppendUint64(nil, seq)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	read := func(o Options, first []byte) (string, error) {
		// The last word is read only after the other connection's close
		// has been taken, or not, as the end of the stream.
		hold := make(chan *Conn, 1)
		c, err := New([]io.ReadWriteCloser{
			&scripted{r: bytes.NewReader(first), err: io.EOF, hold: hold},
			&scripted{r: bytes.NewReader(nil), err: errBye},
		}, o)
		if err != nil {
			t.Fatal(err)
		}
		hold <- c
		defer c.Close()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	words := append(chunk(0, "refused: not authorized"), chunk(1, "")...)
	bye := func(err error) bool { return errors.Is(err, errBye) }
	if got, err := read(Options{ClosedByPeer: bye}, words); err != nil || got != "refused: not authorized" {
		t.Errorf("with ClosedByPeer: %q, %v", got, err)
	}
	if _, err := read(Options{}, words); !errors.Is(err, errBye) {
		t.Errorf("without ClosedByPeer: %v, want the close", err)
	}
	if _, err := read(Options{ClosedByPeer: bye}, chunk(1, "")); err == nil {
		t.Error("chunk 0 missing, yet the stream ended cleanly")
	}
}

// PeerEnded tells a side that the other has ended the stream (so has read
// what it waited for), not that this side has.
func TestPeerEnded(t *testing.T) {
	a, b := pairs(t, 3, Options{})
	ended := func(c *Conn) bool {
		select {
		case <-c.PeerEnded():
			return true
		default:
			return false
		}
	}
	if _, err := a.Write([]byte("refused")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	if ended(a) || ended(b) {
		t.Fatal("ended before either side closed")
	}
	b.Close()
	select {
	case <-a.PeerEnded():
	case <-time.After(10 * time.Second):
		t.Fatal("a did not see b's end")
	}
	if ended(b) {
		t.Error("b sees an end a never sent")
	}
}
