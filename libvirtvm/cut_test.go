package libvirtvm_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vmspec"
)

// TestCutsOfADomain cuts the test guest, run as a libvirt domain, three
// times through libvirt: each disk view holds a consistent record ring,
// the second and third cuts read what the bitmaps mark dirty, and after
// each cut libvirt's view of the domain is as before. Each snapshot
// carries the domain's definition, sanitized of this host's paths.
func TestCutsOfADomain(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	d.CheckCleanView(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, d.Name, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	found, err := m.Disks(ctx)
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	var ld []livecut.Disk
	for _, f := range found {
		ld = append(ld, livecut.Disk{Name: f.Target, Node: f.Node})
	}
	ls, err := livecut.New(livecut.Options{
		QMPSocket: libvirtvm.Address(hosttools.LibvirtURI, d.Name), Dial: libvirtvm.DialMonitor,
		WorkDir: filepath.Join(d.Dir, "work"), Now: time.Now, Disks: ld,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	src := libvirtvm.Config{Libvirt: hosttools.LibvirtURI, Domain: d.Name}.WithDefinition(ls)
	for n := 1; n <= 3; n++ {
		snap, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatalf("cut %d: %v", n, err)
		}
		st := ls.LastCut()
		t.Logf("cut %d: pause %v, capture %v, stream %d bytes", n, st.Pause, st.Capture, st.StreamBytes)
		tables := map[string]*blockhash.Table{}
		var unchanged int64
		defs := 0
		for _, tg := range snap.Targets {
			if tg.Kind == vmspec.KindBlob && tg.Name == vmspec.BlobDomainXML {
				defs++
				b := make([]byte, tg.Size)
				if _, err := tg.Reader.ReadAt(b, 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				x, err := vmspec.DecodeBlob(b)
				if err != nil {
					t.Fatalf("cut %d: definition: %v", n, err)
				}
				if !bytes.Contains(x, []byte("<name>"+d.Name+"</name>")) || bytes.Contains(x, []byte(d.Dir)) || bytes.Contains(x, []byte("seclabel")) {
					t.Errorf("cut %d: definition is not the domain's, sanitized:\n%s", n, x)
				}
				if n == 1 {
					t.Logf("definition (%d bytes):\n%s", len(x), x)
				}
			}
			if tg.Kind != vmspec.KindDisk {
				continue
			}
			b := make([]byte, tg.Size)
			if _, err := tg.Reader.ReadAt(b, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if tg.Name == "vda" {
				recs, err := guest.VerifyRecords(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatalf("cut %d: the disk view is not a consistent instant: %v", n, err)
				}
				t.Logf("cut %d: vda holds records %d..%d", n, recs.First, recs.Last)
				ext, err := tg.Extents(ctx, 0, tg.Size)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ext {
					if e.Unchanged {
						unchanged += e.Len
					}
				}
			}
			tb := blockhash.NewZero(tg.Size, tg.BlockSize)
			for i := range tb.Hashes {
				tb.Hashes[i] = blockhash.Hash(b[i*tg.BlockSize : min((i+1)*tg.BlockSize, len(b))])
			}
			tables[sender.TableKey(tg.Kind, tg.Name)] = tb
		}
		if defs != 1 {
			t.Errorf("cut %d: %d definitions in the snapshot, want 1", n, defs)
		}
		if n > 1 && unchanged == 0 {
			t.Errorf("cut %d: no change tracking through libvirt", n)
		}
		snap.Planned(tables)
		if err := snap.Close(); err != nil {
			t.Fatalf("cut %d: close: %v", n, err)
		}
		d.CheckCleanView(t, 1)
		if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", d.Name)); st != "running" {
			t.Errorf("cut %d: domain %s", n, st)
		}
	}
	before := len(d.Ticks())
	if _, err := d.WaitTicks(before+5, 30*time.Second); err != nil {
		t.Fatalf("the guest does not run on after the cuts: %v", err)
	}
}
