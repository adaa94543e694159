package libvirtvm

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// Connect opens a connection to libvirt at uri: qemu:///system (or
// another local URI, with ?socket= to name the socket), qemu+tcp:// or
// qemu+tls://.
func Connect(ctx context.Context, uri string) (*libvirt.Libvirt, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt: URI %q: %w", uri, err)
	}
	d, err := dialerFor(u)
	if err != nil {
		return nil, fmt.Errorf("libvirt: URI %q: %w", uri, err)
	}
	type result struct {
		l   *libvirt.Libvirt
		err error
	}
	ch := make(chan result, 1)
	go func() {
		l := libvirt.NewWithDialer(fixDialer{d})
		ch <- result{l, l.ConnectToURI(libvirt.RemoteURI(u))}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("libvirt: connect %s (is libvirtd running?): %w", uri, r.err)
		}
		return r.l, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("libvirt: connect %s: %w", uri, ctx.Err())
	}
}

func dialerFor(u *url.URL) (socket.Dialer, error) {
	transport := "unix"
	if s := strings.SplitN(u.Scheme, "+", 2); len(s) == 2 {
		transport = s[1]
	} else if u.Host != "" {
		transport = "tls"
	}
	switch transport {
	case "unix":
		var o []dialers.LocalOption
		if s := u.Query().Get("socket"); s != "" {
			o = append(o, dialers.WithSocket(s))
		}
		return dialers.NewLocal(o...), nil
	case "tcp":
		var o []dialers.RemoteOption
		if p := u.Port(); p != "" {
			o = append(o, dialers.UsePort(p))
		}
		return dialers.NewRemote(u.Hostname(), o...), nil
	case "tls":
		var o []dialers.TLSOption
		if p := u.Port(); p != "" {
			o = append(o, dialers.UseTLSPort(p))
		}
		if p := u.Query().Get("pkipath"); p != "" {
			o = append(o, dialers.UsePKIPath(p))
		}
		return dialers.NewTLS(u.Hostname(), o...), nil
	}
	return nil, fmt.Errorf("transport %q not supported (use a local URI, qemu+tcp or qemu+tls)", transport)
}

// fixDialer's connections mend one packet go-libvirt cannot decode: a QEMU
// monitor event whose data is null (STOP, RESUME, SHUTDOWN without
// details...). libvirt sends the details as an optional string, absent
// for null; go-libvirt decodes a present one only, fails on the missing
// length and drops the event. The mended packet carries an empty string.
type fixDialer struct{ socket.Dialer }

func (d fixDialer) Dial() (net.Conn, error) {
	c, err := d.Dialer.Dial()
	if err != nil {
		return nil, err
	}
	return &fixConn{Conn: c}, nil
}

type fixConn struct {
	net.Conn
	buf []byte // mended bytes not yet read
}

const (
	qemuProgram      = 0x20008087 // QEMU_PROGRAM
	qemuMonitorEvent = 6          // QEMU_PROC_DOMAIN_MONITOR_EVENT
	headerLen        = 4 + 6*4    // length, then program, version, procedure, type, serial, status
)

// Read hands out whole packets, mended, one at a time: go-libvirt's reader
// reads the length and then exactly that many bytes.
func (c *fixConn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		var l [4]byte
		if _, err := io.ReadFull(c.Conn, l[:]); err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint32(l[:])
		if n < 4 || n > 64<<20 {
			return 0, fmt.Errorf("libvirt: packet of %d bytes", n)
		}
		pkt := make([]byte, n)
		copy(pkt, l[:])
		if _, err := io.ReadFull(c.Conn, pkt[4:]); err != nil {
			return 0, err
		}
		c.buf = mendPacket(pkt)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// mendPacket returns pkt with an absent details string of a QEMU monitor
// event made present and empty, and any other packet unchanged.
func mendPacket(pkt []byte) []byte {
	if len(pkt) < headerLen ||
		binary.BigEndian.Uint32(pkt[4:]) != qemuProgram ||
		binary.BigEndian.Uint32(pkt[12:]) != qemuMonitorEvent {
		return pkt
	}
	// callbackID; dom{name, uuid[16], id}; event; seconds; micros; details?
	off := headerLen + 4
	str := func() bool {
		if off+4 > len(pkt) {
			return false
		}
		n := int(binary.BigEndian.Uint32(pkt[off:]))
		off += 4 + (n+3)&^3
		return off <= len(pkt)
	}
	if !str() {
		return pkt
	}
	off += 16 + 4
	if !str() {
		return pkt
	}
	off += 8 + 4
	if off+4 != len(pkt) || binary.BigEndian.Uint32(pkt[off:]) != 0 {
		return pkt // details present, or not the layout expected
	}
	out := make([]byte, len(pkt)+4) // + a zero length: the empty string
	copy(out, pkt)
	binary.BigEndian.PutUint32(out, uint32(len(out)))
	return out
}
