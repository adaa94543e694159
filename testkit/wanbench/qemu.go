package wanbench

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/testkit/guest"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/wanemu"
)

// QEMUMode is how QEMU moves the guest's RAM; disks always move by
// blockdev-mirror to NBD exports of the destination.
type QEMUMode int

const (
	// PrecopyXBZRLE is precopy migration with the xbzrle capability and a
	// cache of a quarter of the guest RAM.
	PrecopyXBZRLE QEMUMode = iota
	// MultifdZstd is migration over two multifd channels with zstd
	// compression.
	MultifdZstd
)

// QEMUModes are the QEMU baselines of the benchmark.
func QEMUModes() []QEMUMode { return []QEMUMode{PrecopyXBZRLE, MultifdZstd} }

// String is the mode's name in the table's Tool column.
func (m QEMUMode) String() string {
	switch m {
	case PrecopyXBZRLE:
		return "QEMU precopy + xbzrle, drive-mirror"
	case MultifdZstd:
		return "QEMU multifd + zstd, drive-mirror"
	}
	return "QEMUMode(" + strconv.Itoa(int(m)) + ")"
}

// Migration settings common to both modes.
const (
	// maxBandwidth is far above any emulated link, so that the link, not
	// QEMU's rate limit (128 MiB/s by default), is the bottleneck.
	maxBandwidth = 100 << 30
	// multifdChannels is the number of multifd connections.
	multifdChannels = 2
	// workloadTicks are the TICK lines awaited after the cache pass, so
	// that the record writer and the memory dirtier run.
	workloadTicks = 10
	// bootTimeout bounds boot plus the workload's first cache pass.
	bootTimeout = 5 * time.Minute
)

// RunQEMU measures one QEMU baseline over link (applied to both directions
// of em) for the guest g. It boots the guest at side A, mirrors its disks
// to a paused destination QEMU at side B and migrates its RAM there (the
// initial sync), then resumes the guest, keeps the mirrors running and,
// epoch after the guest resumed, migrates its RAM again to a second paused
// destination that uses the first one's disks (one steady epoch; see the
// package documentation for the model). Everything it started is gone when
// it returns. The error names the step that failed.
func RunQEMU(ctx context.Context, t testing.TB, em *wanemu.Emulator, link Link, g GuestSpec, mode QEMUMode, epoch time.Duration) (Result, error) {
	t.Helper()
	if mode != PrecopyXBZRLE && mode != MultifdZstd {
		return Result{}, fmt.Errorf("wanbench: unknown QEMU mode %d", mode)
	}
	if epoch <= 0 {
		return Result{}, fmt.Errorf("wanbench: epoch %v must be positive", epoch)
	}
	hosttools.Need(t, "qemu-system-x86_64", "qemu-img")
	em.SetBoth(link.Settings)
	r := &qemuRun{t: t, em: em, mode: mode, g: g}
	defer r.teardown()
	res, err := r.run(ctx, link, epoch)
	if err != nil {
		return Result{}, fmt.Errorf("wanbench: %s over %s: %w", mode, link.Name, err)
	}
	return res, nil
}

// qemuRun is the state of one RunQEMU, for teardown.
type qemuRun struct {
	t    testing.TB
	em   *wanemu.Emulator
	mode QEMUMode
	g    GuestSpec
	vms  []*vm    // in start order
	src  *vm      // the protected guest
	jobs []string // mirror jobs on src
}

