package livecut_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/internal/datadriven"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/livecut/livecuttest"
	"github.com/drsync/drsync/qmp"
	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/testkit/hosttools"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/vfs/errorfs"
	"github.com/drsync/drsync/vmspec"
)

// Data-driven tests of the cut sequence against livecuttest.Fake: each
// file in testdata/cut is a script of commands, each followed by "----"
// and its expected output up to a blank line: the QMP commands livecut
// issued (with their arguments) and the events QEMU sent, in order, then
// what the step returned. Lines starting with # are comments. Run with
// -rewrite to regenerate the expected output (then read the diff).
//
//	vm [status=S] [migration=M] [downtime-limit=MS] [accel=tcg] [no-background="desc"] [unordered-events]
//	                                     a fake VM with disk0 (1 MiB) running
//	                                     (under TCG: its cuts take a stopped pass;
//	                                     no-background: QEMU refuses background
//	                                     snapshots with desc; unordered-events: its
//	                                     monitor does not promise events before
//	                                     later replies, as libvirt's)
//	source [final] [tracked] [spool-full]
//	                                     a livecut.Source for disk vda = node disk0;
//	                                     tracked: RAM tracking (pc.ram, Fake.TrackRAM);
//	                                     spool-full: the first write to a RAM spool
//	                                     file fails with ENOSPC
//	write page=N [page=M ...]            the guest writes pages of its RAM
//	leftover export=ID@NODE node=N job=ID bitmap=NODE/NAME[:frozen] file=NAME
//	                                     what a killed sender left behind
//	fault cmd=C [nth=N] [error="desc"] [exit=reason|killed] [hangup] [during] [migration-fails="desc"] [pause-first]
//	                                     (pause-first: the operator pauses the guest just before C)
//	      [disk-write-first]             (the guest writes its disks just before C: backup
//	                                      jobs copy, their targets' write thresholds fire)
//	cut [leaves-paused]                  Snapshot; leaves-paused: the guest may stay
//	                                     stopped until a later step resumes it
//	close [planned]                      the open snapshot's Close, after Planned if asked
//	                                     (with the RAM table a planner would make)
//	group prepare|converge|stop|resume|abort
//	                                     a step of a group cut (PrepareGroupCut, ...);
//	                                     between stop and resume the guest stays stopped
//	stats                                the last cut's RAM path, pass and written pages
//	restart                              the sender dies (its QMP connection ends); a new Source
//	qemu-restart                         QEMU exits and starts anew: same disk, no bitmaps
//	exit reason                          QEMU exits (SHUTDOWN reason, or killed)
//	source-close                         the Source's Close
//	state                                the fake's state and the work directory
//	params                               the migration parameters now and at the last migrate
//
// Every step also checks that the guest is not left stopped by a cut
// without a cont issued after its stop (unless the cut is final).

func TestCutScripts(t *testing.T) {
	hosttools.Need(t, "qemu-img", "qemu-nbd")
	datadriven.Walk(t, "testdata/cut/*.txt", func(t *testing.T, path string) {
		s := &cutScript{t: t, work: filepath.Join(hosttools.ShortTempDir(t, "cut"), "w")}
		t.Cleanup(s.cleanup)
		datadriven.RunFile(t, path, s.run)
	})
}

type cutScript struct {
	t     *testing.T
	work  string
	fake  *livecuttest.Fake
	src   *livecut.Source
	snap  *sender.Snapshot
	final bool
	// finalStop: a final cut stopped the guest, which stays stopped.
	finalStop bool
	// leftPaused: a cut the script says leaves the guest stopped until the
	// next sender (its QMP connection lost during a stopped pass).
	leftPaused bool
	old        []*livecut.Source // abandoned by a restart: never closed
	tracked    bool
	spoolFull  bool
	group      *livecut.GroupCut
	// held: a group cut holds the guest from its prepare until its resume
	// or abort.
	held bool
	// ramImage is the RAM of the last planned cut as its planner read it:
	// a tracked cut's target holds the pages written since, no more.
	ramImage []byte
}

