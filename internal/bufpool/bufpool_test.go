package bufpool

import "testing"

func TestPool(t *testing.T) {
	p := New(1024, 2)
	a, b, c := p.Get(10), p.Get(1024), p.Get(2000)
	if len(a) != 10 || cap(a) != 1024 || len(b) != 1024 || len(c) != 2000 {
		t.Fatalf("lengths %d %d %d, capacities %d %d", len(a), len(b), len(c), cap(a), cap(b))
	}
	a[0] = 7
	p.Put(a)
	p.Put(b)
	p.Put(c)                     // another size: dropped
	p.Put(make([]byte, 5, 1024)) // beyond keep: dropped
	if n := len(p.classes[0].idle); n != 2 {
		t.Fatalf("%d idle buffers, want 2", n)
	}
	if d := p.Get(1); &d[:1][0] != &a[0] && &d[:1][0] != &b[:1][0] {
		t.Fatal("Get did not reuse an idle buffer")
	}
}

// A request gets the smallest class that holds it, so a small user never
// holds a large buffer, and a buffer goes back to its own class only.
func TestClasses(t *testing.T) {
	const size = 4<<20 + 100
	p := New(size, 1)
	if got := p.Size(); got != size {
		t.Fatalf("Size %d, want %d", got, size)
	}
	for _, c := range []struct{ n, capacity int }{
		{0, size / 64},
		{1, size / 64},
		{size / 64, size / 64},
		{size/64 + 1, size / 16},
		{size / 16, size / 16},
		{size / 4, size / 4},
		{size/4 + 1, size},
		{size, size},
		{size + 1, size + 1}, // beyond the largest: exactly n, never kept
	} {
		b := p.Get(c.n)
		if len(b) != c.n || cap(b) != c.capacity {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", c.n, len(b), cap(b), c.capacity)
		}
	}
	// One idle buffer per class: a large one put back is not handed to a
	// small request, and the small class keeps its own.
	big, small := p.Get(size), p.Get(10)
	p.Put(big)
	if b := p.Get(10); cap(b) != size/64 || &b[:1][0] == &big[:1][0] {
		t.Fatalf("a small request got cap %d (the large idle buffer: %v)", cap(b), &b[:1][0] == &big[:1][0])
	}
	p.Put(small)
	if b := p.Get(size / 64); &b[:1][0] != &small[:1][0] {
		t.Fatal("the small class did not reuse its idle buffer")
	}
	if b := p.Get(size); &b[:1][0] != &big[:1][0] {
		t.Fatal("the large class did not reuse its idle buffer")
	}
	p.Put(make([]byte, 0, size/64+1)) // no class's capacity: dropped
	for _, c := range p.classes {
		if len(c.idle) != 0 {
			t.Fatalf("class %d holds %d idle buffers after a foreign Put", c.size, len(c.idle))
		}
	}
	// A pool smaller than MinClass has one class, and at most four below
	// any size.
	if n := len(New(MinClass*4-1, 1).classes); n != 1 {
		t.Errorf("%d classes under 4·MinClass, want 1", n)
	}
	if n := len(New(1<<30, 1).classes); n != maxClasses {
		t.Errorf("%d classes at 1 GiB, want %d", n, maxClasses)
	}
}
