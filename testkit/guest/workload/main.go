//go:build linux

// Command workload is the program the test guest runs as PID 1 (the
// initramfs /init execs it). testdata/guest/build.sh builds it statically
// and packs it into the initramfs; it is not meant to run on the host.
//
// It does these at once, so that a replicated copy of the guest can be
// checked for both memory and disk consistency:
//
//   - a counter in RAM goes up every count_ms (10 ms) and a line
//     "TICK <counter> <last record seq>" goes to the console every tick_ms
//     (50 ms);
//   - numbered records (package record) go to the first disk with
//     O_DIRECT|O_DSYNC, rate per second (20), one at a time, each written
//     only after the previous one completed;
//   - a dirty_mib (32 MiB) buffer gets dirty_rate_kib (2048 KiB) of fresh
//     random pages per second, so that every memory epoch has changes;
//     "FILLED <bytes> <ms>" says when the buffer first holds random data
//     throughout (a large one takes a while under TCG);
//   - with write_mib=N it also stores into every page of an N MiB buffer,
//     round after round, as fast as it can, and prints "WROTE <pages>
//     <ms>" every second: the pages stored into in that many milliseconds,
//     a write rate that falls when stores to memory cost more (dirty
//     logging);
//   - with read=1 it also reads the ring with buffered reads in a loop, so
//     the guest page cache holds disk data;
//   - with cache=<device> it reads that whole device with buffered reads
//     once, then again every 10 s, so the page cache holds its content
//     (the FDM case: memory pages that equal disk blocks). "CACHED <pass>
//     <bytes>" follows each pass;
//   - with msg=send or msg=recv (see msg.go) the records are messages to or
//     from a peer guest instead: the sender writes record n before it sends
//     message n over UDP, the receiver writes record n when message n
//     arrives. TICK's seq is then the last message recorded.
//
// Parameters come from drsync.KEY=VALUE words on the kernel command line
// (and, for experiments, from the same words as arguments):
// drsync.rate, drsync.dirty_mib, drsync.dirty_rate_kib, drsync.write_mib, drsync.read,
// drsync.tick_ms, drsync.count_ms, drsync.disk (/dev/vda), drsync.cache,
// and for messaging drsync.msg, drsync.ip and drsync.peer.
//
// Console lines, in order: "PARAMS ...", then "DISK <path> size=<bytes>
// slots=<n>" or "NODISK <error>", then "START" on an empty ring or
// "RESUME <seq>" when the ring already holds records (seq is the highest
// valid one; the next record written is seq+1), then TICK lines. Write
// errors print "WERR <seq> <error>" and the same seq is retried on the next
// beat. "FATAL <error>" precedes an exit, which panics the kernel and, with
// -no-reboot, ends QEMU.
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/drsync/drsync/testkit/guest/record"
)

type params struct {
	rate         float64 // records per second; 0 writes none
	dirtyMiB     int
	dirtyRateKiB int
	writeMiB     int
	read         bool
	tickMs       int
	countMs      int
	disk         string
	cache        string // a device to keep in the page cache
	msg          string // "", "send" or "recv"
	ip           string // this guest's eth0 address with prefix, for msg
	peer         string // the receiving guest's address, for msg=send
}

var (
	counter atomic.Uint64
	lastSeq atomic.Uint64
	outMu   sync.Mutex
)

// say writes one console line in a single write.
func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func fatal(format string, args ...any) {
	say("FATAL "+format, args...)
	os.Exit(1)
}