func (s *cutScript) cleanup() {
	if s.snap != nil {
		s.snap.Close()
	}
	if s.group != nil {
		s.group.Abort()
	}
	if s.src != nil {
		s.src.Close()
	}
}

// fields splits a line into words; a double-quoted value may hold spaces.
func fields(line string) ([]string, error) {
	var out []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		i := 0
		for i < len(line) && line[i] != ' ' {
			if line[i] == '"' {
				q, err := strconv.QuotedPrefix(line[i:])
				if err != nil {
					return nil, err
				}
				i += len(q)
				continue
			}
			i++
		}
		w := line[:i]
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(v, `"`) {
			u, err := strconv.Unquote(v)
			if err != nil {
				return nil, err
			}
			w = k + "=" + u
		}
		out = append(out, w)
		line = line[i:]
	}
	return out, nil
}

func (s *cutScript) run(line string) string {
	t := s.t
	f, err := fields(line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	args := map[string]string{}
	for _, w := range f[1:] {
		k, v, _ := strings.Cut(w, "=")
		args[k] = v
	}
	var out []string
	add := func(l ...string) { out = append(out, l...) }
	switch f[0] {
	case "vm":
		s.newVM()
		if args["status"] != "" {
			s.fake.Status = args["status"]
		}
		s.fake.Migration = args["migration"]
		s.fake.TCG = args["accel"] == "tcg"
		s.fake.NoBackground = args["no-background"]
		_, s.fake.UnorderedEvents = args["unordered-events"]
		if v := args["downtime-limit"]; v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("downtime-limit=%q: %v", v, err)
			}
			s.fake.Params["downtime-limit"] = n
		}
		add("ok")
		return strings.Join(out, "\n")
	case "source":
		_, s.final = args["final"]
		_, s.tracked = args["tracked"]
		_, s.spoolFull = args["spool-full"]
		s.newSource()
		add("ok")
		return strings.Join(out, "\n")
	case "leftover":
		s.fake.Lock()
		for _, w := range f[1:] {
			k, v, _ := strings.Cut(w, "=")
			switch k {
			case "export": // ID@NODE
				id, node, _ := strings.Cut(v, "@")
				s.fake.Exports[id] = node
			case "job":
				s.fake.Jobs = append(s.fake.Jobs, v)
			case "node":
				s.fake.Nodes = append(s.fake.Nodes, &livecuttest.Node{Name: v, Size: 1 << 20})
			case "bitmap":
				nb, frozen := strings.CutSuffix(v, ":frozen")
				node, name, _ := strings.Cut(nb, "/")
				n := s.fake.Node(node)
				n.Bitmaps = append(n.Bitmaps, livecuttest.Bitmap{Name: name, Recording: !frozen})
			case "file":
				os.MkdirAll(s.work, 0o700)
				if err := os.WriteFile(filepath.Join(s.work, v), []byte("left"), 0o600); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("%s: unknown leftover %s", line, k)
			}
		}
		s.fake.Unlock()
		add("ok")
		return strings.Join(out, "\n")
	case "fault":
		fl := livecuttest.Fault{Cmd: args["cmd"], Error: args["error"], Exit: args["exit"], MigrationFails: args["migration-fails"]}
		_, fl.Hangup = args["hangup"]
		_, fl.During = args["during"]
		_, fl.PauseFirst = args["pause-first"]
		_, fl.DiskWriteFirst = args["disk-write-first"]
		if args["nth"] != "" {
			fl.Nth, _ = strconv.Atoi(args["nth"])
		}
		s.fake.Lock()
		s.fake.Faults = append(s.fake.Faults, fl)
		s.fake.Unlock()
		add("ok")
		return strings.Join(out, "\n")
	case "cut":
		_, s.leftPaused = args["leaves-paused"]
		snap, err := s.src.Snapshot(context.Background())
		add(s.fake.Trace()...)
		if err != nil {
			add(s.errLines(err)...)
		} else {
			s.snap = snap
			add(s.targets(snap)...)
		}
	case "write":
		var pages []int
		for _, w := range f[1:] {
			k, v, _ := strings.Cut(w, "=")
			p, err := strconv.Atoi(v)
			if k != "page" || err != nil {
				t.Fatalf("%s: want page=N", line)
			}
			pages = append(pages, p)
		}
		s.fake.WriteRAM(pages...)
		return "ok"
	case "group":
		ctx := context.Background()
		var err error
		var shown []string
		switch f[1] {
		case "prepare":
			// A full cut's migration may complete, and stop the guest, by
			// itself: the guest waits for the resume or abort.
			s.group, err = s.src.PrepareGroupCut(ctx)
			s.held = err == nil
			if err == nil {
				shown = append(shown, "path: "+s.group.RAMPath())
			}
		case "converge":
			err = s.group.WaitConverged(ctx)
		case "stop":
			err = s.group.Stop(ctx)
		case "resume":
			var snap *sender.Snapshot
			snap, err = s.group.Resume(ctx, &vmspec.GroupCut{Group: "g", Cut: 7, Members: []string{"vm"}})
			s.group, s.held = nil, false
			if err == nil {
				s.snap = snap
				shown = s.targets(snap)
			}
		case "abort":
			err = s.group.Abort()
			s.group, s.held = nil, false
		default:
			t.Fatalf("unknown group step %q", line)
		}
		add(s.fake.Trace()...)
		add(shown...)
		if err != nil || shown == nil {
			add(s.result(err)...)
		}
	case "stats":
		st := s.src.LastCut()
		out := fmt.Sprintf("ram=%s pass=%s dirty-pages=%d", st.RAMPath, st.Pass, st.DirtyPages)
		if st.Background {
			out += " background"
		}
		if st.DiskFreeze != "" {
			out += " disks=" + st.DiskFreeze
		}
		return out
	case "close":
		if s.snap == nil {
			t.Fatalf("%s: no open snapshot", line)
		}
		if _, ok := args["planned"]; ok {
			tables := map[string]*blockhash.Table{}
			for _, tg := range s.snap.Targets {
				if tg.Kind == vmspec.KindDisk {
					b := readAll(t, tg)
					ext, err := tg.Extents(context.Background(), 0, tg.Size)
					if err != nil {
						t.Fatalf("%s: extents of %s: %v", line, tg.Name, err)
					}
					var es []string
					for _, e := range ext {
						x := fmt.Sprintf("%d+%d", e.Off, e.Len)
						if e.Zero {
							x += ",zero"
						}
						if e.Unchanged {
							x += ",unchanged"
						}
						es = append(es, x)
					}
					add(fmt.Sprintf("extents %s: %s", tg.Name, strings.Join(es, " ")))
					tables[sender.TableKey(tg.Kind, tg.Name)] = blockhash.Of(b, tg.BlockSize)
				} else if s.tracked {
					ram := s.ramOf(tg)
					tables[sender.TableKey(tg.Kind, tg.Name)] = blockhash.Of(ram, tg.BlockSize)
					s.ramImage = ram
				}
			}
			s.snap.Planned(tables)
		}
		err := s.snap.Close()
		s.snap = nil
		add(s.fake.Trace()...)
		add(s.result(err)...)
	case "restart":
		s.fake.DropClients()
		s.old = append(s.old, s.src)
		s.snap = nil
		s.newSource()
		add("ok")
		return strings.Join(out, "\n")
	case "qemu-restart":
		s.fake.Exit("host-qmp-quit")
		add(s.fake.Trace()...)
		s.newVM()
		add("ok")
		return strings.Join(out, "\n")
	case "exit":
		s.fake.Exit(f[1])
		add(s.fake.Trace()...)
		add("ok")
		return strings.Join(out, "\n")
	case "source-close":
		err := s.src.Close()
		s.snap = nil
		add(s.fake.Trace()...)
		add(s.result(err)...)
	case "migration":
		// Someone else's migration changes state (the operator's own).
		s.fake.Lock()
		s.fake.Migration = args["status"]
		s.fake.Unlock()
		return "ok"
	case "state":
		return strings.Join(s.state(), "\n")
	case "params":
		s.fake.Lock()
		defer s.fake.Unlock()
		show := func(m map[string]any) string {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(m)) {
				v := m[k]
				if f, ok := v.(float64); ok {
					v = int64(f) // as JSON carried it
				}
				kv = append(kv, fmt.Sprintf("%s=%v", k, v))
			}
			return strings.Join(kv, " ")
		}
		return "now: " + show(s.fake.Params) + "\nlast migrate: " + show(s.fake.Migrated)
	default:
		t.Fatalf("unknown command %q", line)
	}
	s.fake.Lock()
	st := s.fake.Status
	s.fake.Unlock()
	add("guest: " + st)
	if s.fake.PendingCont() {
		// Only a final cut may leave its stop without a cont, for good.
		s.finalStop = s.finalStop || s.final
		if !s.finalStop && !s.leftPaused && !s.held {
			t.Errorf("%s: the cut stopped the guest and issued no cont", line)
		}
	} else {
		s.leftPaused = false
	}
	return strings.Join(out, "\n")
}

