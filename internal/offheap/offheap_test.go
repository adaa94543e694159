package offheap

import (
	"runtime"
	"testing"
	"time"
)

type entry struct {
	h    uint64
	a, b int32
	f    [2]uint16
}

func TestSliceIsZeroedWritableAndFreed(t *testing.T) {
	var a Arena
	s := Slice[entry](&a, 100000)
	if len(s) != 100000 || cap(s) != 100000 {
		t.Fatalf("len %d cap %d", len(s), cap(s))
	}
	for i := range s {
		if s[i] != (entry{}) {
			t.Fatalf("entry %d not zero: %+v", i, s[i])
		}
		s[i].h = uint64(i)
	}
	if a.Bytes != 100000*24 {
		t.Fatalf("arena counts %d bytes, want %d", a.Bytes, 100000*24)
	}
	u := Slice[int32](&a, 10)
	u[9] = -1
	Free(&a, s)
	if a.Bytes != 40 || len(a.maps) != 1 {
		t.Fatalf("after Free: %d bytes in %d mappings, want 40 in 1", a.Bytes, len(a.maps))
	}
	Free(&a, s[:0]) // already freed: not in the arena any more, left alone
	Free[int32](&a, nil)
	Free(&a, make([]int32, 4)) // heap memory is the collector's
	a.Release()
	if a.Bytes != 0 || len(a.maps) != 0 {
		t.Fatalf("after Release: %d bytes in %d mappings", a.Bytes, len(a.maps))
	}
	if s := Slice[uint64](&a, 0); s == nil || len(s) != 0 {
		t.Fatalf("Slice of 0 = %#v, want an empty slice", s)
	}
}

func TestSliceRefusesPointers(t *testing.T) {
	for name, f := range map[string]func(){
		"pointer":         func() { Slice[*int](&Arena{}, 1) },
		"slice in struct": func() { Slice[struct{ b []byte }](&Arena{}, 1) },
		"string":          func() { Slice[string](&Arena{}, 1) },
		"map in array":    func() { Slice[[2]map[int]int](&Arena{}, 1) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f()
		})
	}
}

// The pattern owners use: memory goes back when the owner is collected
// without a Close.
func TestCleanupReleasesDroppedOwner(t *testing.T) {
	released := make(chan int, 1)
	func() {
		type owner struct {
			mem  *Arena
			data []uint64
		}
		o := &owner{mem: &Arena{}}
		o.data = Slice[uint64](o.mem, 1<<16)
		o.data[1] = 1
		runtime.AddCleanup(o, func(a *Arena) { n := a.Bytes; a.Release(); released <- n }, o.mem)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		runtime.GC()
		select {
		case n := <-released:
			if n != 8<<16 {
				t.Fatalf("cleanup released %d bytes, want %d", n, 8<<16)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatal("the dropped owner's arena was never released")
}