func main() {
	p := params{rate: 20, dirtyMiB: 32, dirtyRateKiB: 2048, tickMs: 50, countMs: 10, disk: "/dev/vda"}
	words := os.Args[1:]
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		words = append(strings.Fields(string(b)), words...)
	}
	for _, w := range words {
		if err := p.set(w); err != nil {
			say("WARN %v", err)
		}
	}
	if p.msg == "" {
		say("PARAMS rate=%g dirty_mib=%d dirty_rate_kib=%d read=%t tick_ms=%d count_ms=%d disk=%s cache=%s",
			p.rate, p.dirtyMiB, p.dirtyRateKiB, p.read, p.tickMs, p.countMs, p.disk, p.cache)
	} else {
		say("PARAMS rate=%g dirty_mib=%d dirty_rate_kib=%d read=%t tick_ms=%d count_ms=%d disk=%s cache=%s msg=%s ip=%s peer=%s",
			p.rate, p.dirtyMiB, p.dirtyRateKiB, p.read, p.tickMs, p.countMs, p.disk, p.cache, p.msg, p.ip, p.peer)
	}

	disk, size, slots := openDisk(p.disk)
	if disk != nil {
		seq, valid, bad := resumePoint(disk, size)
		if valid == 0 {
			say("START")
		} else {
			if bad > 0 {
				say("SCAN valid=%d bad=%d", valid, bad)
			}
			say("RESUME %d", seq)
		}
		lastSeq.Store(seq)
	} else {
		say("START")
	}

	go count(time.Duration(p.countMs) * time.Millisecond)
	switch {
	case p.msg != "":
		if disk == nil {
			fatal("msg=%s needs a disk", p.msg)
		}
		if err := startMessaging(p, disk, slots); err != nil {
			fatal("msg: %v", err)
		}
	case disk != nil && p.rate > 0:
		go writeRecords(disk, slots, time.Duration(float64(time.Second)/p.rate))
	}
	if p.dirtyMiB > 0 && p.dirtyRateKiB > 0 {
		go dirty(p.dirtyMiB<<20, p.dirtyRateKiB/4)
	}
	if p.writeMiB > 0 {
		go writeLoop(p.writeMiB << 20)
	}
	if disk != nil && p.read {
		go readLoop(p.disk, record.Offset(slots))
	}
	if p.cache != "" {
		go cacheLoop(p.cache)
	}
	t := time.NewTicker(time.Duration(p.tickMs) * time.Millisecond)
	for range t.C {
		say("TICK %d %d", counter.Load(), lastSeq.Load())
	}
}

func (p *params) set(word string) error {
	key, val, ok := strings.Cut(word, "=")
	if !ok || !strings.HasPrefix(key, "drsync.") {
		return nil // someone else's parameter
	}
	key = strings.TrimPrefix(key, "drsync.")
	var err error
	atLeast := func(dst *int, lo int) {
		var n int
		if n, err = strconv.Atoi(val); err == nil && n < lo {
			err = fmt.Errorf("below %d", lo)
		}
		if err == nil {
			*dst = n
		}
	}
	switch key {
	case "rate":
		var f float64
		if f, err = strconv.ParseFloat(val, 64); err == nil && f < 0 {
			err = fmt.Errorf("negative")
		}
		if err == nil {
			p.rate = f
		}
	case "dirty_mib":
		atLeast(&p.dirtyMiB, 0)
	case "dirty_rate_kib":
		atLeast(&p.dirtyRateKiB, 0)
	case "write_mib":
		atLeast(&p.writeMiB, 0)
	case "tick_ms":
		atLeast(&p.tickMs, 1)
	case "count_ms":
		atLeast(&p.countMs, 1)
	case "read":
		p.read, err = strconv.ParseBool(val)
	case "disk":
		p.disk = val
	case "cache":
		p.cache = val
	case "msg":
		if val != "send" && val != "recv" {
			err = fmt.Errorf("want send or recv")
		} else {
			p.msg = val
		}
	case "ip":
		p.ip = val
	case "peer":
		p.peer = val
	default:
		return fmt.Errorf("unknown parameter %s", word)
	}
	if err != nil {
		return fmt.Errorf("parameter %s: %v", word, err)
	}
	return nil
}

// openDisk opens the record disk for direct, synchronous I/O, waiting a
// little for the device node. It returns a nil file, after saying why,
// when there is no usable disk.
func openDisk(path string) (*os.File, int64, int) {
	var f *os.File
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		f, err = os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT|syscall.O_DSYNC, 0)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		say("NODISK %v", err)
		return nil, 0, 0
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		say("NODISK %s: size: %v", path, err)
		f.Close()
		return nil, 0, 0
	}
	slots := record.Slots(size)
	if slots == 0 {
		say("NODISK %s: %d bytes is too small for a ring", path, size)
		f.Close()
		return nil, 0, 0
	}
	say("DISK %s size=%d slots=%d", path, size, slots)
	return f, size, slots
}