// targets shows snap's targets: disks with whether they have the
// previous cut's table, RAM with whether it is the guest's RAM now (and
// for a tracked cut, the pages it holds).
func (s *cutScript) targets(snap *sender.Snapshot) []string {
	var out []string
	for _, tg := range snap.Targets {
		kind := "ram"
		if tg.Kind == vmspec.KindDisk {
			kind = "disk"
		}
		l := fmt.Sprintf("ok: %s %s size=%d", kind, tg.Name, tg.Size)
		if tg.Kind == vmspec.KindDisk {
			l += fmt.Sprintf(" prev=%v", tg.Prev != nil)
		} else {
			if tg.Prev != nil {
				l += " written=" + s.writtenPages(tg)
			}
			// The fake's stream went through migstream's parser.
			s.fake.Lock()
			ram := slices.Clone(s.fake.RAM)
			s.fake.Unlock()
			l += fmt.Sprintf(" same-as-guest=%v", bytes.Equal(s.ramOf(tg), ram))
		}
		out = append(out, l)
	}
	if snap.Group != nil {
		out = append(out, fmt.Sprintf("group: %s cut %d", snap.Group.Group, snap.Group.Cut))
	}
	return out
}

// ramOf is a RAM target's content as the planner makes it: read whole,
// or for a tracked cut, the last planned image with the written pages
// read.
func (s *cutScript) ramOf(tg sender.Target) []byte {
	t := s.t
	if tg.Prev == nil {
		return readAll(t, tg)
	}
	if s.ramImage == nil || int64(len(s.ramImage)) != tg.Size {
		t.Fatalf("a tracked RAM target without a planned image before it")
	}
	b := slices.Clone(s.ramImage)
	ext, err := tg.Extents(context.Background(), 0, tg.Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		if !e.Unchanged {
			if _, err := tg.Reader.ReadAt(b[e.Off:e.Off+e.Len], e.Off); err != nil {
				t.Fatalf("read written pages at %#x: %v", e.Off, err)
			}
		}
	}
	return b
}

