package udprelay

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoServer answers every datagram with the same bytes.
func echoServer(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return c
}

// sink counts datagrams and their bytes.
type sink struct {
	c     *net.UDPConn
	mu    sync.Mutex
	got   [][]byte
	times []time.Time
	wg    sync.WaitGroup
}

func newSink(t *testing.T) *sink {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{c: c}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, append([]byte(nil), buf[:n]...))
			s.times = append(s.times, time.Now())
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); s.wg.Wait() })
	return s
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func newRelay(t *testing.T, upstream net.Addr, opts Options) *Relay {
	t.Helper()
	r, err := NewWithOptions("127.0.0.1:0", upstream.String(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func client(t *testing.T, r *Relay) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, r.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and waits up to wait for the echo.
func exchange(c *net.UDPConn, msg []byte, wait time.Duration) ([]byte, error) {
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	return buf[:n], err
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestForwarding(t *testing.T) {
	up := echoServer(t)
	r := newRelay(t, up.LocalAddr(), Options{})
	a, b := client(t, r), client(t, r)

	const rounds = 100
	var sent uint64
	for i := range rounds {
		for name, c := range map[string]*net.UDPConn{"a": a, "b": b} {
			msg := []byte(fmt.Sprintf("%s-%d-%s", name, i, strings.Repeat("x", i*10)))
			got, err := exchange(c, msg, 2*time.Second)
			if err != nil {
				t.Fatalf("client %s round %d: %v", name, i, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("client %s got %q, sent %q", name, got, msg)
			}
			sent += uint64(len(msg))
		}
	}
	// A large datagram survives intact.
	big := bytes.Repeat([]byte{0xab, 0xcd}, 30000)
	if got, err := exchange(a, big, 2*time.Second); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large datagram: %d bytes back, %v", len(got), err)
	}
	sent += uint64(len(big))

	// The sender counts a datagram after its write returns, which may be
	// after the echo is back.
	want := DirStats{Packets: 2*rounds + 1, Bytes: sent}
	eventually(t, "stats to settle", func() bool {
		st := r.Stats()
		return st.ToUpstream.Packets == want.Packets && st.ToClient.Packets == want.Packets
	})
	if st := r.Stats(); st.ToUpstream != want || st.ToClient != want {
		t.Errorf("stats %+v, want %+v each way", st, want)
	}
}

func TestDownAndRecovery(t *testing.T) {
	// The test plays upstream itself, to control when it answers.
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	r := newRelay(t, up.LocalAddr(), Options{})
	c := client(t, r)
	buf := make([]byte, 100)
	recv := func(conn *net.UDPConn, wait time.Duration) (string, net.Addr, error) {
		conn.SetReadDeadline(time.Now().Add(wait))
		n, from, err := conn.ReadFrom(buf)
		return string(buf[:n]), from, err
	}

	c.Write([]byte("hello"))
	msg, session, err := recv(up, 2*time.Second)
	if err != nil || msg != "hello" {
		t.Fatalf("upstream got %q, %v", msg, err)
	}

	r.SetDown(true)
	for range 5 {
		c.Write([]byte("during"))
	}
	eventually(t, "drops towards upstream", func() bool { return r.Stats().ToUpstream.DroppedPackets == 5 })
	if msg, _, err := recv(up, 50*time.Millisecond); err == nil {
		t.Fatalf("upstream got %q across a cut link", msg)
	}
	up.WriteTo([]byte("reply"), session)
	eventually(t, "drop towards client", func() bool { return r.Stats().ToClient.DroppedPackets == 1 })
	if msg, _, err := recv(c, 50*time.Millisecond); err == nil {
		t.Fatalf("client got %q across a cut link", msg)
	}

	r.SetDown(false)
	c.Write([]byte("after"))
	if msg, _, err := recv(up, 2*time.Second); err != nil || msg != "after" {
		t.Fatalf("upstream after recovery: %q, %v", msg, err)
	}
	up.WriteTo([]byte("reply"), session)
	if msg, _, err := recv(c, 2*time.Second); err != nil || msg != "reply" {
		t.Fatalf("client after recovery: %q, %v", msg, err)
	}
	eventually(t, "stats to settle", func() bool {
		st := r.Stats()
		return st.ToUpstream.Packets == 2 && st.ToClient.Packets == 1
	})
}

func TestDelay(t *testing.T) {
	up := echoServer(t)
	r := newRelay(t, up.LocalAddr(), Options{})
	c := client(t, r)
	const delay = 80 * time.Millisecond
	r.SetDelay(delay)
	for i := range 3 {
		start := time.Now()
		if _, err := exchange(c, []byte{byte(i)}, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %v, want at least %v", rtt, 2*delay)
		}
	}
	r.SetDelay(0)
	start := time.Now()
	if _, err := exchange(c, []byte("fast"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt >= 2*delay {
		t.Logf("round trip %v after removing the delay (busy machine?)", rtt)
	}
}

func TestDelayKeepsOrderAndBoundsQueue(t *testing.T) {
	s := newSink(t)
	r := newRelay(t, s.c.LocalAddr(), Options{QueueLimit: 10})
	c := client(t, r)
	r.SetDelay(100 * time.Millisecond)
	for i := range 30 {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "relay to see 30 datagrams", func() bool {
		st := r.Stats().ToUpstream
		return st.Packets+st.DroppedPackets == 30
	})
	if st := r.Stats().ToUpstream; st.Packets != 10 || st.DroppedPackets != 20 {
		t.Errorf("stats %+v, want 10 forwarded and 20 dropped by the full queue", st)
	}
	eventually(t, "10 datagrams at upstream", func() bool { return s.count() == 10 })
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.got {
		if p[0] != byte(i) {
			t.Fatalf("datagram %d is %d: reordered", i, p[0])
		}
	}
}

// lossRun sends n datagrams one at a time with loss p and returns how many
// the relay dropped.
func lossRun(t *testing.T, seed uint64, p float64, n int) uint64 {
	t.Helper()
	s := newSink(t)
	r := newRelay(t, s.c.LocalAddr(), Options{Seed: seed})
	c := client(t, r)
	r.SetLoss(p)
	for i := range n {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		// One at a time, so no datagram is lost before the relay decides.
		eventually(t, "relay to decide", func() bool {
			st := r.Stats().ToUpstream
			return st.Packets+st.DroppedPackets == uint64(i+1)
		})
	}
	st := r.Stats().ToUpstream
	eventually(t, "forwarded datagrams at upstream", func() bool { return s.count() == int(st.Packets) })
	return st.DroppedPackets
}

func TestLossIsSeeded(t *testing.T) {
	const n, p = 200, 0.3
	first := lossRun(t, 42, p, n)
	second := lossRun(t, 42, p, n)
	if first != second {
		t.Errorf("same seed dropped %d then %d", first, second)
	}
	if first < n*p/2 || first > n*p*3/2 {
		t.Errorf("dropped %d of %d at p=%v", first, n, p)
	}
	if none := lossRun(t, 42, 0, 50); none != 0 {
		t.Errorf("p=0 dropped %d", none)
	}
	if all := lossRun(t, 42, 1, 20); all != 20 {
		t.Errorf("p=1 dropped %d of 20", all)
	}
}

func TestRate(t *testing.T) {
	s := newSink(t)
	r := newRelay(t, s.c.LocalAddr(), Options{})
	c := client(t, r)
	const rate, size, n = 200_000, 1000, 60 // 60 kB at 200 kB/s: about 0.3 s minus the burst
	r.SetRate(rate)
	start := time.Now()
	payload := make([]byte, size)
	for range n {
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all datagrams at upstream", func() bool { return s.count() == n })
	s.mu.Lock()
	elapsed := s.times[n-1].Sub(start)
	s.mu.Unlock()
	burst := float64(rate) / 20
	min := time.Duration((float64(n*size) - burst) / rate * float64(time.Second))
	if elapsed < min*9/10 {
		t.Errorf("%d bytes took %v at %d B/s, want at least %v", n*size, elapsed, rate, min)
	}
	if st := r.Stats().ToUpstream; st.Packets != n || st.Bytes != n*size {
		t.Errorf("stats %+v", st)
	}

	r.SetRate(0)
	start = time.Now()
	for range 20 {
		c.Write(payload)
	}
	eventually(t, "unlimited datagrams", func() bool { return s.count() == n+20 })
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Logf("20 kB took %v without a rate limit (busy machine?)", d)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	tests := []struct{ listen, upstream string }{
		{"0.0.0.0:0", "127.0.0.1:9"},
		{":0", "127.0.0.1:9"},
		{"127.0.0.1:0", "192.0.2.1:9"},
		{"127.0.0.1:0", "[2001:db8::1]:9"},
		{"127.0.0.1:0", "example.invalid:9"},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"127.0.0.1:0", "127.0.0.1"},
	}
	for _, tc := range tests {
		r, err := New(tc.listen, tc.upstream)
		if err == nil {
			r.Close()
			t.Errorf("New(%q, %q) succeeded", tc.listen, tc.upstream)
		}
	}
	r, err := New("localhost:0", "[::1]:9")
	if err != nil {
		t.Fatalf("loopback names refused: %v", err)
	}
	r.Close()
}

func TestCloseStopsEverything(t *testing.T) {
	up := echoServer(t)
	before := runtime.NumGoroutine()
	r, err := New("127.0.0.1:0", up.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, b := client(t, r), client(t, r)
	if _, err := exchange(a, []byte("x"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// Leave a datagram queued and a pump waiting on its timer.
	r.SetDelay(time.Hour)
	b.Write([]byte("y"))
	eventually(t, "second session", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.toUp.queue) == 1
	})
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Controls after Close are harmless.
	r.SetDown(true)
	r.SetLoss(0.5)
	r.SetRate(1)
	_ = r.Stats()

	// A goroutine's deferred wg.Done runs before it has exited, so Close
	// returning can precede the count dropping by a moment; a goroutine
	// Close left running would stay.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Close, %d before New:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
	if _, err := exchange(a, []byte("x"), 50*time.Millisecond); err == nil {
		t.Error("closed relay still forwards")
	}
}
