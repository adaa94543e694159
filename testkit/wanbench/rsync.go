package wanbench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/wanemu"
)

// RsyncTool is the rsync row's name in the table.
const RsyncTool = "rsync --inplace, delta, zstd"

// rsyncModule is the daemon's module that receives the images.
const rsyncModule = "wanbench"

// RunRsync measures the rsync baseline over link (applied to both
// directions of em) for the guest g: an rsync daemon at side B receives the
// running guest's disk images from an rsync client at side A, first into
// an empty directory (the initial sync), then again epoch after the first
// copy ended (one steady epoch, moved by rsync's delta algorithm). The
// guest itself runs in the test process's namespace: it needs no network.
func RunRsync(ctx context.Context, t testing.TB, em *wanemu.Emulator, link Link, g GuestSpec, epoch time.Duration) (Result, error) {
	t.Helper()
	if epoch <= 0 {
		return Result{}, fmt.Errorf("wanbench: epoch %v must be positive", epoch)
	}
	hosttools.Need(t, "rsync", "qemu-system-x86_64")
	em.SetBoth(link.Settings)
	res, err := runRsync(ctx, t, em, link, g, epoch)
	if err != nil {
		return Result{}, fmt.Errorf("wanbench: rsync over %s: %w", link.Name, err)
	}
	return res, nil
}

func runRsync(ctx context.Context, t testing.TB, em *wanemu.Emulator, link Link, g GuestSpec, epoch time.Duration) (Result, error) {
	dir := hosttools.ShortTempDir(t, "wbr")
	disks, err := g.prepare(filepath.Join(dir, "src"))
	if err != nil {
		return Result{}, fmt.Errorf("prepare disks: %w", err)
	}
	src, err := startVM(ctx, t, vmConfig{name: "source", memMiB: g.mem(), args: g.Args, disks: disks})
	if src != nil {
		defer src.stop()
	}
	if err != nil {
		return Result{}, err
	}
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	err = src.waitWorkload(bootCtx, g.Args["cache"] != "", workloadTicks)
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("boot: %w", err)
	}

	stopDaemon, url, err := startRsyncDaemon(ctx, em, dir)
	if err != nil {
		return Result{}, err
	}
	defer stopDaemon()

	compress, note := rsyncCompression()
	args := append([]string{"--times", "--inplace", "--no-whole-file", "--stats"}, compress...)
	for _, d := range disks {
		args = append(args, d.Path)
	}
	args = append(args, url)

	first, err := rsyncPush(ctx, em, args)
	if err != nil {
		return Result{}, fmt.Errorf("initial copy: %w", err)
	}
	t.Logf("rsync initial copy: %s", first)
	if err := sleep(ctx, epoch); err != nil {
		return Result{}, fmt.Errorf("epoch: %w", err)
	}
	second, err := rsyncPush(ctx, em, args)
	if err != nil {
		return Result{}, fmt.Errorf("epoch copy: %w", err)
	}
	t.Logf("rsync epoch copy: %s", second)
	res := Result{
		Tool:                RsyncTool,
		Kind:                KindRsync,
		Link:                link.Name,
		InitialSync:         first.took,
		InitialBytes:        first.wire,
		SteadyBytesPerEpoch: second.wire,
		EpochInterval:       epoch,
		RPO:                 epoch + second.took,
		Note:                "disks only, no memory; not crash-consistent" + note,
	}
	res.Goodput = goodput(res.InitialBytes, res.InitialSync, link)
	return res, nil
}

// rsyncCompression is zstd if this rsync has it, else its default.
func rsyncCompression() (args []string, note string) {
	out, _ := exec.Command("rsync", "--version").Output()
	if bytes.Contains(out, []byte("zstd")) {
		return []string{"--compress", "--compress-choice=zstd"}, ""
	}
	return []string{"--compress"}, " (zlib: this rsync has no zstd)"
}

// startRsyncDaemon runs an rsync daemon at side B that writes into
// dir/dst, and returns a stop function and the module's URL.
func startRsyncDaemon(ctx context.Context, em *wanemu.Emulator, dir string) (func(), string, error) {
	dst := filepath.Join(dir, "dst")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, "", err
	}
	conf := filepath.Join(dir, "rsyncd.conf")
	text := fmt.Sprintf("pid file = %s\nlock file = %s\nuse chroot = no\n\n[%s]\npath = %s\nread only = no\nuid = 0\ngid = 0\n",
		filepath.Join(dir, "rsyncd.pid"), filepath.Join(dir, "rsyncd.lock"), rsyncModule, dst)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, "", err
	}
	port, err := freePort(em, wanemu.SideB)
	if err != nil {
		return nil, "", err
	}
	host := em.AddrB().String()
	cmd := exec.Command("rsync", "--daemon", "--no-detach", "--config="+conf,
		"--address="+host, "--port="+strconv.Itoa(port), "--log-file="+filepath.Join(dir, "rsyncd.log"))
	if err := em.Wrap(wanemu.SideB, cmd); err != nil {
		return nil, "", err
	}
	var stderr hosttools.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start the rsync daemon: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	// Wait until it listens, asking from side B itself so that nothing
	// crosses the link.
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := em.Dial(ctx, wanemu.SideB, "tcp4", addr); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return nil, "", fmt.Errorf("the rsync daemon exited: %s", stderr.String())
		case <-ctx.Done():
			stop()
			return nil, "", fmt.Errorf("wait for the rsync daemon: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, "", fmt.Errorf("the rsync daemon does not listen at %s after 10 s: %s", addr, stderr.String())
		}
	}
	return stop, "rsync://" + addr + "/" + rsyncModule + "/", nil
}

// rsyncRun is one transfer.
type rsyncRun struct {
	took  time.Duration
	wire  int64 // bytes on the link, both directions
	stats string
}

func (r rsyncRun) String() string {
	return fmt.Sprintf("%v, %.2f MB on the wire; %s", r.took.Round(time.Millisecond), float64(r.wire)/1e6, r.stats)
}

// rsyncPush runs the rsync client at side A with args.
func rsyncPush(ctx context.Context, em *wanemu.Emulator, args []string) (rsyncRun, error) {
	cmd := exec.CommandContext(ctx, "rsync", args...)
	if err := em.Wrap(wanemu.SideA, cmd); err != nil {
		return rsyncRun{}, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	before := em.Stats()
	began := time.Now()
	out, err := cmd.CombinedOutput()
	r := rsyncRun{took: time.Since(began), wire: wireBytes(em.Stats()) - wireBytes(before), stats: rsyncSummary(out)}
	if err != nil {
		return r, fmt.Errorf("rsync %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return r, nil
}

// rsyncSummary picks the telling lines of rsync --stats.
func rsyncSummary(out []byte) string {
	var keep []string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		for _, p := range []string{"Number of regular files transferred", "Literal data", "Matched data", "Total bytes sent", "Total bytes received"} {
			if strings.HasPrefix(line, p) {
				keep = append(keep, line)
			}
		}
	}
	return strings.Join(keep, ", ")
}
