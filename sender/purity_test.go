package sender

import (
	"os/exec"
	"strings"
	"testing"
)

// pure are the packages that hold decisions without IO: both sides'
// protocol sessions, the per-block decision, the epoch controller, the
// replica's recovery rule and the consistency-group points. (The replica's
// staging machine is not yet among them: it lives in package replica,
// beside its files.)
var pure = []string{
	"github.com/drsync/drsync/sender/protocol",
	"github.com/drsync/drsync/sender/blockplan",
	"github.com/drsync/drsync/epochctl",
	"github.com/drsync/drsync/receiver/protocol",
	"github.com/drsync/drsync/replica/recovery",
	"github.com/drsync/drsync/libvirtvm/lifecycle",
	"github.com/drsync/drsync/replica/grouppoint",
	"github.com/drsync/drsync/groupcut",
}

// TestPurePackagesDoNoIO checks, with go list -deps, that the pure
// packages cannot reach the network, processes or the file system: no
// package in their dependencies is net, os/exec or QUIC, and none outside
// the standard library imports os, os/exec, net or syscall itself. (os as
// such is in every closure: fmt imports it.)
func TestPurePackagesDoNoIO(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	for _, pkg := range pure {
		out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}\t{{.Standard}}\t{{join .Imports \" \"}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			f := strings.Split(line, "\t")
			if len(f) != 3 {
				t.Fatalf("go list: unexpected line %q", line)
			}
			path, std, imports := f[0], f[1] == "true", strings.Fields(f[2])
			if path == "net" || strings.HasPrefix(path, "net/") || path == "os/exec" || strings.HasPrefix(path, "github.com/quic-go/") {
				t.Errorf("%s depends on %s", pkg, path)
			}
			if std {
				continue
			}
			for _, imp := range imports {
				switch imp {
				case "os", "os/exec", "net", "syscall":
					t.Errorf("%s depends on %s, which imports %s", pkg, path, imp)
				}
			}
		}
	}
}