func (r *qemuRun) run(ctx context.Context, link Link, epoch time.Duration) (Result, error) {
	t, g := r.t, r.g
	dir := hosttools.ShortTempDir(t, "wbq")
	srcDisks, err := g.prepare(filepath.Join(dir, "src"))
	if err != nil {
		return Result{}, fmt.Errorf("prepare source disks: %w", err)
	}
	// Destination 1 gets empty images of the same sizes for the mirrors.
	var dstDisks []guest.Disk
	for _, d := range g.Disks {
		p := filepath.Join(dir, "dst", d.Name)
		if err := makeImage(p, d.format(), d.Bytes(), FillZero, 0); err != nil {
			return Result{}, fmt.Errorf("prepare destination disk %s: %w", d.Name, err)
		}
		dstDisks = append(dstDisks, guest.Disk{Path: p, Format: d.format()})
	}
	paused := []string{"-S", "-incoming", "defer"}

	r.src, err = r.start(ctx, vmConfig{name: "source", em: r.em, side: wanemu.SideA,
		memMiB: g.mem(), args: g.Args, disks: srcDisks})
	if err != nil {
		return Result{}, err
	}
	src := r.src
	d1, err := r.start(ctx, vmConfig{name: "destination 1", em: r.em, side: wanemu.SideB,
		memMiB: g.mem(), args: g.Args, disks: dstDisks, extra: paused})
	if err != nil {
		return Result{}, err
	}
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	err = src.waitWorkload(bootCtx, g.Args["cache"] != "", workloadTicks)
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("boot: %w", err)
	}

	// Destination 1 exports its (inactive, incoming) disks over NBD.
	nbdPort, err := freePort(r.em, wanemu.SideB)
	if err != nil {
		return Result{}, err
	}
	hostB := r.em.AddrB().String()
	if err := d1.exec(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{
		"type": "inet", "data": map[string]any{"host": hostB, "port": strconv.Itoa(nbdPort)}}}, nil); err != nil {
		return Result{}, fmt.Errorf("start NBD server: %w", err)
	}
	for i := range g.Disks {
		node := "disk" + strconv.Itoa(i)
		if err := d1.exec(ctx, "block-export-add", map[string]any{"type": "nbd", "id": "exp" + strconv.Itoa(i),
			"node-name": node, "name": node, "writable": true}, nil); err != nil {
			return Result{}, fmt.Errorf("export %s over NBD: %w", node, err)
		}
	}
	uri1, err := r.incoming(ctx, d1)
	if err != nil {
		return Result{}, err
	}
	if err := r.setupSource(ctx); err != nil {
		return Result{}, err
	}

	// Initial sync: disks, then RAM.
	before := r.em.Stats()
	began := time.Now()
	if err := r.mirror(ctx, hostB, nbdPort); err != nil {
		return Result{}, err
	}
	mirrored := time.Since(began)
	afterMirror := r.em.Stats()
	m1, err := r.migrate(ctx, d1, uri1)
	if err != nil {
		return Result{}, fmt.Errorf("initial migration: %w", err)
	}
	res := Result{
		Tool:          r.mode.String(),
		Kind:          KindQEMU,
		Link:          link.Name,
		InitialSync:   m1.dstDone.Sub(began),
		InitialBytes:  wireBytes(m1.stats) - wireBytes(before),
		EpochInterval: epoch,
		Note:          "RAM + disks; per epoch: mirror writes + a full RAM migration to a fresh paused destination",
	}
	res.Goodput = goodput(res.InitialBytes, res.InitialSync, link)
	t.Logf("%s: disks mirrored in %v (%.1f MB on the wire); %s", r.mode, mirrored.Round(time.Millisecond),
		float64(wireBytes(afterMirror)-wireBytes(before))/1e6, m1)

	// One steady epoch: the mirrors keep running into destination 1's
	// exports; destination 2 takes the next RAM checkpoint, on those disks.
	var extra []string
	for i := range g.Disks {
		n := strconv.Itoa(i)
		extra = append(extra,
			"-blockdev", fmt.Sprintf("driver=nbd,node-name=disk%s,server.type=inet,server.host=%s,server.port=%d,export=disk%s", n, hostB, nbdPort, n),
			"-device", "virtio-blk-pci,drive=disk"+n+",id=vblk"+n)
	}
	d2, err := r.start(ctx, vmConfig{name: "destination 2", em: r.em, side: wanemu.SideB,
		memMiB: g.mem(), args: g.Args, extra: append(extra, paused...)})
	if err != nil {
		return Result{}, err
	}
	uri2, err := r.incoming(ctx, d2)
	if err != nil {
		return Result{}, err
	}
	if err := sleep(ctx, time.Until(m1.resumed.Add(epoch))); err != nil {
		return Result{}, fmt.Errorf("epoch: %w", err)
	}
	m2, err := r.migrate(ctx, d2, uri2)
	if err != nil {
		return Result{}, fmt.Errorf("epoch migration: %w", err)
	}
	res.SteadyBytesPerEpoch = wireBytes(m2.stats) - wireBytes(m1.stats)
	res.RPO = epoch + m2.dstDone.Sub(m2.began)
	res.Pause = m2.pause()
	t.Logf("%s: epoch: %s; %.1f MB on the wire since the initial sync", r.mode, m2, float64(res.SteadyBytesPerEpoch)/1e6)
	return res, nil
}

