package agent

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/libvirtvm"
)

// ram_capture: a default, the three values, and tracked refused where
// drsync cannot track (image files, libvirt domains) at validation.
func TestRAMCaptureSetting(t *testing.T) {
	live := func(mode string) VMSettings {
		return VMSettings{Name: "app-1", QMP: "/run/qmp", Disks: []DiskSettings{{Name: "vda", Node: "disk0"}}, RAMCapture: mode}
	}
	tests := []struct {
		name    string
		vm      VMSettings
		want    string // the value after validation
		wantErr string
	}{
		{"default", live(""), RAMCaptureAuto, ""},
		{"tracked", live("tracked"), RAMCaptureTracked, ""},
		{"full", live("full"), RAMCaptureFull, ""},
		{"unknown", live("dirty"), "", `vm "app-1": ram_capture: "dirty": want "auto", "tracked" or "full"`},
		{"tracked image files", VMSettings{Name: "app-1", Disks: []DiskSettings{{Name: "vda", Path: "/img"}}, RAMCapture: "tracked"}, "",
			`vm "app-1": ram_capture: "tracked" only applies to a live VM`},
		{"tracked libvirt", VMSettings{Name: "app-1", Libvirt: libvirtvm.Config{Libvirt: "qemu:///system", Domain: "app-1"}, RAMCapture: "tracked"}, "",
			`vm "app-1": ram_capture: "tracked" is not supported for a libvirt domain`},
		{"auto libvirt", VMSettings{Name: "app-1", Libvirt: libvirtvm.Config{Libvirt: "qemu:///system", Domain: "app-1"}}, RAMCaptureAuto, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.vm
			err := v.Validate(0)
			if tc.wantErr != "" {
				var fe *field.Error
				if err == nil || !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a field error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.RAMCapture != tc.want {
				t.Errorf("ram_capture = %q, want %q", v.RAMCapture, tc.want)
			}
			if got := v.Options(t.TempDir(), nil).RAMCapture; got != tc.want {
				t.Errorf("VM.RAMCapture = %q, want %q", got, tc.want)
			}
		})
	}
}

// The tracked block is the machine's memory backend, and only a shared
// memfd one; each refusal says why.
func TestPickSharedRAM(t *testing.T) {
	memfd := []qomProp{{Name: "type", Type: "string"}, {Name: "ram0", Type: "child<memory-backend-memfd>"}, {Name: "ram1", Type: "child<memory-backend-file>"}}
	tests := []struct {
		name    string
		machine string
		devs    []memdev
		objects []qomProp
		want    sharedRAM
		wantErr string
	}{
		{"memfd shared", "/objects/ram0", []memdev{{ID: "ram0", Size: 256 << 20, Share: true}}, memfd, sharedRAM{ID: "ram0", Size: 256 << 20}, ""},
		{"the machine's among several", "/objects/ram0", []memdev{{ID: "nv0", Size: 1 << 20, Share: true}, {ID: "ram0", Size: 1 << 30, Share: true}},
			append(memfd, qomProp{Name: "nv0", Type: "child<memory-backend-memfd>"}), sharedRAM{ID: "ram0", Size: 1 << 30}, ""},
		{"no backend (plain -m)", "", nil, memfd, sharedRAM{}, "the machine has no memory backend"},
		{"file backend", "/objects/ram1", []memdev{{ID: "ram1", Size: 1 << 30, Share: true}}, memfd, sharedRAM{}, `"ram1" is "child<memory-backend-file>", not a memory-backend-memfd`},
		{"internal backend", "/machine/unattached/pc.ram", nil, memfd, sharedRAM{}, `"pc.ram" is "", not a memory-backend-memfd`},
		{"not shared", "/objects/ram0", []memdev{{ID: "ram0", Size: 1 << 30}}, memfd, sharedRAM{}, "not shared (share=on)"},
		{"not listed", "/objects/ram0", nil, memfd, sharedRAM{}, `query-memdev does not list the memory backend "ram0"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pickSharedRAM(tc.machine, tc.devs, tc.objects)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrNoTrackedRAM) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrNoTrackedRAM saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// QEMU's pid comes from the listening socket's credentials: here this
// process listens, and nobody accepts.
func TestQEMUPID(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := qemuPID(sock)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("qemuPID = %d, %v; want %d", pid, err, os.Getpid())
	}
	ln.Close()
	if _, err := qemuPID(sock); err == nil {
		t.Fatal("qemuPID of a closed socket: no error")
	}
}
