package hosttools_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// StatCPU reads this process's command name and a CPU time that grows
// with work, and refuses a file that is no stat line.
func TestStatCPU(t *testing.T) {
	comm, before, err := hosttools.StatCPU("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Base(os.Args[0]); len(want) > 15 && comm != want[:15] || len(want) <= 15 && comm != want {
		t.Fatalf("command %q, want %q (at most 15 bytes)", comm, want)
	}
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	if _, after, err := hosttools.StatCPU("/proc/self/stat"); err != nil || after <= before {
		t.Fatalf("CPU %v after 100 ms of spinning, %v before (%v)", after, before, err)
	}
	bad := filepath.Join(t.TempDir(), "stat")
	for _, s := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u v 13"} {
		os.WriteFile(bad, []byte(s), 0o644)
		if _, _, err := hosttools.StatCPU(bad); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