// writtenPages lists the pages a tracked RAM target holds.
func (s *cutScript) writtenPages(tg sender.Target) string {
	ext, err := tg.Extents(context.Background(), 0, tg.Size)
	if err != nil {
		s.t.Fatal(err)
	}
	var pages []string
	for _, e := range ext {
		for off := e.Off; !e.Unchanged && off < e.Off+e.Len; off += int64(tg.BlockSize) {
			pages = append(pages, strconv.FormatInt(off/int64(tg.BlockSize), 10))
		}
	}
	return "[" + strings.Join(pages, " ") + "]"
}

func (s *cutScript) newVM() {
	s.fake = livecuttest.New(s.t, map[string]int64{"disk0": 1 << 20})
	s.fake.Replace = strings.NewReplacer(s.work, "$WORK")
}

func (s *cutScript) newSource() {
	o := livecut.Options{
		QMPSocket: "qmp.sock",
		// Through the script's current fake, which qemu-restart replaces.
		Dial: func(ctx context.Context, socket string, o qmp.Options) (livecut.Monitor, error) {
			return s.fake.Dial(ctx, socket, o)
		},
		Disks:   []livecut.Disk{{Name: "vda", Node: "disk0"}},
		WorkDir: s.work,
		Now:     func() time.Time { return time.Unix(0, 100) },
		Final:   s.final,
		Logger:  slog.New(slog.DiscardHandler),
	}
	if s.spoolFull {
		// The work directory is full when the first spool write comes.
		o.FS = errorfs.Wrap(vfs.Default, errorfs.When(errorfs.PathMatch(".spool"),
			errorfs.When(errorfs.Ops(errorfs.OpWriteAt), errorfs.OnIndex(0, syscall.ENOSPC))))
	}
	if s.tracked {
		o.SharedRAM = "pc.ram"
		o.TrackRAM = func() (livecut.RAMTracker, error) { return s.fake.TrackRAM() }
	}
	src, err := livecut.New(o)
	if err != nil {
		s.t.Fatal(err)
	}
	s.src = src
}

