package migstream

import (
	"bytes"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages of b the kernel has mapped.
func resident(t *testing.T, b []byte) int64 {
	t.Helper()
	vec := make([]byte, (len(b)+PageSize-1)/PageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); errno != 0 {
		t.Fatal(errno)
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n
}

// TestPrefaultStaysAhead: a block that takes more than prefaultFrom gets
// its next pages mapped ahead of the parser, a bounded distance ahead;
// a block below it maps only what it uses; pages read back as written
// either way, and Close stops the prefaulter before unmapping.
func TestPrefaultStaysAhead(t *testing.T) {
	const size = 256 << 20
	page := func(i int64) []byte {
		b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 1}, PageSize/3+1)
		return b[:PageSize]
	}
	for _, tc := range []struct {
		name    string
		pages   int64
		prefets bool
	}{
		{"small", prefaultFrom/PageSize - 1, false},
		{"large", 3 * prefaultFrom / PageSize, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFlat()
			defer f.Close()
			if err := f.Blocks([]Block{{ID: "pc.ram", Length: size}}); err != nil {
				t.Fatal(err)
			}
			// Scattered over the block: the arena still fills from its start.
			for i := int64(0); i < tc.pages; i++ {
				if err := f.Page(0, (i*7919%(size/PageSize))*PageSize, page(i)); err != nil {
					t.Fatal(err)
				}
			}
			img := f.imgs[0]
			if (img.pf != nil) != tc.prefets {
				t.Fatalf("prefaulter started: %v, want %v", img.pf != nil, tc.prefets)
			}
			used := tc.pages * PageSize
			if tc.prefets {
				// It runs on its own: wait for it to reach the parser's
				// goal (no timing asserted, only where it stops).
				goal := img.pf.want.Load()
				if goal <= used || goal > used+max(used/4, prefaultMin) {
					t.Fatalf("prefaulter's goal %d MiB with %d MiB used, want ahead by at most a quarter", goal>>20, used>>20)
				}
				deadline := time.Now().Add(30 * time.Second)
				for resident(t, img.base[used:goal]) < (goal-used)/PageSize {
					if time.Now().After(deadline) {
						t.Fatalf("pages ahead of the parser never mapped: %d of %d", resident(t, img.base[used:goal]), (goal-used)/PageSize)
					}
					time.Sleep(10 * time.Millisecond)
				}
				if n := resident(t, img.base[goal+hugePage:]); n != 0 {
					t.Errorf("%d pages mapped past the prefaulter's goal", n)
				}
			} else if n := resident(t, img.base[used+hugePage:]); n != 0 {
				t.Errorf("%d pages mapped past what a small block used", n)
			}
			buf := make([]byte, PageSize)
			for i := int64(0); i < tc.pages; i++ {
				if _, err := img.ReadAt(buf, (i*7919%(size/PageSize))*PageSize); err != nil || !bytes.Equal(buf, page(i)) {
					t.Fatalf("page %d reads back wrong (%v)", i, err)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if img.pf != nil {
				t.Error("Close left the prefaulter running")
			}
		})
	}
}
