package guest

import (
	"fmt"
	"io"
	"slices"

	"github.com/drsync/drsync/testkit/guest/record"
)

// NIC returns QEMU arguments for a virtio-net NIC, at a fixed PCI address
// so that a DR copy started with other arguments around it gets the same
// device, whose frames travel as UDP datagrams on loopback: received on
// port local, sent to port remote. Two guests with swapped ports share a
// link; the host's network is not changed. mac tells the guests apart.
func NIC(local, remote int, mac string) []string {
	return []string{
		"-netdev", fmt.Sprintf("socket,id=net0,udp=127.0.0.1:%d,localaddr=127.0.0.1:%d", remote, local),
		"-device", "virtio-net-pci,netdev=net0,id=nic0,mac=" + mac + ",bus=pci.0,addr=0x8",
	}
}

// MessageArgs are the workload parameters of a messaging guest: mode
// "send" (to peer) or "recv", eth0 at ip (address/prefix), rate messages
// per second for the sender.
func MessageArgs(mode, ip, peer string, rate int) map[string]string {
	a := map[string]string{"msg": mode, "ip": ip, "rate": fmt.Sprint(rate)}
	if peer != "" {
		a["peer"] = peer
	}
	return a
}

// MessageSeqs returns the seqs of the valid records on a raw disk image of
// size bytes, lowest first. A messaging receiver's ring may have holes
// (lost datagrams), so only every slot's content is checked: zero, or a
// valid record that belongs there.
func MessageSeqs(r io.ReaderAt, size int64) ([]uint64, error) {
	slots := record.Slots(size)
	if slots == 0 {
		return nil, fmt.Errorf("message records: a %d-byte image has no room for the ring", size)
	}
	var seqs []uint64
	err := record.Scan(r, size, make([]byte, 256*record.Size), func(slot int, b []byte) error {
		rec, err := record.Decode(b)
		if err == record.ErrEmpty {
			return nil
		}
		if err != nil {
			return fmt.Errorf("message records: slot %d: %w", slot, err)
		}
		if record.SlotOf(rec.Seq, slots) != slot {
			return fmt.Errorf("message records: slot %d holds seq %d", slot, rec.Seq)
		}
		seqs = append(seqs, rec.Seq)
		return nil
	})
	slices.Sort(seqs)
	return seqs, err
}
