package rbdstore

import (
	"encoding/json"
	"fmt"
	"math/bits"

	"github.com/drsync/drsync/replica"
)

// The hot set: which runs of each RAM image the guest wrote in its last
// hotEpochs epochs (what warmset calls hot with its defaults: a page
// stays hot four epochs after a write), newest epoch first, as one
// bitmap of hotRun-sized runs per RAM target and epoch: 512 bytes per
// GiB and epoch. A lazy takeover fills those runs first. It is written
// just before the manifest (a replay writes it again, replacing the
// epoch's entry) and is advice only: one an epoch ahead of the manifest
// (a crash between the two) is read without its newer epochs, and one
// unreadable is replaced.
const (
	hotEpochs = 4
	hotRun    = 256 << 10
	hotObject = "hot"
)

type hotSet struct {
	Run    int64      `json:"run"`
	Epochs []hotEpoch `json:"epochs"`
}

type hotEpoch struct {
	Epoch uint64            `json:"epoch"`
	RAM   map[string][]byte `json:"ram"` // by target name, a bit per run
}

// hotMarks collects the RAM runs an apply writes.
type hotMarks map[string][]byte

func (h hotMarks) mark(name string, size uint64, off uint64, n int) {
	b := h[name]
	if b == nil {
		b = make([]byte, (size/hotRun+8)/8)
		h[name] = b
	}
	for r := off / hotRun; r <= (off+uint64(max(n, 1))-1)/hotRun && r/8 < uint64(len(b)); r++ {
		b[r/8] |= 1 << (r % 8)
	}
}

// recordHot adds epoch's marks to the VM's hot set, dropping the epochs
// beyond hotEpochs.
func (h *handle) recordHot(epoch uint64, marks hotMarks) error {
	var hs hotSet
	if b, err := h.s.Pool.ReadObject(h.obj(hotObject)); err == nil {
		if json.Unmarshal(b, &hs) != nil || hs.Run != hotRun {
			hs = hotSet{}
		}
	} else if !notExist(err) {
		return err
	}
	hs.Run = hotRun
	keep := []hotEpoch{{Epoch: epoch, RAM: marks}}
	for _, e := range hs.Epochs {
		if e.Epoch < epoch && len(keep) < hotEpochs {
			keep = append(keep, e)
		}
	}
	hs.Epochs = keep
	b, err := json.Marshal(hs)
	if err != nil {
		return err
	}
	return h.s.Pool.WriteObject(h.obj(hotObject), b)
}

// HotRAM lists the runs of RAM target t written in the replica's recent
// epochs, as offsets of run-sized runs, the newest epoch's first, each
// once; none if no hot set was recorded.
func (d *image) HotRAM(t *replica.TargetEntry, run int64) ([]int64, error) {
	b, err := d.pool.ReadObject(d.base + "." + hotObject)
	if notExist(err) {
		return nil, nil
	} else if err != nil {
		return nil, storageErr("read the hot set", err)
	}
	var hs hotSet
	if err := json.Unmarshal(b, &hs); err != nil {
		return nil, fmt.Errorf("hot set: %w", err)
	}
	if hs.Run <= 0 || run <= 0 {
		return nil, fmt.Errorf("hot set: run of %d bytes", hs.Run)
	}
	seen := map[int64]bool{}
	var out []int64
	for _, e := range hs.Epochs {
		if e.Epoch > d.m.Epoch {
			continue // applied after the epoch taken over
		}
		for i, by := range e.RAM[t.Name] {
			for by != 0 {
				k := bits.TrailingZeros8(by)
				by &^= 1 << k
				off := (int64(i*8+k) * hs.Run) / run * run
				if off < t.Size && !seen[off] {
					seen[off] = true
					out = append(out, off)
				}
			}
		}
	}
	return out, nil
}
