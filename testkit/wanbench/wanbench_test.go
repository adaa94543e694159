package wanbench

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/wanemu"
)

func TestWriteTable(t *testing.T) {
	slow, fast := Links()[0].Name, Links()[1].Name
	rows := []Result{
		{Tool: "replication engine", Link: slow, InitialSync: 12500 * time.Millisecond, InitialBytes: 150e6,
			SteadyBytesPerEpoch: 2_500_000, EpochInterval: 5 * time.Second, RPO: 5400 * time.Millisecond,
			Pause: 14 * time.Millisecond, Goodput: 0.96},
		{Tool: PrecopyXBZRLE.String(), Kind: KindQEMU, Link: slow, InitialSync: 40 * time.Second, InitialBytes: 600e6,
			SteadyBytesPerEpoch: 560e6, EpochInterval: 5 * time.Second, RPO: 45 * time.Second,
			Pause: 230 * time.Millisecond, Goodput: 0.9},
		{Tool: MultifdZstd.String(), Kind: KindQEMU, Link: slow, InitialBytes: 300e6, Note: "a | b"},
		{Tool: RsyncTool, Kind: KindRsync, Link: slow, InitialBytes: 450e6, Note: "disks only"},
		{Tool: RsyncTool, Kind: KindRsync, Link: fast, InitialBytes: 450e6},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2+len(rows) {
		t.Fatalf("%d lines, want %d", len(lines), 2+len(rows))
	}
	for i, l := range lines {
		if n := strings.Count(l, "|") - strings.Count(l, `\|`); n != 12 {
			t.Errorf("line %d has %d cell separators, want 12: %s", i, n, l)
		}
	}
	for i, want := range [][]string{
		{"replication engine", "12.5 s", "150.0 MB", "0.50×", "2.50 MB", "5.00 s", "5.40 s", "14 ms", "96%"},
		{"40.0 s", "600.0 MB", "2.00×", "560.0 MB", "230 ms", "90%"},
		{"300.0 MB", "1.00×", `a \| b`},
		{"450.0 MB", "1.50×", "disks only"},
		{"450.0 MB", "| – |"}, // no QEMU row on the fast link
	} {
		for _, w := range want {
			if !strings.Contains(lines[2+i], w) {
				t.Errorf("row %d lacks %q: %s", i, w, lines[2+i])
			}
		}
	}
}

func TestPrepare(t *testing.T) {
	g := NewGuest(128, 2, 3)
	if g.DiskBytes() != 5<<20 || g.Args["cache"] != "/dev/vdb" || g.Args["dirty_mib"] != "32" {
		t.Fatalf("spec %+v", g)
	}
	hash := func(dir string) [2][32]byte {
		disks := g.Prepare(t, dir)
		if len(disks) != 2 {
			t.Fatalf("%d disks", len(disks))
		}
		var h [2][32]byte
		for i, d := range disks {
			b, err := os.ReadFile(d.Path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != g.Disks[i].Bytes() {
				t.Fatalf("%s: %d bytes, want %d", d.Path, len(b), g.Disks[i].Bytes())
			}
			h[i] = sha256.Sum256(b)
			if i == 0 && !bytes.Equal(b, make([]byte, len(b))) {
				t.Errorf("record disk is not empty")
			}
			if i == 1 {
				var z bytes.Buffer
				w, _ := flate.NewWriter(&z, flate.BestCompression)
				w.Write(b)
				w.Close()
				if z.Len() < len(b)*99/100 {
					t.Errorf("cache disk compresses to %d of %d bytes", z.Len(), len(b))
				}
			}
		}
		return h
	}
	a, b := hash(filepath.Join(t.TempDir(), "a")), hash(filepath.Join(t.TempDir(), "b"))
	if a != b {
		t.Errorf("the same spec gave different images")
	}
	g.Disks[1].Seed = 2
	if c := hash(filepath.Join(t.TempDir(), "c")); c[1] == a[1] {
		t.Errorf("another seed gave the same cache disk")
	}
}

func TestLinks(t *testing.T) {
	l := Links()
	if len(l) != 2 || l[0].Settings.RateBitsPerSec != 100e6 || l[0].Settings.Delay != 20*time.Millisecond ||
		l[0].Settings.LossProb != 0.001 || l[1].Settings.RateBitsPerSec != 1e9 || l[1].Settings.Delay != 5*time.Millisecond {
		t.Fatalf("links %+v", l)
	}
	if got := goodput(100e6, 2*time.Second, l[0]); got < 3.99 || got > 4.01 {
		t.Errorf("goodput %v, want 4", got)
	}
	if xbzrleCache(128) != 32<<20 || xbzrleCache(500) != 64<<20 {
		t.Errorf("xbzrle cache %d %d", xbzrleCache(128), xbzrleCache(500))
	}
}

// TestSmoke runs every baseline end to end on a tiny guest over a fast
// link and checks that the rows make sense.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU guests; skipped with -short")
	}
	if err := wanemu.Check(); err != nil {
		t.Skipf("no WAN emulator here: %v", err)
	}
	hosttools.Need(t, "qemu-system-x86_64", "qemu-img", "rsync")
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	link := Link{Name: "1 Gbit/s, 2 ms RTT", Settings: wanemu.Settings{Delay: time.Millisecond, RateBitsPerSec: 1e9}}
	em, err := wanemu.Start(ctx, wanemu.Options{AtoB: link.Settings, BtoA: link.Settings, MaxLifetime: 5 * time.Minute})
	if errors.Is(err, wanemu.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer em.Stop()

	g := NewGuest(128, 64, 16)
	const epoch = 3 * time.Second
	cacheBytes := g.Disks[1].Bytes()
	var rows []Result
	for _, mode := range QEMUModes() {
		began := time.Now()
		r, err := RunQEMU(ctx, t, em, link, g, mode, epoch)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v (run took %v)", mode, r, time.Since(began).Round(time.Millisecond))
		if r.InitialBytes <= cacheBytes || r.SteadyBytesPerEpoch <= 0 || r.InitialSync <= 0 ||
			r.RPO <= epoch || r.Pause <= 0 || r.Pause > 10*time.Second || r.Goodput <= 0 || r.Kind != KindQEMU {
			t.Errorf("%s: implausible row %+v", mode, r)
		}
		rows = append(rows, r)
	}
	began := time.Now()
	r, err := RunRsync(ctx, t, em, link, g, epoch)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rsync: %+v (run took %v)", r, time.Since(began).Round(time.Millisecond))
	if r.InitialBytes <= cacheBytes*9/10 || r.SteadyBytesPerEpoch <= 0 || r.SteadyBytesPerEpoch > r.InitialBytes/4 ||
		r.RPO <= epoch || r.Pause != 0 {
		t.Errorf("rsync: implausible row %+v", r)
	}
	rows = append(rows, r)
	var b bytes.Buffer
	if err := WriteTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())
}
