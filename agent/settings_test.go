package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/internal/field"
	"github.com/drsync/drsync/sender"
)

// Each mistake names the setting to fix, as the configuration names it.
func TestVMSettingsValidate(t *testing.T) {
	files := func() VMSettings {
		return VMSettings{Name: "web-1", Disks: []DiskSettings{{Name: "vda", Path: "/img/vda"}}, RAM: []sender.FileRAM{{Name: "pc.ram", Path: "/img/ram"}}}
	}
	live := func() VMSettings {
		return VMSettings{Name: "app-1", QMP: "/run/qmp", Disks: []DiskSettings{{Name: "vda", Node: "disk0"}}}
	}
	tests := []struct {
		name     string
		vm       func() VMSettings
		wantPath string // "" means valid
		wantMsg  string
	}{
		{"image files", files, "", ""},
		{"live", live, "", ""},
		{"bad name", func() VMSettings { v := files(); v.Name = "../x"; return v }, "vm[3].name", "../x"},
		{"schedule in continuous mode", func() VMSettings { v := files(); v.Mode = Continuous; v.Schedule = time.Hour; return v }, `vm "web-1": schedule`, "only used with"},
		{"min interval too short", func() VMSettings { v := files(); v.MinInterval = time.Millisecond; return v }, `vm "web-1": min_interval`, "shorter"},
		{"min interval just too short", func() VMSettings { v := live(); v.MinInterval = 99 * time.Millisecond; return v }, `vm "app-1": min_interval`, "shorter than 100ms"},
		{"sub-second min interval", func() VMSettings { v := live(); v.MinInterval = 100 * time.Millisecond; return v }, "", ""},
		{"sub-second adaptive", func() VMSettings {
			v := live()
			v.MinInterval, v.RPOTarget = 200*time.Millisecond, 2*time.Second
			return v
		}, "", ""},
		{"bad mode", func() VMSettings { v := files(); v.Mode = "often"; return v }, `vm "web-1": mode`, "often"},
		{"auto compression without target", func() VMSettings { v := files(); v.Compression = AutoCompression; return v }, `vm "web-1": compression`, "rpo_target"},
		{"target with no room", func() VMSettings { v := files(); v.RPOTarget, v.MinInterval = time.Minute, time.Minute; return v }, `vm "web-1": rpo_target`, "no room"},
		{"disk twice", func() VMSettings { v := files(); v.Disks = append(v.Disks, v.Disks[0]); return v }, `vm "web-1": disk "vda"`, "twice"},
		{"bad format", func() VMSettings { v := files(); v.Disks[0].Format = "vmdk"; return v }, `vm "web-1": disk "vda".format`, "vmdk"},
		{"block size", func() VMSettings { v := files(); v.Disks[0].BlockSize = 96 << 10; return v }, `vm "web-1": disk "vda".block_size`, "power of two"},
		{"node on a file", func() VMSettings { v := files(); v.Disks[0].Node = "disk0"; return v }, `vm "web-1": disk "vda".node`, "only for a live VM"},
		{"work dir without qmp", func() VMSettings { v := files(); v.WorkDir = "/w"; return v }, `vm "web-1": qmp`, "missing"},
		{"live RAM file", func() VMSettings { v := live(); v.RAM = []sender.FileRAM{{Name: "r", Path: "/r"}}; return v }, `vm "app-1": ram`, "QEMU"},
		{"live node twice", func() VMSettings {
			v := live()
			v.Disks = append(v.Disks, DiskSettings{Name: "vdb", Node: "disk0"})
			return v
		}, `vm "app-1": disk "vdb".node`, "twice"},
		{"live block size", func() VMSettings { v := live(); v.Disks[0].BlockSize = 4 << 10; return v }, `vm "app-1": disk "vda".block_size`, "64KiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.vm()
			err := v.Validate(3)
			if tc.wantPath == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if v.Pacing().Mode != Continuous || v.Compression != DefaultCompression || v.Disks[0].BlockSize != 64<<10 {
					t.Errorf("defaults not filled in: %+v", v)
				}
				return
			}
			fe, ok := errors.AsType[*field.Error](err)
			if !ok || fe.Path != tc.wantPath || !strings.Contains(fe.Err.Error(), tc.wantMsg) {
				t.Errorf("error %v; want path %q, message with %q", err, tc.wantPath, tc.wantMsg)
			}
		})
	}
}

func TestPeerSettingsValidate(t *testing.T) {
	fp := "sha256:" + strings.Repeat("AB", 32)
	tests := []struct {
		name     string
		p        PeerSettings
		wantPath string
	}{
		{"valid", PeerSettings{Address: "127.0.0.1:7447", Fingerprints: []string{fp}}, ""},
		{"no address", PeerSettings{Fingerprints: []string{fp}}, "receiver.address"},
		{"port zero", PeerSettings{Address: "127.0.0.1:0", Fingerprints: []string{fp}}, "receiver.address"},
		{"no trust", PeerSettings{Address: "127.0.0.1:7447"}, "receiver"},
		{"bad fingerprint", PeerSettings{Address: "127.0.0.1:7447", Fingerprints: []string{"sha256:xyz"}}, "receiver.fingerprints[0]"},
		{"idle timeout", PeerSettings{Address: "127.0.0.1:7447", HasCA: true, IdleTimeout: time.Hour}, "receiver.idle_timeout"},
		{"connections", PeerSettings{Address: "127.0.0.1:7447", HasCA: true, Connections: 1000}, "receiver.connections"},
		{"negative connections", PeerSettings{Address: "127.0.0.1:7447", HasCA: true, Connections: -1}, "receiver.connections"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.wantPath == "" {
				if err != nil || tc.p.Connections != 0 || tc.p.Fingerprints[0] != strings.ToLower(fp) {
					t.Errorf("error %v, settings %+v", err, tc.p)
				}
				return
			}
			if fe, ok := errors.AsType[*field.Error](err); !ok || fe.Path != tc.wantPath {
				t.Errorf("error %v; want path %q", err, tc.wantPath)
			}
		})
	}
}

func TestValidateVMs(t *testing.T) {
	vm := func(name string) VMSettings {
		return VMSettings{Name: name, Disks: []DiskSettings{{Name: "vda", Path: "/img/" + name}}}
	}
	for _, tc := range []struct {
		name     string
		vms      []VMSettings
		wantPath string
	}{
		{"two VMs", []VMSettings{vm("web-1"), vm("db-1")}, ""},
		{"none", nil, "vm"},
		{"listed twice", []VMSettings{vm("web-1"), vm("web-1")}, "vm[1].name"},
		{"second VM wrong", []VMSettings{vm("web-1"), {Name: "db-1"}}, `vm "db-1": disk`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateVMs(tc.vms)
			if tc.wantPath == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if fe, ok := errors.AsType[*field.Error](err); !ok || fe.Path != tc.wantPath {
				t.Errorf("error %v; want path %q", err, tc.wantPath)
			}
		})
	}
}