func (s *cutScript) result(err error) []string {
	if err == nil {
		return []string{"ok"}
	}
	return s.errLines(err)
}

// errLines shows an error and the markers callers branch on.
func (s *cutScript) errLines(err error) []string {
	msg := strings.ReplaceAll(err.Error(), s.work, "$WORK")
	out := []string{"error: " + msg}
	var is []string
	for _, m := range []struct {
		name string
		err  error
	}{
		{"ErrVMGone", livecut.ErrVMGone}, {"ErrCutFailed", livecut.ErrCutFailed}, {"ErrGuestPaused", livecut.ErrGuestPaused}, {"ErrMigrating", livecut.ErrMigrating},
		{"ErrDiskNotFound", livecut.ErrDiskNotFound}, {"ErrSwitchedBack", livecut.ErrSwitchedBack},
		{"qmp.ErrDisconnected", qmp.ErrDisconnected}, {"qmp.ErrNoSocket", qmp.ErrNoSocket}, {"sender.ErrSnapshotLost", sender.ErrSnapshotLost},
	} {
		if errors.Is(err, m.err) {
			is = append(is, m.name)
		}
	}
	var ce *qmp.CommandError
	if errors.As(err, &ce) {
		is = append(is, "*qmp.CommandError")
	}
	if len(is) > 0 {
		out = append(out, "is: "+strings.Join(is, ", "))
	}
	return out
}

func (s *cutScript) state() []string {
	f := s.fake
	f.Lock()
	defer f.Unlock()
	out := []string{fmt.Sprintf("status=%s migration=%q", f.Status, f.Migration)}
	for _, n := range f.Nodes {
		l := "node " + n.Name
		for _, b := range n.Bitmaps {
			l += " bitmap=" + b.Name
			if !b.Recording {
				l += ":frozen"
			}
		}
		out = append(out, l)
	}
	var ex []string
	for id := range f.Exports {
		ex = append(ex, id)
	}
	slices.Sort(ex)
	out = append(out, fmt.Sprintf("exports=%v jobs=%v", ex, f.Jobs))
	ents, _ := os.ReadDir(s.work)
	var names []string
	for _, e := range ents {
		// The capture's listening socket goes when its goroutine has
		// accepted QEMU's connection, a moment the script does not order.
		if e.Name() != "mig.sock" {
			names = append(names, e.Name())
		}
	}
	out = append(out, fmt.Sprintf("files=%v", names))
	return out
}
