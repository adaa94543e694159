package dirtylog

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const qemuMaps = `55d1c8a00000-55d1c8c6e000 r--p 00000000 00:1f 1234                       /usr/bin/qemu-system-x86_64
55d1c8c6e000-55d1c9400000 r-xp 0026e000 00:1f 1234                       /usr/bin/qemu-system-x86_64
7f0000000000-7f0008000000 rw-s 00000000 00:01 77                         /memfd:memory-backend-memfd (deleted)
7f0008000000-7f0010000000 rw-s 08000000 00:01 77                         /memfd:memory-backend-memfd (deleted)
7f0020000000-7f0020200000 rw-s 00000000 00:01 78                         /memfd:other (deleted)
7f0030000000-7f0030001000 rw-p 00000000 00:00 0 
7ffd1000000-7ffd1021000 rw-p 00000000 00:00 0                          [stack]
`

func TestParseMaps(t *testing.T) {
	maps, err := ParseMaps(strings.NewReader(qemuMaps))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{0x55d1c8a00000, 0x55d1c8c6e000, "r--p", 0, "/usr/bin/qemu-system-x86_64"},
		{0x55d1c8c6e000, 0x55d1c9400000, "r-xp", 0x26e000, "/usr/bin/qemu-system-x86_64"},
		{0x7f0000000000, 0x7f0008000000, "rw-s", 0, "/memfd:memory-backend-memfd (deleted)"},
		{0x7f0008000000, 0x7f0010000000, "rw-s", 0x8000000, "/memfd:memory-backend-memfd (deleted)"},
		{0x7f0020000000, 0x7f0020200000, "rw-s", 0, "/memfd:other (deleted)"},
		{0x7f0030000000, 0x7f0030001000, "rw-p", 0, ""},
		{0x7ffd1000000, 0x7ffd1021000, "rw-p", 0, "[stack]"},
	}
	if !reflect.DeepEqual(maps, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", maps, want)
	}
	if !maps[1].Exec() || maps[2].Exec() || !maps[2].Shared() || maps[5].Shared() {
		t.Fatal("permission helpers disagree with the permissions")
	}
}

func TestParseMapsMalformed(t *testing.T) {
	for _, line := range []string{
		"7f00-7f01 rw-s 0 00:01",                // too few fields
		"7f000000 rw-s 00000000 00:01 77",       // no range
		"zz000-7f0000001000 rw-s 0 00:01 77",    // start not hex
		"7f0000001000-7f0000000000 rw-s 0 0 7",  // end before start
		"7f0000000001-7f0000001000 rw-s 0 0 7",  // not page aligned
		"7f0000000000-7f0000001000 rw-sx 0 0 7", // permissions
		"7f0000000000-7f0000001000 rw-s xyz 0 7",
	} {
		if _, err := ParseMaps(strings.NewReader(line + "\n")); !errors.Is(err, ErrMalformedMaps) {
			t.Errorf("%q: got %v, want ErrMalformedMaps", line, err)
		}
	}
}

func TestMemfdRAM(t *testing.T) {
	maps, err := ParseMaps(strings.NewReader(qemuMaps))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		size uint64
		want []Region
		err  error
	}{
		{"memory-backend-memfd", 256 << 20, []Region{{0x7f0000000000, 0x7f0010000000, 0}}, nil},
		{"memory-backend-memfd", 0, []Region{{0x7f0000000000, 0x7f0010000000, 0}}, nil},
		{"memory-backend-memfd", 512 << 20, nil, ErrNoSharedRAM},
		{"other", 2 << 20, []Region{{0x7f0020000000, 0x7f0020200000, 0}}, nil},
		{"ram0", 0, nil, ErrNoSharedRAM},
	} {
		got, err := MemfdRAM(maps, tc.name, tc.size)
		if !errors.Is(err, tc.err) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s %d: got %+v, %v; want %+v, %v", tc.name, tc.size, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseMaps(f *testing.F) {
	f.Add(qemuMaps)
	f.Add("0-1000 rw-p 0 0 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		maps, err := ParseMaps(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.End <= m.Start || m.Start%pageSize != 0 || len(m.Perms) != 4 {
				t.Fatalf("accepted %+v", m)
			}
		}
		MemfdRAM(maps, "memory-backend-memfd", 0)
	})
}
