package guest

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
)

// Protected boots the guest the replication tests protect: memMiB of RAM, a
// 64 MiB raw disk (node disk0, the workload's record ring) and a 32 MiB
// qcow2 disk (node disk1), both in the returned short-named directory as
// vda.raw and vdb.qcow2. It returns once the workload runs.
func Protected(t testing.TB, memMiB int, args map[string]string) (*VM, string) {
	t.Helper()
	return ProtectedWith(t, memMiB, args)
}

// ProtectedWith is Protected with extra QEMU arguments, e.g. a second
// -qmp socket for a test to watch the guest while drsync holds the first.
func ProtectedWith(t testing.TB, memMiB int, args map[string]string, extraQEMU ...string) (*VM, string) {
	t.Helper()
	hosttools.Need(t, "qemu-system-x86_64", "qemu-img")
	Build(t)
	dir := hosttools.ShortTempDir(t, "pg")
	raw, qcow := filepath.Join(dir, "vda.raw"), filepath.Join(dir, "vdb.qcow2")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M")
	vm := Launch(t, Options{MemMiB: memMiB, Args: args, Disks: []Disk{{Path: raw}, {Path: qcow}}, ExtraQEMUArgs: extraQEMU})
	if _, err := vm.WaitTicks(10, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	return vm, dir
}

// parseTick parses one "TICK <counter> <seq>" line.
func parseTick(line string) (Tick, bool) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "TICK" {
		return Tick{}, false
	}
	c, err1 := strconv.ParseUint(f[1], 10, 64)
	s, err2 := strconv.ParseUint(f[2], 10, 64)
	return Tick{Counter: c, Seq: s}, err1 == nil && err2 == nil
}

// ParseTicks returns the TICK lines of a serial console log (a guest
// started with -serial file:, such as a DR copy), without times.
func ParseTicks(log []byte) []Tick {
	var out []Tick
	for _, l := range strings.Split(string(log), "\n") {
		if tk, ok := parseTick(strings.TrimRight(l, "\r")); ok {
			out = append(out, tk)
		}
	}
	return out
}
