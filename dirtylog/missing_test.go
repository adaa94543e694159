package dirtylog

import (
	"fmt"
	"io"
	"testing"
	"time"
)

// pattern is what the test's server puts in page p: the byte the helper's
// "r p" reads is p+1 (0 for the pages that are zero).
func pattern(p int) []byte {
	b := make([]byte, pageSize)
	if p%4 != 3 {
		b[p%pageSize] = byte(p + 1)
	}
	return b
}

func want(p int) string {
	if p%4 == 3 {
		return "v 0"
	}
	return fmt.Sprintf("v %d", p+1)
}

// TestMissingServesFaults: a process whose shared memfd is registered
// for missing-page faults reads each page as the server put it in, at
// the first touch; a range copied over pages already there leaves them as
// they are (the helper's write to one survives), and says how much it
// put in.
func TestMissingServesFaults(t *testing.T) {
	tg := startTarget(t)
	m, err := RegisterMissingRegions(tg.pid, tg.ram)
	needKernel(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if pre, err := m.Prepopulated(); err != nil || len(pre) != 0 {
		t.Fatalf("prepopulated %v, %v; want none", pre, err)
	}
	served := make(chan int, helperPages)
	go func() {
		offs := make([]uint64, 8)
		for {
			n, err := m.Faults(offs)
			if err == io.EOF {
				return
			} else if err != nil {
				t.Error(err)
				return
			}
			for _, off := range offs[:n] {
				p := int(off / pageSize)
				if p%4 == 3 {
					_, err = m.Zero(off, pageSize)
				} else {
					_, err = m.Copy(off, pattern(p))
				}
				if err != nil {
					t.Error(err)
				}
				served <- p
			}
		}
	}()
	for _, p := range []int{5, 7, 0, 5, 63} {
		tg.do(fmt.Sprintf("r %d", p), want(p))
	}
	tg.do("w 9", "ok") // faults in page 9 (10) and makes it 11
	var got []int
	for len(got) < 5 {
		select {
		case p := <-served:
			got = append(got, p)
		case <-time.After(10 * time.Second):
			t.Fatalf("faults served: %v", got)
		}
	}
	if fmt.Sprint(got) != "[5 7 0 63 9]" {
		t.Errorf("faults served %v, want [5 7 0 63 9] (page 5 once)", got)
	}
	// The fill: every page, over the five already in.
	all := make([]byte, 0, helperPages*pageSize)
	for p := range helperPages {
		all = append(all, pattern(p)...)
	}
	n, err := m.Copy(0, all)
	if err != nil {
		t.Fatal(err)
	}
	if n != (helperPages-5)*pageSize {
		t.Errorf("the fill put in %d bytes, want %d (all pages but the 5 in)", n, (helperPages-5)*pageSize)
	}
	if n, err := m.Zero(0, helperPages*pageSize); err != nil || n != 0 {
		t.Errorf("zero over a full range: %d bytes, %v", n, err)
	}
	tg.do("r 9", "v 11")
	for p := range helperPages {
		if p != 9 {
			tg.do(fmt.Sprintf("r %d", p), want(p))
		}
	}
	select {
	case p := <-served:
		t.Errorf("page %d faulted after the fill", p)
	default:
	}
	if err := m.Unregister(); err != nil {
		t.Fatal(err)
	}
}

// TestMissingServerGoneBlocks: when the server's userfaultfd is closed
// before a page is in, the process's own copy (which RegisterMissing
// leaves open) keeps the registration: a read of the page waits instead
// of finding zeros. Without that copy (the last reference gone), the
// kernel drops the registration and the same read gets a zero page: the
// guest would read zeros for its memory.
func TestMissingServerGoneBlocks(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			tg := startTarget(t)
			spec := missingSpec
			spec.Keep = keep
			f, err := registerViaSpec(tg.pid, tg.ram, spec)
			needKernel(t, err)
			if err != nil {
				t.Fatal(err)
			}
			m := &Missing{pid: tg.pid, regions: tg.ram, size: helperPages * pageSize, f: f}
			m.rc, _ = f.SyscallConn()
			if _, err := m.Copy(pageSize, pattern(1)); err != nil {
				t.Fatal(err)
			}
			m.Close()
			tg.do("r 1", want(1))
			fmt.Fprintln(tg.in, "r 2")
			select {
			case l := <-tg.lines:
				if keep {
					t.Fatalf("with the process's copy open, a missing page read %q after the server closed", l)
				}
				if l != "v 0" {
					t.Fatalf("read %q", l)
				}
			case <-time.After(2 * time.Second):
				if !keep {
					t.Fatal("without the process's copy, the read still waits 2 s after the server closed")
				}
			}
		})
	}
}
