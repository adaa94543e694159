package statuspage

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const chromiumPath = "/usr/bin/chromium"

// chromium runs headless Chromium with args after the common ones, in its
// own profile and home under dir, and returns its standard output. The
// whole process group is killed at the end, so no renderer outlives it.
func chromium(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // a loaded 2-core host
	defer cancel()
	profile := filepath.Join(dir, "profile")
	common := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + profile, "--window-size=1200,800"}
	cmd := exec.CommandContext(ctx, chromiumPath, append(common, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_CACHE_HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // ESRCH when all are gone
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("chromium %s: no result within the timeout; stderr:\n%s", strings.Join(args, " "), stderr.String())
		}
		t.Fatalf("chromium %s: %v; stderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

// TestBrowser loads the page in headless Chromium from a server on
// loopback, with one healthy VM and one whose drill failed, and checks the
// DOM it rendered and a screenshot of it.
func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("headless browser test: %s is missing (make deps installs the chromium package): %v", chromiumPath, err)
	}
	clk := &fixedClock{t0}
	// The two VMs over 6 h, with a lag that saws as epochs commit: web-1
	// every 20 s but for a 20 min outage 3 h ago, db-1 every 4 min.
	src := SourceFunc(func(now time.Time) Page {
		p := twoVMs(t0)
		p.VMs[0].Cut = now.Truncate(20 * time.Second).Add(-15 * time.Second)
		if out := t0.Add(-3 * time.Hour); !now.Before(out) && now.Before(out.Add(20*time.Minute)) {
			p.VMs[0].Cut = out
		}
		p.VMs[1].Cut = now.Truncate(4 * time.Minute).Add(-20 * time.Second)
		return p
	})
	h := New(src, Options{Now: clk.now})
	for at := t0.Add(-6 * time.Hour); at.Before(t0); at = at.Add(10 * time.Second) {
		if at.Sub(t0) > -4*time.Hour || at.Sub(t0) < -5*time.Hour { // the daemon was down for an hour
			h.Sample(at)
		}
	}
	srv := httptest.NewServer(h) // 127.0.0.1
	defer srv.Close()
	url := srv.URL + "/"

	dom := string(chromium(t, t.TempDir(), "--dump-dom", url))
	for _, want := range []string{"web-1", "db-1", `<span class="fail">FAILED</span>`, "last failover drill FAILED at", `<span class="pass">passed</span>`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered DOM lacks %q:\n%s", want, dom)
		}
	}

	dir := t.TempDir()
	shot := filepath.Join(dir, "shot.png")
	chromium(t, dir, "--screenshot="+shot, url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 800 {
		t.Errorf("screenshot is %dx%d, want 1200x800", b.Dx(), b.Dy())
	}
	colours, red, blocks := census(img)
	t.Logf("screenshot: %d distinct colours, %d pixels of the failure red, %d of them in solid 5x5 blocks", colours, red, blocks)
	// Text, charts and badges anti-aliased give hundreds of colours; a
	// blank or error page a handful.
	if colours < 100 {
		t.Errorf("screenshot has %d distinct colours; the page did not render", colours)
	}
	// The banner's border and the row's mark are thin red lines; only
	// the FAILED badge, red behind its white letters, has solid blocks.
	if red < 500 || blocks < 20 {
		t.Errorf("screenshot has %d pixels of the failure red #c62828, %d in solid blocks; the failed drill does not show", red, blocks)
	}
	if path := os.Getenv("STATUSPAGE_SHOT"); path != "" {
		// For a person to look at: go test -run TestBrowser with
		// STATUSPAGE_SHOT=/some/file.png.
		if b, err := os.ReadFile(shot); err == nil {
			os.WriteFile(path, b, 0o644)
		}
	}
}

// census counts img's distinct colours, its pixels of the failure red
// (#c62828, within a small tolerance for colour management), and those
// of them at the corner of a solid 5x5 block of it.
func census(img image.Image) (colours, red, blocks int) {
	seen := map[uint32]bool{}
	b := img.Bounds()
	isRed := make([]bool, b.Dx()*b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r8, g8, b8 := int(r>>8), int(g>>8), int(bl>>8)
			seen[uint32(r8)<<16|uint32(g8)<<8|uint32(b8)] = true
			if near(r8, 0xc6) && near(g8, 0x28) && near(b8, 0x28) {
				red++
				isRed[(y-b.Min.Y)*b.Dx()+x-b.Min.X] = true
			}
		}
	}
	for y := 0; y+5 <= b.Dy(); y++ {
	next:
		for x := 0; x+5 <= b.Dx(); x++ {
			for dy := range 5 {
				for dx := range 5 {
					if !isRed[(y+dy)*b.Dx()+x+dx] {
						continue next
					}
				}
			}
			blocks++
		}
	}
	return len(seen), red, blocks
}

func near(a, b int) bool { return a-b <= 8 && b-a <= 8 }