// resumePoint scans the ring and returns the highest valid seq (0 if none),
// how many slots hold a valid record and how many hold something else (a
// write torn by a crash, say). Records in the wrong slot count as bad.
func resumePoint(f *os.File, size int64) (highest uint64, valid, bad int) {
	buf := aligned(1 << 20)
	defer syscall.Munmap(buf)
	slots := record.Slots(size)
	err := record.Scan(f, size, buf, func(slot int, b []byte) error {
		r, err := record.Decode(b)
		switch {
		case err == record.ErrEmpty:
		case err != nil || record.SlotOf(r.Seq, slots) != slot:
			bad++
		default:
			valid++
			highest = max(highest, r.Seq)
		}
		return nil
	})
	if err != nil {
		fatal("scan %v", err)
	}
	return highest, valid, bad
}

// aligned is a page-aligned buffer, as O_DIRECT wants.
func aligned(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fatal("mmap: %v", err)
	}
	return b
}

func count(every time.Duration) {
	t := time.NewTicker(every)
	for range t.C {
		counter.Add(1)
	}
}

func writeRecords(f *os.File, slots int, every time.Duration) {
	buf := aligned(record.Size)
	seq := lastSeq.Load() + 1
	t := time.NewTicker(every)
	for range t.C {
		record.Encode(buf, seq, counter.Load())
		if _, err := f.WriteAt(buf, record.Offset(record.SlotOf(seq, slots))); err != nil {
			say("WERR %d %v", seq, err)
			continue
		}
		lastSeq.Store(seq)
		seq++
	}
}

// dirty keeps a buffer of size bytes full of random data and rewrites
// pagesPerSec random pages of it every second, in 100 slices.
func dirty(size, pagesPerSec int) {
	const page = 4096
	mem := make([]byte, size)
	rng := newRNG(uint64(time.Now().UnixNano()))
	start := time.Now()
	rng.fill(mem)
	say("FILLED %d %d", size, time.Since(start).Milliseconds())
	pages := uint64(size / page)
	if pages == 0 {
		return
	}
	const slices = 100
	t := time.NewTicker(time.Second / slices)
	owed := 0
	for range t.C {
		owed += pagesPerSec
		for ; owed >= slices; owed -= slices {
			i := rng.next() % pages
			rng.fill(mem[i*page : (i+1)*page])
		}
	}
}

// writeLoop stores one word into each page of a buffer of size bytes,
// round after round, and prints every second how many pages it stored
// into: a write rate bound by the cost of a store to a page (a fresh
// write-protection fault each round under dirty logging).
func writeLoop(size int) {
	const page = 4096
	mem := make([]byte, size)
	var n uint64
	start := time.Now()
	for v := byte(1); ; v++ {
		for off := 0; off < size; off += page {
			mem[off] = v
			n++
			if n%1024 == 0 {
				if d := time.Since(start); d >= time.Second {
					say("WROTE %d %d", n, d.Milliseconds())
					n, start = 0, time.Now()
				}
			}
		}
	}
}

// readLoop reads the disk up to end with ordinary buffered reads, again and
// again, printing "READ <pass>" after each pass.
func readLoop(path string, end int64) {
	f, err := os.Open(path)
	if err != nil {
		say("WARN read loop: %v", err)
		return
	}
	buf := make([]byte, 256<<10)
	for pass := 1; ; pass++ {
		for off := int64(0); off < end; off += int64(len(buf)) {
			n := min(int64(len(buf)), end-off)
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				say("WARN read loop: %v", err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		say("READ %d", pass)
		time.Sleep(time.Second)
	}
}

// cacheLoop reads a whole device with buffered reads, then again every
// 10 s, so that the page cache keeps holding it.
func cacheLoop(path string) {
	var f *os.File
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if f, err = os.Open(path); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		say("WARN cache: %v", err)
		return
	}
	buf := make([]byte, 1<<20)
	for pass := 1; ; pass++ {
		var total int64
		for {
			n, err := f.ReadAt(buf, total)
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				say("WARN cache: %v", err)
				return
			}
		}
		say("CACHED %d %d", pass, total)
		time.Sleep(10 * time.Second)
	}
}

// rng is an xorshift64* generator: fast, and random enough that pages do not
// compress or deduplicate.
type rng struct{ x uint64 }

func newRNG(seed uint64) *rng {
	if seed == 0 {
		seed = 1
	}
	return &rng{seed}
}

func (r *rng) next() uint64 {
	r.x ^= r.x >> 12
	r.x ^= r.x << 25
	r.x ^= r.x >> 27
	return r.x * 0x2545f4914f6cdd1d
}

func (r *rng) fill(b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, r.next())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(r.next())
	}
}
