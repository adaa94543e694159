package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drsync/drsync/dirtylog"
	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/testkit/hosttools"
)

// ram_capture: a default, the three values, and tracked refused where
// drsync cannot track (image files) at validation.
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
		{"tracked libvirt", VMSettings{Name: "app-1", Libvirt: libvirtvm.Config{Libvirt: "qemu:///system", Domain: "app-1"}, RAMCapture: "tracked"}, RAMCaptureTracked, ""},
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

// fakeMonitor answers the QMP commands setupRAMCapture asks, as a QEMU
// whose machine memory backend is backend (type typ, shared or not).
func fakeMonitor(t *testing.T, backend, typ string, share bool) string {
	t.Helper()
	sock := filepath.Join(hosttools.ShortTempDir(t, "ramq"), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(`{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":""},"capabilities":[]}}` + "\r\n"))
				dec, enc := json.NewDecoder(c), json.NewEncoder(c)
				for {
					var req struct {
						Execute string `json:"execute"`
						ID      any    `json:"id"`
					}
					if dec.Decode(&req) != nil {
						return
					}
					var ret any = map[string]any{}
					switch req.Execute {
					case "qom-get":
						ret = "/objects/" + backend
					case "query-memdev":
						ret = []map[string]any{{"id": backend, "size": 256 << 20, "share": share}}
					case "query-uuid":
						ret = map[string]any{"UUID": "5f6b7d1e-0000-4000-8000-00000000dead"}
					case "qom-list":
						ret = []map[string]any{{"name": "type", "type": "string"}, {"name": backend, "type": "child<" + typ + ">"}}
					}
					enc.Encode(map[string]any{"return": ret, "id": req.ID})
				}
			}()
		}
	}()
	return sock
}

// setupRAMCapture turns tracking on for a shared memfd backend; without
// one, "auto" cuts full and "tracked" refuses to start, saying why; "full"
// never asks QEMU.
func TestSetupRAMCapture(t *testing.T) {
	kernelErr := dirtylog.CheckKernel()
	memfd := fakeMonitor(t, "ram0", "memory-backend-memfd", true)
	plain := fakeMonitor(t, "pc.ram", "memory-backend-ram", false)
	tests := []struct {
		name, mode, socket string
		libvirt            bool
		wantTracked        bool
		wantErr            string
	}{
		{"auto memfd", RAMCaptureAuto, memfd, false, true, ""},
		{"tracked memfd", RAMCaptureTracked, memfd, false, true, ""},
		{"full memfd", RAMCaptureFull, memfd, false, false, ""},
		{"auto plain", RAMCaptureAuto, plain, false, false, ""},
		{"tracked plain", RAMCaptureTracked, plain, false, false, `ram_capture = "tracked": guest RAM writes cannot be tracked: the machine's memory backend "pc.ram" is "child<memory-backend-ram>"`},
		{"auto no QEMU", RAMCaptureAuto, "/nonexistent/qmp.sock", false, false, ""},
		{"tracked no QEMU", RAMCaptureTracked, "/nonexistent/qmp.sock", false, false, "/nonexistent/qmp.sock does not exist"},
		{"auto libvirt", RAMCaptureAuto, memfd, true, false, ""},
		{"tracked libvirt, QEMU elsewhere", RAMCaptureTracked, memfd, true, false, "no process of this host runs QEMU with -uuid 5f6b7d1e-0000-4000-8000-00000000dead"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantTracked && kernelErr != nil {
				t.Skipf("this kernel cannot track: %v", kernelErr)
			}
			o := livecut.Options{QMPSocket: tc.socket}
			err := setupRAMCapture(context.Background(), tc.mode, &o, tc.libvirt, slog.New(slog.DiscardHandler))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := o.TrackRAM != nil; got != tc.wantTracked || (o.SharedRAM == "ram0") != tc.wantTracked {
				t.Fatalf("tracked %v (SharedRAM %q), want %v", got, o.SharedRAM, tc.wantTracked)
			}
		})
	}
}

// A libvirt domain's QEMU is the one process of this host started with
// the domain's UUID; none, several, or no UUID are errors saying so.
func TestPIDByUUID(t *testing.T) {
	const uuid = "0b6a1c2e-95b5-4d3a-9c55-3a1e4a8f0f11"
	proc := func(cmdlines map[string]string) string {
		dir := t.TempDir()
		for pid, cl := range cmdlines {
			os.MkdirAll(filepath.Join(dir, pid), 0o755)
			os.WriteFile(filepath.Join(dir, pid, "cmdline"), []byte(strings.ReplaceAll(cl, " ", "\x00")+"\x00"), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "uptime"), nil, 0o644)
		return dir
	}
	qemu := "qemu-system-x86_64 -name guest=web-1 -uuid " + uuid + " -m 256"
	tests := []struct {
		name    string
		procs   map[string]string
		uuid    string
		want    int
		wantErr string
	}{
		{"found", map[string]string{"1": "init", "4242": qemu, "77": "qemu-system-x86_64 -uuid 11111111-95b5-4d3a-9c55-3a1e4a8f0f11"}, uuid, 4242, ""},
		{"as a prefix of another arg", map[string]string{"5": "qemu -uuid " + uuid + "x"}, uuid, 0, "no process of this host"},
		{"not on this host", map[string]string{"1": "init"}, uuid, 0, "no process of this host runs QEMU with -uuid " + uuid},
		{"twice", map[string]string{"4242": qemu, "4343": qemu}, uuid, 0, "all run QEMU with -uuid"},
		{"no uuid", map[string]string{"4242": qemu}, "00000000-0000-0000-0000-000000000000", 0, "reports no UUID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pidByUUID(proc(tc.procs), tc.uuid)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("pid %d, err = %v, want one saying %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("pid %d, err %v, want %d", got, err, tc.want)
			}
		})
	}
}
