package blockhash

import (
	"bytes"
	"errors"
	"testing"
)

func TestZeroTableMatchesZeroContent(t *testing.T) {
	for _, tc := range []struct {
		size int64
		bs   int
	}{{0, 4096}, {4096, 4096}, {10000, 4096}, {1 << 20, 65536}, {(1 << 20) + 512, 65536}} {
		tab := NewZero(tc.size, tc.bs)
		buf := make([]byte, tc.size)
		got := Of(buf, tc.bs)
		if !tab.Equal(got) || tab.Digest() != got.Digest() {
			t.Errorf("size %d bs %d: zero table differs from table of zero content", tc.size, tc.bs)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	content := bytes.Repeat([]byte("drsync!"), 30000)
	tab := Of(content, 4096)
	got, err := Read(bytes.NewReader(tab.Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(tab) {
		t.Fatal("round trip changed the table")
	}
	// In-place entry update produces the same file as a full marshal.
	file := tab.Marshal()
	tab.Hashes[3] = 42
	copy(file[HeaderLen+8*3:], tab.EntryBytes(3, 1))
	if !bytes.Equal(file, tab.Marshal()) {
		t.Fatal("entry update differs from marshal")
	}
}

func TestReadRejectsCorrupt(t *testing.T) {
	good := NewZero(1<<20, 65536).Marshal()
	cases := map[string][]byte{
		"empty":      nil,
		"short":      good[:10],
		"magic":      append([]byte("XXXXXXXX"), good[8:]...),
		"truncated":  good[:len(good)-3],
		"block size": func() []byte { b := bytes.Clone(good); b[11] = 3; return b }(),
		"count lies": func() []byte { b := bytes.Clone(good); b[27] = 99; return b }(),
		"huge count": func() []byte { b := bytes.Clone(good); b[20] = 0x7f; return b }(),
	}
	for name, b := range cases {
		if _, err := Read(bytes.NewReader(b)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}

func TestResize(t *testing.T) {
	tab := NewZero(3*4096+100, 4096)
	tab.Hashes[3] = Hash([]byte("short last block"))
	tab.Resize(8 * 4096)
	if len(tab.Hashes) != 8 {
		t.Fatalf("blocks = %d", len(tab.Hashes))
	}
	if tab.Hashes[3] == ZeroHash(4096) {
		t.Fatal("grown short block must not look like a zero block")
	}
	for i := 4; i < 8; i++ {
		if tab.Hashes[i] != ZeroHash(4096) {
			t.Fatalf("new block %d not zero", i)
		}
	}
}

func TestStateIDOrderIndependent(t *testing.T) {
	a := []TargetState{{Kind: 1, Name: "vda", Size: 10, BlockSize: 512, Digest: 1}, {Kind: 2, Name: "pc.ram", Size: 4096, BlockSize: 4096, Digest: 2}}
	b := []TargetState{a[1], a[0]}
	if StateID(3, a) != StateID(3, b) {
		t.Fatal("order matters")
	}
	if StateID(3, a) == StateID(4, a) {
		t.Fatal("epoch ignored")
	}
	a[0].Digest = 9
	if StateID(3, a) == StateID(3, b) {
		t.Fatal("digest ignored")
	}
}

func FuzzRead(f *testing.F) {
	f.Add(NewZero(1<<16, 4096).Marshal())
	f.Add([]byte("DRBHT1\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := Read(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := Read(bytes.NewReader(tab.Marshal()))
		if err != nil || !again.Equal(tab) {
			t.Fatalf("re-read failed: %v", err)
		}
	})
}
