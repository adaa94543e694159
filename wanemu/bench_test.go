package wanemu

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// vethPair is the baseline: two namespaces joined by a plain veth pair, no
// relay.
type vethPair struct {
	ip     string
	ns     [2]string
	addr   [2]string
	closed bool
}

var vethCount atomic.Int64

func newVethPair(tb testing.TB, ip string) *vethPair {
	tb.Helper()
	k := vethCount.Add(1)
	v := &vethPair{
		ip:   ip,
		ns:   [2]string{fmt.Sprintf("%s%d-veth%d-a", NamePrefix, os.Getpid(), k), fmt.Sprintf("%s%d-veth%d-b", NamePrefix, os.Getpid(), k)},
		addr: [2]string{"10.78.0.1", "10.78.0.2"},
	}
	tb.Cleanup(func() {
		for _, n := range v.ns {
			if netnsExists(n) {
				delNetns(ip, n)
			}
		}
	})
	ctx := tb.Context()
	for _, n := range v.ns {
		if err := addNetns(ctx, ip, n); err != nil {
			tb.Fatal(err)
		}
	}
	if err := runIP(ctx, ip, "", "-n", v.ns[0], "link", "add", "vetha", "type", "veth", "peer", "name", "vethb", "netns", v.ns[1]); err != nil {
		tb.Fatal(err)
	}
	for i, dev := range []string{"vetha", "vethb"} {
		batch := fmt.Sprintf("link set dev lo up\naddr add %s/30 dev %s\nlink set dev %s up\n", v.addr[i], dev, dev)
		if err := runIP(ctx, ip, batch, "-n", v.ns[i], "-batch", "-"); err != nil {
			tb.Fatal(err)
		}
	}
	return v
}

func (v *vethPair) path(side Side) string { return filepath.Join(netnsDir, v.ns[side]) }

// tcpPath is a TCP connection from A to a sink in B that counts what
// arrives.
type tcpPath struct {
	c        net.Conn
	received atomic.Int64
	arrived  chan struct{} // signalled on every read once want is reached
	want     atomic.Int64
}

// newTCPPath connects from side A to a sink in side B; inA and inB run
// code in the namespaces.
func newTCPPath(tb testing.TB, inA, inB func(func() error) error, addrB string) *tcpPath {
	tb.Helper()
	var l net.Listener
	if err := inB(func() (err error) {
		l, err = net.Listen("tcp4", net.JoinHostPort(addrB, "0"))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	p := &tcpPath{arrived: make(chan struct{}, 1)}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			if p.received.Add(int64(n)) >= p.want.Load() {
				select {
				case p.arrived <- struct{}{}:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	if err := inA(func() (err error) {
		p.c, err = net.Dial("tcp4", l.Addr().String())
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.c.Close() })
	p.want.Store(1 << 62)
	return p
}

// push sends n bytes and waits until the sink has them all.
func (p *tcpPath) push(tb testing.TB, n int64) {
	tb.Helper()
	p.want.Store(p.received.Load() + n)
	chunk := make([]byte, 256<<10)
	for left := n; left > 0; {
		m := min(left, int64(len(chunk)))
		if _, err := p.c.Write(chunk[:m]); err != nil {
			tb.Fatal(err)
		}
		left -= m
	}
	timeout := time.After(time.Minute)
	for p.received.Load() < p.want.Load() {
		select {
		case <-p.arrived:
		case <-timeout:
			tb.Fatalf("sink got %d of %d bytes", p.received.Load(), p.want.Load())
		}
	}
}

// BenchmarkRelay measures TCP through an emulator with no impairment, the
// relay's ceiling, against the same transfer through a plain veth pair in
// the same run. The veth pair keeps its offloads (TCP segments of up to
// 64 KiB cross it whole) while the relay moves MTU-sized packets one
// system call each, which is most of the difference.
func BenchmarkRelay(b *testing.B) {
	e := start(b, Options{})
	relay := newTCPPath(b, func(fn func() error) error { return e.In(SideA, fn) },
		func(fn func() error) error { return e.In(SideB, fn) }, e.AddrB().String())
	v := newVethPair(b, e.ip)
	veth := newTCPPath(b, func(fn func() error) error { return inNetns(v.path(SideA), fn) },
		func(fn func() error) error { return inNetns(v.path(SideB), fn) }, v.addr[SideB])

	const chunk = 1 << 20
	relay.push(b, 4*chunk) // warm up both paths
	veth.push(b, 4*chunk)
	before := e.Stats().AtoB
	b.SetBytes(chunk)
	b.ResetTimer()
	began := time.Now()
	relay.push(b, int64(b.N)*chunk)
	relayTime := time.Since(began)
	b.StopTimer()
	after := e.Stats().AtoB

	// The baseline moves at least 64 MiB so that it is not all start-up.
	baseBytes := max(int64(b.N)*chunk, 64<<20)
	began = time.Now()
	veth.push(b, baseBytes)
	vethTime := time.Since(began)

	relayMbps := float64(b.N) * chunk * 8 / relayTime.Seconds() / 1e6
	vethMbps := float64(baseBytes) * 8 / vethTime.Seconds() / 1e6
	b.ReportMetric(relayMbps, "relay-Mbit/s")
	b.ReportMetric(vethMbps, "veth-Mbit/s")
	b.ReportMetric(relayMbps/vethMbps, "relay/veth")
	if secs := relayTime.Seconds(); secs > 0 {
		b.ReportMetric(float64(after.Forwarded.Packets-before.Forwarded.Packets)/secs, "relay-pkt/s")
	}
	if d := after.Dropped().Packets - before.Dropped().Packets; d > 0 {
		b.Logf("relay dropped %d packets (%+v)", d, after)
	}
}