// start starts a VM and remembers it for teardown.
func (r *qemuRun) start(ctx context.Context, c vmConfig) (*vm, error) {
	v, err := startVM(ctx, r.t, c)
	if v != nil {
		r.vms = append(r.vms, v)
	}
	return v, err
}

// teardown cancels the mirror jobs and stops every QEMU, source first.
func (r *qemuRun) teardown() {
	if r.src != nil && r.src.q != nil {
		for _, job := range r.jobs {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r.src.exec(ctx, "block-job-cancel", map[string]any{"device": job, "force": true}, nil)
			cancel()
		}
	}
	for _, v := range r.vms {
		v.stop()
	}
}

// setupSource sets the mode's migration capabilities and parameters on the
// source. pause-before-switchover stops the migration with the guest
// paused, so that the mirrors can finish before the cut (see migrate).
func (r *qemuRun) setupSource(ctx context.Context) error {
	caps := []string{"events", "pause-before-switchover"}
	params := map[string]any{"max-bandwidth": int64(maxBandwidth)}
	switch r.mode {
	case PrecopyXBZRLE:
		caps = append(caps, "xbzrle")
		params["xbzrle-cache-size"] = xbzrleCache(r.g.mem())
	case MultifdZstd:
		caps = append(caps, "multifd")
		params["multifd-channels"] = multifdChannels
		params["multifd-compression"] = "zstd"
	}
	if err := r.src.exec(ctx, "migrate-set-capabilities", capabilities(caps...), nil); err != nil {
		return fmt.Errorf("migration capabilities: %w", err)
	}
	if err := r.src.exec(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("migration parameters: %w", err)
	}
	return nil
}

// xbzrleCache is a quarter of the RAM, rounded down to a power of two.
func xbzrleCache(memMiB int) int64 {
	q := max(int64(memMiB)<<20/4, 1<<20)
	return 1 << (bits.Len64(uint64(q)) - 1)
}

func capabilities(names ...string) map[string]any {
	var c []map[string]any
	for _, n := range names {
		c = append(c, map[string]any{"capability": n, "state": true})
	}
	return map[string]any{"capabilities": c}
}

// incoming makes a paused destination listen for the migration at side B
// and returns the URI for the source.
func (r *qemuRun) incoming(ctx context.Context, d *vm) (string, error) {
	caps := []string{"events"}
	if r.mode == MultifdZstd {
		caps = append(caps, "multifd")
	}
	if err := d.exec(ctx, "migrate-set-capabilities", capabilities(caps...), nil); err != nil {
		return "", fmt.Errorf("migration capabilities: %w", err)
	}
	if r.mode == MultifdZstd {
		if err := d.exec(ctx, "migrate-set-parameters", map[string]any{
			"multifd-channels": multifdChannels, "multifd-compression": "zstd"}, nil); err != nil {
			return "", fmt.Errorf("migration parameters: %w", err)
		}
	}
	port, err := freePort(r.em, wanemu.SideB)
	if err != nil {
		return "", err
	}
	uri := "tcp:" + net.JoinHostPort(r.em.AddrB().String(), strconv.Itoa(port))
	if err := d.exec(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return "", fmt.Errorf("listen for the migration: %w", err)
	}
	return uri, nil
}

