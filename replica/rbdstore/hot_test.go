package rbdstore

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"testing"

	"github.com/drsync/drsync/rbd"
	"github.com/drsync/drsync/replica"
)

// objectPool answers ReadObject from a map; nothing else is called.
type objectPool struct {
	rbd.Pool
	objs map[string][]byte
}

func (p objectPool) ReadObject(oid string) ([]byte, error) {
	if b, ok := p.objs[oid]; ok {
		return b, nil
	}
	return nil, fs.ErrNotExist
}

// TestHotRAM: the runs written in the recorded epochs, newest epoch
// first, each once, at the run size asked for; epochs after the one
// taken over are left out; targets are told apart by name.
func TestHotRAM(t *testing.T) {
	marks := func(name string, size uint64, writes ...[2]uint64) hotMarks {
		h := hotMarks{}
		for _, w := range writes {
			h.mark(name, size, w[0], int(w[1]))
		}
		return h
	}
	const size = 64 << 20
	hs := hotSet{Run: hotRun, Epochs: []hotEpoch{
		{Epoch: 9, RAM: marks("pc.ram", size, [2]uint64{0, 4096})},                                            // after the epoch taken over
		{Epoch: 8, RAM: marks("pc.ram", size, [2]uint64{5 * hotRun, 4096}, [2]uint64{2*hotRun - 4096, 8192})}, // runs 5, 1, 2
		{Epoch: 7, RAM: marks("pc.ram", size, [2]uint64{5 * hotRun, 4096}, [2]uint64{63 << 20, 4096})},
	}}
	hs.Epochs[2].RAM["vga.vram"] = marks("vga.vram", 16<<20, [2]uint64{0, 4096})["vga.vram"]
	b, _ := json.Marshal(hs)
	img := &image{pool: objectPool{objs: map[string][]byte{"p-vm.hot": b}}, base: "p-vm", m: &replica.Manifest{Epoch: 8}}
	for _, tc := range []struct {
		name string
		run  int64
		want string
	}{
		{"pc.ram", hotRun, fmt.Sprint([]int64{1 * hotRun, 2 * hotRun, 5 * hotRun, 252 * hotRun})},
		{"pc.ram", 4 << 20, fmt.Sprint([]int64{0, 60 << 20})},
		{"vga.vram", hotRun, "[0]"},
		{"other", hotRun, "[]"},
	} {
		got, err := img.HotRAM(&replica.TargetEntry{Kind: "ram", Name: tc.name, Size: size}, tc.run)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != tc.want && !(tc.want == "[]" && len(got) == 0) {
			t.Errorf("%s at %d: %v, want %s", tc.name, tc.run, got, tc.want)
		}
	}
	// No hot set recorded: none, no error.
	img.pool = objectPool{objs: map[string][]byte{}}
	if got, err := img.HotRAM(&replica.TargetEntry{Name: "pc.ram", Size: size}, hotRun); err != nil || len(got) != 0 {
		t.Errorf("no hot set: %v, %v", got, err)
	}
}
