//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/drsync/drsync/testkit/guest/record"
)

// msgPort is the UDP port the receiving guest listens on.
const msgPort = 7700

// startMessaging configures eth0 and starts the sending or receiving side
// of the guest-to-guest messages. Record seq n on the disk stands for
// message n on both sides, so a consistent pair of disks never shows the
// receiver holding a message the sender has not recorded:
//
//   - msg=send: every 1/rate s, write record n and wait for the write to
//     complete, then send message n (8 bytes, little-endian n) to peer;
//   - msg=recv: for each message n above the last one recorded, write
//     record n. Lost or reordered datagrams leave holes in its ring.
//
// "NET <ip> msg=<mode> peer=<peer>" goes to the console once eth0 is up.
func startMessaging(p params, disk *os.File, slots int) error {
	if p.ip == "" {
		return fmt.Errorf("msg=%s needs ip", p.msg)
	}
	if err := netUp(p.ip); err != nil {
		return err
	}
	switch p.msg {
	case "send":
		if p.peer == "" {
			return fmt.Errorf("msg=send needs peer")
		}
		if p.rate <= 0 {
			return fmt.Errorf("msg=send needs a rate above 0")
		}
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(p.peer), Port: msgPort})
		if err != nil {
			return fmt.Errorf("dial %s: %w", p.peer, err)
		}
		say("NET %s msg=send peer=%s", p.ip, p.peer)
		go sendMessages(c, disk, slots, time.Duration(float64(time.Second)/p.rate))
	case "recv":
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: msgPort})
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		say("NET %s msg=recv", p.ip)
		go recvMessages(c, disk, slots)
	}
	return nil
}

// netUp brings eth0 up with addr (address/prefix), waiting a little for
// the device to appear after the driver loaded.
func netUp(addr string) error {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no eth0 (is there a virtio-net NIC?)")
		}
	}
	for _, args := range [][]string{{"addr", "add", addr, "dev", "eth0"}, {"link", "set", "eth0", "up"}} {
		if out, err := exec.Command("/bin/ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	return nil
}

// writeRecord writes record seq, retrying on errors, and returns once the
// write completed.
func writeRecord(f *os.File, buf []byte, slots int, seq uint64) {
	record.Encode(buf, seq, counter.Load())
	for {
		_, err := f.WriteAt(buf, record.Offset(record.SlotOf(seq, slots)))
		if err == nil {
			return
		}
		say("WERR %d %v", seq, err)
		time.Sleep(50 * time.Millisecond)
	}
}

func sendMessages(c *net.UDPConn, f *os.File, slots int, every time.Duration) {
	buf := aligned(record.Size)
	seq := lastSeq.Load() + 1
	var m [8]byte
	t := time.NewTicker(every)
	for range t.C {
		writeRecord(f, buf, slots, seq)
		lastSeq.Store(seq)
		binary.LittleEndian.PutUint64(m[:], seq)
		// A send error (no ARP answer yet, say) loses this message only.
		c.Write(m[:])
		seq++
	}
}

func recvMessages(c *net.UDPConn, f *os.File, slots int) {
	buf := aligned(record.Size)
	m := make([]byte, 64)
	for {
		n, err := c.Read(m)
		if err != nil {
			say("WARN msg recv: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if n != 8 {
			continue
		}
		seq := binary.LittleEndian.Uint64(m)
		if seq <= lastSeq.Load() {
			continue // a duplicate or a late one
		}
		writeRecord(f, buf, slots, seq)
		lastSeq.Store(seq)
	}
}