// mirror connects one NBD client node per disk to destination 1's exports
// and starts a full blockdev-mirror into each; it returns when all of them
// are ready (in sync, mirroring new writes).
func (r *qemuRun) mirror(ctx context.Context, host string, port int) error {
	sub := r.src.q.Subscribe("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
	defer sub.Close()
	pending := map[string]bool{}
	for i := range r.g.Disks {
		n := strconv.Itoa(i)
		if err := r.src.exec(ctx, "blockdev-add", map[string]any{"driver": "nbd", "node-name": "tgt" + n,
			"server": map[string]any{"type": "inet", "host": host, "port": strconv.Itoa(port)},
			"export": "disk" + n}, nil); err != nil {
			return fmt.Errorf("connect to the NBD export of disk%s: %w", n, err)
		}
		job := "mirror" + n
		if err := r.src.exec(ctx, "blockdev-mirror", map[string]any{"job-id": job, "device": "disk" + n,
			"target": "tgt" + n, "sync": "full"}, nil); err != nil {
			return fmt.Errorf("start mirror of disk%s: %w", n, err)
		}
		r.jobs = append(r.jobs, job)
		pending[job] = true
	}
	for len(pending) > 0 {
		e, err := sub.Next(ctx)
		if err != nil {
			return fmt.Errorf("wait for the mirrors to be ready: %w", err)
		}
		job := e.Str("device")
		if !pending[job] {
			continue
		}
		if e.Name != "BLOCK_JOB_READY" {
			return fmt.Errorf("mirror %s ended before it was ready: %s %v", job, e.Name, e.Data)
		}
		delete(pending, job)
	}
	return nil
}

// mirrorsSynced waits, with the guest paused, until no mirror has data
// left to copy.
func (r *qemuRun) mirrorsSynced(ctx context.Context) error {
	type job struct {
		Device string `json:"device"`
		Status string `json:"status"`
		Len    int64  `json:"len"`
		Offset int64  `json:"offset"`
	}
	for {
		var jobs []job
		if err := r.src.exec(ctx, "query-block-jobs", nil, &jobs); err != nil {
			return err
		}
		left := 0
		for _, j := range jobs {
			if j.Status != "ready" {
				return fmt.Errorf("mirror %s is %s, not ready", j.Device, j.Status)
			}
			if j.Offset < j.Len {
				left++
			}
		}
		if len(jobs) != len(r.jobs) {
			return fmt.Errorf("%d of %d mirror jobs left", len(jobs), len(r.jobs))
		}
		if left == 0 {
			return nil
		}
		if err := sleep(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
}

// migration is what one migrate measured.
type migration struct {
	began    time.Time     // migrate issued
	stopped  time.Time     // source STOP
	resumed  time.Time     // source RESUME after cont
	dstDone  time.Time     // destination MIGRATION completed
	stats    wanemu.Stats  // link counters at dstDone
	info     migrateInfo   // the source's query-migrate after completion
	duration time.Duration // began to dstDone
}

func (m migration) pause() time.Duration { return m.resumed.Sub(m.stopped) }

func (m migration) String() string {
	s := fmt.Sprintf("RAM migrated in %v, guest paused %v (QEMU downtime %d ms), %d dirty syncs, %.1f MB of RAM stream",
		m.duration.Round(time.Millisecond), m.pause().Round(time.Millisecond), m.info.Downtime,
		m.info.RAM.DirtySyncCount, float64(m.info.RAM.Transferred)/1e6)
	if x := m.info.XBZRLE; x != nil {
		s += fmt.Sprintf(", xbzrle %d pages in %.1f MB, %d cache misses", x.Pages, float64(x.Bytes)/1e6, x.CacheMiss)
	}
	if m.info.RAM.MultifdBytes > 0 {
		s += fmt.Sprintf(", %.1f MB over multifd", float64(m.info.RAM.MultifdBytes)/1e6)
	}
	return s
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	Downtime  int64  `json:"downtime"`
	RAM       struct {
		Transferred    int64 `json:"transferred"`
		MultifdBytes   int64 `json:"multifd-bytes"`
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram"`
	XBZRLE *struct {
		Bytes     int64 `json:"bytes"`
		Pages     int64 `json:"pages"`
		CacheMiss int64 `json:"cache-miss"`
	} `json:"xbzrle-cache"`
}

// migrate migrates the source's RAM to d, listening at uri. At
// pre-switchover (guest paused) it waits for the mirrors to copy what is
// left, so that d's disks and RAM are one consistent cut; then it lets the
// migration finish and resumes the source at once. It returns when d has
// loaded the state.
func (r *qemuRun) migrate(ctx context.Context, d *vm, uri string) (migration, error) {
	src := r.src
	ssub := src.q.Subscribe("MIGRATION", "STOP", "RESUME")
	defer ssub.Close()
	dsub := d.q.Subscribe("MIGRATION")
	defer dsub.Close()

	type arrival struct {
		at    time.Time
		stats wanemu.Stats
		err   error
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dch := make(chan arrival, 1)
	go func() {
		e, err := dsub.Wait(dctx, func(e qmp.Event) bool {
			s := e.Str("status")
			return s == "completed" || s == "failed" || s == "cancelled"
		})
		a := arrival{at: e.At, stats: r.em.Stats(), err: err}
		if err == nil && e.Str("status") != "completed" {
			a.err = fmt.Errorf("%s: incoming migration %s: %s", d.name, e.Str("status"), d.stderr.String())
		}
		dch <- a
	}()

	var m migration
	m.began = time.Now()
	if err := src.exec(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return m, err
	}
	for done := false; !done; {
		e, err := ssub.Next(ctx)
		if err != nil {
			return m, fmt.Errorf("wait for the migration: %w", err)
		}
		switch e.Name {
		case "STOP":
			m.stopped = e.At
		case "MIGRATION":
			switch e.Str("status") {
			case "pre-switchover":
				if err := r.mirrorsSynced(ctx); err != nil {
					return m, fmt.Errorf("finish the mirrors at the cut: %w", err)
				}
				if err := src.exec(ctx, "migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
					return m, err
				}
			case "completed":
				done = true
			case "failed", "cancelled":
				var info migrateInfo
				src.exec(ctx, "query-migrate", nil, &info)
				return m, fmt.Errorf("%s: migration %s: %q; stderr: %s", src.name, e.Str("status"), info.ErrorDesc, src.stderr.String())
			}
		}
	}
	// With multifd, QEMU announces "completed" before its channels are
	// torn down, and refuses cont until then ("Migration is not finalized
	// yet"): retry for a moment.
	for attempt := 0; ; attempt++ {
		err := src.exec(ctx, "cont", nil, nil)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "not finalized") || attempt >= 200 {
			return m, fmt.Errorf("resume the source: %w", err)
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return m, err
		}
	}
	e, err := ssub.Wait(ctx, func(e qmp.Event) bool { return e.Name == "RESUME" })
	if err != nil {
		return m, fmt.Errorf("wait for the source to resume: %w", err)
	}
	m.resumed = e.At
	// QEMU announces "completed" a moment before it computes the downtime
	// it reports; ask once the guest runs again, so as not to lengthen the
	// pause.
	for i := 0; i < 50; i++ {
		if err := src.exec(ctx, "query-migrate", nil, &m.info); err != nil {
			return m, err
		}
		if m.info.Downtime > 0 {
			break
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return m, err
		}
	}
	var a arrival
	select {
	case a = <-dch:
	case <-ctx.Done():
		return m, fmt.Errorf("wait for %s to load the migration: %w", d.name, ctx.Err())
	}
	if a.err != nil {
		return m, a.err
	}
	m.dstDone, m.stats = a.at, a.stats
	m.duration = m.dstDone.Sub(m.began)
	if m.stopped.IsZero() {
		return m, errors.New("no STOP event from the source")
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := d.exec(ctx, "query-status", nil, &st); err != nil {
		return m, err
	}
	if st.Status != "paused" {
		return m, fmt.Errorf("%s is %q after the migration, want paused", d.name, st.Status)
	}
	return m, nil
}

// freePort returns a TCP port nobody listens on at a side's address.
func freePort(em *wanemu.Emulator, side wanemu.Side) (int, error) {
	l, err := em.Listen(side, "tcp4", net.JoinHostPort(em.Addr(side).String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port at side %v: %w", side, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
