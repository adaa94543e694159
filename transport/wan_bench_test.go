package transport

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/drsync/drsync/stripe"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/tlsid"
	"github.com/drsync/drsync/wanemu"
)

// BenchmarkWANTransport sends data over each emulated link of the WAN
// benchmark (package testkit/wanbench): 64 MiB over 100 Mbit/s with a
// 40 ms round trip and 0.1% random loss, and 256 MiB over 1 Gbit/s with a
// 10 ms round trip. It sends over one QUIC connection, whose loss-based
// congestion control backs off at every loss, and striped over several
// (package stripe): a fixed number, and auto, which dials 8 and uses as
// many as raise goodput (stripe.Grower), starting from one. It reports the
// goodput as a fraction of the link rate (the one-connection run is the
// baseline of the same run) and the CPU time this process used per MB
// sent: both QUIC ends and the link emulator's relay, nothing else. It is
// the transport's ceiling on this machine, with which an initial sync
// over the same link compares.
func BenchmarkWANTransport(b *testing.B) {
	if err := wanemu.Check(); err != nil {
		b.Skipf("no WAN emulator here: %v", err)
	}
	for _, link := range []struct {
		name string
		s    wanemu.Settings
		size int
	}{
		{"100Mbit-lossy", wanemu.Settings{Delay: 20 * time.Millisecond, RateBitsPerSec: 100e6, LossProb: 0.001}, 64 << 20},
		{"1Gbit", wanemu.Settings{Delay: 5 * time.Millisecond, RateBitsPerSec: 1e9}, 256 << 20},
	} {
		b.Run(link.name, func(b *testing.B) { benchTransport(b, link.s, link.size) })
	}
}

func benchTransport(b *testing.B, s wanemu.Settings, size int) {
	ctx := context.Background()
	em, err := wanemu.Start(ctx, wanemu.Options{AtoB: s, BtoA: s, Seed: 3})
	if err != nil {
		b.Fatal(err)
	}
	defer em.Stop()
	a, err := tlsid.WriteIdentity(b.TempDir(), "a")
	if err != nil {
		b.Fatal(err)
	}
	z, err := tlsid.WriteIdentity(b.TempDir(), "b")
	if err != nil {
		b.Fatal(err)
	}
	pcB, err := em.ListenPacket(wanemu.SideB, "udp", em.AddrB().String()+":0")
	if err != nil {
		b.Fatal(err)
	}
	l, err := listen("", tlsid.ServerTLS(z, pin(a)), Options{}, pcB)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	dialA := func(ctx context.Context) (io.ReadWriteCloser, error) {
		pcA, err := em.ListenPacket(wanemu.SideA, "udp", em.AddrA().String()+":0")
		if err != nil {
			return nil, err
		}
		c, err := dial(ctx, l.Addr().String(), tlsid.ClientTLS(a, pin(z)), Options{}, pcA)
		if err != nil {
			return nil, err
		}
		st, err := c.OpenStream(ctx)
		if err != nil {
			return nil, err
		}
		return &closingStream{st, c}, nil
	}
	for _, conns := range []string{"1", "4", "8", "auto"} {
		n, auto := 0, conns == "auto"
		if auto {
			n = 8
		} else {
			fmt.Sscan(conns, &n)
		}
		b.Run("connections="+conns, func(b *testing.B) {
			for b.Loop() {
				subs := make(chan io.ReadWriteCloser, n)
				go func() {
					for range n {
						c, err := l.Accept(ctx)
						if err != nil {
							return
						}
						st, err := c.AcceptStream(ctx)
						if err != nil {
							return
						}
						if n > 1 {
							io.ReadFull(st, make([]byte, stripe.HelloSize))
						}
						subs <- &closingStream{st, c}
					}
				}()
				// The receiving side: a QUIC stream is announced by its
				// first data, so it is gathered while the sender writes.
				done := make(chan int64)
				go func() {
					rs := make([]io.ReadWriteCloser, n)
					for i := range rs {
						rs[i] = <-subs
					}
					var r io.Reader = rs[0]
					if n > 1 {
						sc, _ := stripe.New(rs, stripe.Options{})
						defer sc.Close()
						r = sc
					}
					m, _ := io.Copy(io.Discard, r)
					done <- m
				}()
				var w io.WriteCloser
				var err error
				start := time.Now()
				if n == 1 {
					w, err = dialA(ctx)
				} else {
					var o stripe.Options
					if auto {
						o.Grow = &stripe.GrowConfig{}
						o.OnGrow = func(st stripe.Step) {
							if st.Changed {
								b.Logf("%s: %s", time.Since(start).Round(time.Millisecond), st.Reason)
							}
						}
					}
					w, err = stripe.Dial(ctx, n, dialA, o)
				}
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, 1<<20)
				start = time.Now()
				cpu0 := hosttools.SelfCPU()
				for range size / len(buf) {
					if _, err := w.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				w.Close()
				got := <-done
				d, cpu := time.Since(start), hosttools.SelfCPU()-cpu0
				if got != int64(size) {
					b.Fatalf("received %d of %d bytes", got, size)
				}
				rate := float64(s.RateBitsPerSec)
				b.ReportMetric(float64(size)*8/d.Seconds()/1e6, "Mbit/s")
				b.ReportMetric(float64(size)*8/d.Seconds()/rate, "of-link")
				b.ReportMetric(cpu.Seconds()*1e3/(float64(size)/1e6), "cpu-ms/MB")
			}
		})
	}
}

// closingStream closes its connection with the stream.
type closingStream struct {
	Stream
	c *Conn
}

func (s *closingStream) Close() error {
	err := s.Stream.Close()
	go func() { time.Sleep(time.Second); s.c.Close(0, "") }()
	return err
}
