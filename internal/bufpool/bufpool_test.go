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
	if n := len(p.idle); n != 2 {
		t.Fatalf("%d idle buffers, want 2", n)
	}
	if d := p.Get(1); &d[:1][0] != &a[0] && &d[:1][0] != &b[:1][0] {
		t.Fatal("Get did not reuse an idle buffer")
	}
}
