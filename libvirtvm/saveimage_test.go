package libvirtvm_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/libvirtvm"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
)

// TestRestoreFromWrittenSaveImage: a save image whose header and
// definition drsync wrote (the domain's sanitized definition made fit for
// the DR site: another name, disks on overlays, no network, the console in
// another directory) around QEMU's migration stream is resumed by libvirt
// as a running domain, and the guest continues.
func TestRestoreFromWrittenSaveImage(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	d := guest.ProtectedDomain(t, 128, map[string]string{"rate": "50"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := libvirtvm.Connect(ctx, hosttools.LibvirtURI)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	m, err := libvirtvm.Dial(ctx, hosttools.LibvirtURI, d.Name, qmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	def, err := m.Definition()
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	// libvirt's own save: its stream is what a takeover writes from a
	// replica; here the stream is the part under test's payload.
	saved := filepath.Join(d.Dir, "saved.img")
	hosttools.Virsh(t, "save", d.Name, saved)
	last := d.Ticks()[len(d.Ticks())-1]
	t.Logf("domain %s saved at tick %d", d.Name, last.Counter)
	f, err := os.Open(saved)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	sh, err := libvirtvm.ReadSaveHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sh.XML), "<name>"+d.Name+"</name>") || !sh.WasRunning {
		t.Fatalf("libvirt's save image header read as %+v", sh)
	}

	drDir := hosttools.ShortTempDir(t, "lvdr")
	disks := map[string]string{}
	for _, dev := range []string{"vda", "vdb"} {
		ov := filepath.Join(drDir, dev+".qcow2")
		src, format := filepath.Join(d.Dir, "vda.raw"), "raw"
		if dev == "vdb" {
			src, format = filepath.Join(d.Dir, "vdb.qcow2"), "qcow2"
		}
		hosttools.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", src, "-F", format, ov)
		disks[dev] = ov
	}
	name := d.Name + "-dr"
	x, err := libvirtvm.ForDR(def, libvirtvm.DRDefinition{Name: name, Disks: disks, Isolated: true, Dir: drDir})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(drDir, "restore.img")
	out, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := libvirtvm.WriteSaveHeader(out, x); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, br); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("virsh", "-c", hosttools.LibvirtURI, "destroy", name).Run() })
	start := time.Now()
	if err := l.DomainRestore(img); err != nil {
		t.Fatalf("restore %s: %v", img, err)
	}
	t.Logf("restored as %s in %v", name, time.Since(start).Round(time.Millisecond))
	if st := strings.TrimSpace(hosttools.Virsh(t, "domstate", name)); st != "running" {
		t.Fatalf("restored domain is %s", st)
	}
	dr := &guest.Domain{Name: name, Dir: drDir, Serial: filepath.Join(drDir, "serial0.log")}
	tk, err := dr.WaitTicks(5, time.Minute)
	if err != nil {
		t.Fatalf("the restored guest does not tick: %v", err)
	}
	// A guest that continues counts on from the save; a rebooted one
	// would count from 1. Its first line may repeat the last count seen
	// before the save: the guest's ticker, due while it was saved, can
	// fire before the goroutine that counts runs again.
	if tk[0].Counter < last.Counter || tk[len(tk)-1].Counter <= last.Counter {
		t.Fatalf("restored guest ticks from %d, saved at %d: it did not continue", tk[0].Counter, last.Counter)
	}
	t.Logf("the restored guest continues: ticks %d..%d", tk[0].Counter, tk[len(tk)-1].Counter)
}
