package takeover

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMapWritten(t *testing.T) {
	tests := []struct {
		name, json string
		want       bool
		err        bool
	}{
		{"new overlay: all in the backing file", `[{"start":0,"length":67108864,"depth":1,"present":true,"zero":true,"data":false,"offset":0}]`, false, false},
		{"data written", `[{"start":0,"length":65536,"depth":0,"present":true,"zero":false,"data":true,"offset":327680},{"start":65536,"length":983040,"depth":1,"present":true,"zero":true,"data":false}]`, true, false},
		{"zeros written", `[{"start":0,"length":1048576,"depth":1,"zero":true,"data":false},{"start":1048576,"length":65536,"depth":0,"present":true,"zero":true,"data":false}]`, true, false},
		{"no extents", `[]`, false, false},
		{"not JSON", `qemu-img: oops`, false, true},
		{"extent without depth", `[{"start":0,"length":512}]`, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mapWritten([]byte(tt.json))
			if got != tt.want || (err != nil) != tt.err {
				t.Fatalf("mapWritten = %v, %v; want %v, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestOverlaysAreNeverReplaced: an overlay is unwritten until something
// writes to it, in use while a process holds it; Prepare's check refuses
// written and held overlays; MoveAside keeps a written overlay readable,
// its backing file (a rebuilt recovery point in the work directory) moved
// along with it.
func TestOverlaysAreNeverReplaced(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("no qemu-io")
	}
	dir := t.TempDir()
	work := filepath.Join(dir, "work", "vm-1")
	point := filepath.Join(work, "point-3")
	os.MkdirAll(point, 0o700)
	qemuImg(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(point, "vda.img"), "4M")
	disks := []Disk{{Target: "vda", Node: "disk0"}}
	ov := OverlayPath(work, disks[0])
	state := func() OverlayState { return InspectOverlays(work, disks)[0].State }

	if s := state(); s != OverlayAbsent {
		t.Fatalf("no overlay: %v", s)
	}
	qemuImg(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(point, "vda.img"), "-F", "raw", ov, "4M")
	if s := state(); s != OverlayUnwritten {
		t.Fatalf("new overlay: %v", s)
	}
	if err := checkNoWrittenOverlays(work, disks); err != nil {
		t.Fatalf("new overlay refused: %v", err)
	}
	qemuImg(t, "qemu-io", "-c", "write -P 0x5a 1M 64k", ov)
	if s := state(); s != OverlayWritten {
		t.Fatalf("written overlay: %v", s)
	}
	if err := checkNoWrittenOverlays(work, disks); !errors.Is(err, ErrOverlaysWritten) || !strings.Contains(err.Error(), ov) {
		t.Fatalf("written overlay: %v", err)
	}

	// A process holding the image (as a running QEMU does); inspected once
	// it has opened it (its prompt), so the inspection does not hold the
	// image while it opens.
	hold := exec.Command("qemu-io", ov)
	stdin, _ := hold.StdinPipe()
	stdout, _ := hold.StdoutPipe()
	var holdErr bytes.Buffer
	hold.Stderr = &holdErr
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	prompt := make([]byte, len("qemu-io>"))
	_, err := io.ReadFull(stdout, prompt)
	s := state()
	stdin.Close()
	io.Copy(io.Discard, stdout)
	hold.Wait()
	if err != nil || s != OverlayInUse {
		t.Fatalf("held overlay: %v (qemu-io: %q %v %s)", s, prompt, err, holdErr.String())
	}

	aside := filepath.Join(dir, "work", "_discarded", "vm-1-20261204T101500Z")
	if err := MoveAside(work, aside); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Fatalf("work directory still there: %v", err)
	}
	moved := OverlayPath(aside, disks[0])
	if s := InspectOverlays(aside, disks)[0]; s.State != OverlayWritten {
		t.Fatalf("moved overlay: %v %v", s.State, s.Err)
	}
	qemuImg(t, "qemu-io", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0 0 1M", moved)
	out, _ := exec.Command("qemu-img", "info", "-U", moved).CombinedOutput()
	if !strings.Contains(string(out), filepath.Join(aside, "point-3", "vda.img")) {
		t.Errorf("moved overlay's backing file:\n%s", out)
	}
	if err := MoveAside(filepath.Join(dir, "work", "vm-2"), aside); err == nil {
		t.Error("moved a directory over an existing one")
	}
}
