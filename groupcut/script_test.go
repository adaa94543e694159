package groupcut_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/groupcut"
	"github.com/drsync/drsync/internal/datadriven"
)

// Data-driven tests of the group cut: a leader and its members, with
// messages queued between them (so a script decides what arrives and
// what is lost or late) and each member's own steps completed by hand.
// Each file in testdata is a script of commands, each followed by "----"
// and its expected output; run with -rewrite to regenerate it.
//
//	group members=a,b [prepare=D] [step=D] [retry=D]   a new group "g"
//	start                     the leader starts a cut
//	deliver [to=M] [from=M]   deliver the queued messages (all, or only to/from M)
//	local M [fail] [reason=R] M's oldest pending step finishes (ok or failed)
//	run [hung=M,...]          deliver and finish steps until nothing moves;
//	                          hung members neither hear nor act
//	tick [who=leader|members] the leader and every member (or only those) see the time
//	state                     phases, pending steps, queued messages, guests
//
// Every command takes t=D to move the clock (from the script's start)
// first. After each command the script checks that no member that is idle
// left its guest stopped, and that no guest was stopped for longer than
// the member's hold timeout plus one step timeout.

func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/*.txt", func(t *testing.T, path string) {
		s := &script{t: t}
		datadriven.RunFile(t, path, s.run)
	})
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type script struct {
	t       *testing.T
	now     time.Time
	o       groupcut.Options
	leader  *groupcut.Leader
	members map[string]*groupcut.Member
	pending map[string][]groupcut.Action
	stopped map[string]time.Time // guest stopped since
	toM     []groupcut.Msg       // leader → member
	toL     []groupcut.Msg       // member → leader
	out     []string
}

func (s *script) printf(format string, a ...any) { s.out = append(s.out, fmt.Sprintf(format, a...)) }

func (s *script) run(line string) string {
	s.out = nil
	f := strings.Fields(line)
	args := map[string]string{}
	var words []string
	for _, w := range f[1:] {
		if k, v, ok := strings.Cut(w, "="); ok {
			args[k] = v
		} else {
			words = append(words, w)
		}
	}
	dur := func(k string) time.Duration {
		if args[k] == "" {
			return 0
		}
		d, err := time.ParseDuration(args[k])
		if err != nil {
			s.t.Fatalf("%s: %v", line, err)
		}
		return d
	}
	if args["t"] != "" {
		s.now = t0.Add(dur("t"))
	}
	switch f[0] {
	case "group":
		s.now = t0
		s.o = groupcut.Options{Name: "g", Members: strings.Split(args["members"], ","), RPO: time.Minute,
			PrepareTimeout: dur("prepare"), StepTimeout: dur("step"), RetryAfter: dur("retry")}
		s.o.Local = s.o.Members
		if err := s.o.Validate(); err != nil {
			return "error: " + err.Error()
		}
		s.leader = groupcut.NewLeader(s.o, 0)
		s.members, s.pending, s.stopped = map[string]*groupcut.Member{}, map[string][]groupcut.Action{}, map[string]time.Time{}
		s.toM, s.toL = nil, nil
		for _, m := range s.o.Members {
			s.members[m] = groupcut.NewMember(s.o, m)
		}
		s.printf("ok")
	case "start":
		out, err := s.leader.Start(s.now)
		if err != nil {
			s.printf("error: %v", err)
		}
		s.leaderOut(out)
	case "deliver":
		s.deliver(args["to"], args["from"], nil)
	case "local":
		s.local(words[0], slices.Contains(words, "fail"), args["reason"])
	case "run":
		hung := map[string]bool{}
		for _, m := range strings.Split(args["hung"], ",") {
			hung[m] = m != ""
		}
		for i := 0; ; i++ {
			if i > 100 {
				s.t.Fatalf("%s: does not settle", line)
			}
			n := len(s.out)
			s.deliver("", "", hung)
			for _, m := range s.o.Members {
				if !hung[m] && len(s.pending[m]) > 0 {
					s.local(m, false, "")
				}
			}
			if len(s.out) == n {
				break
			}
		}
	case "tick":
		if args["who"] != "members" {
			s.leaderOut(s.leader.Tick(s.now))
		}
		for _, m := range s.o.Members {
			if args["who"] == "leader" {
				break
			}
			s.memberOut(m, s.members[m].Tick(s.now))
		}
	case "state":
		s.printf("leader: %s", s.leader.State())
		for _, m := range s.o.Members {
			g := "running"
			if !s.stopped[m].IsZero() {
				g = fmt.Sprintf("stopped for %s", s.now.Sub(s.stopped[m]))
			}
			s.printf("%s: %s, guest %s, pending %v", m, s.members[m].State(), g, s.pending[m])
		}
		for _, q := range s.toM {
			s.printf("queued leader → %s: %s", q.Member, q)
		}
		for _, q := range s.toL {
			s.printf("queued %s → leader: %s", q.Member, q)
		}
	default:
		s.t.Fatalf("unknown command %q", line)
	}
	s.check(line)
	if len(s.out) == 0 {
		return "(nothing)"
	}
	return strings.Join(s.out, "\n")
}

func (s *script) leaderOut(out groupcut.Output) {
	for _, m := range out.Send {
		s.printf("leader → %s: %s", m.Member, m)
		s.toM = append(s.toM, m)
	}
	if d := out.Done; d != nil {
		if d.Committed {
			s.printf("leader: cut %d committed: group %s members %s", d.Tag.Cut, d.Tag.Group, strings.Join(d.Tag.Members, ","))
			for _, m := range d.Tag.Members {
				if err := d.Tag.Validate(m); err != nil {
					s.t.Errorf("committed tag %+v: %v", d.Tag, err)
				}
			}
		} else {
			s.printf("leader: cut %d aborted: %s", d.Tag.Cut, d.Reason)
		}
	}
	if out.Warn != "" {
		s.printf("leader warns: %s", out.Warn)
	}
}

func (s *script) memberOut(name string, out groupcut.MemberOutput) {
	for _, a := range out.Do {
		s.printf("%s does: %s", name, a)
		s.pending[name] = append(s.pending[name], a)
	}
	for _, m := range out.Send {
		s.printf("%s → leader: %s", name, m)
		s.toL = append(s.toL, m)
	}
}

func (s *script) deliver(to, from string, hung map[string]bool) {
	toM, toL := s.toM, s.toL
	s.toM, s.toL = nil, nil
	for _, m := range toM {
		if (to != "" && m.Member != to) || from != "" || hung[m.Member] {
			s.toM = append(s.toM, m)
			continue
		}
		s.memberOut(m.Member, s.members[m.Member].Receive(s.now, m))
	}
	for _, m := range toL {
		if (from != "" && m.Member != from) || to != "" || hung[m.Member] {
			s.toL = append(s.toL, m)
			continue
		}
		s.leaderOut(s.leader.Receive(s.now, m))
	}
}

// local finishes member name's oldest pending step as the VM would.
func (s *script) local(name string, fail bool, reason string) {
	if len(s.pending[name]) == 0 {
		s.printf("%s: no pending step", name)
		return
	}
	a := s.pending[name][0]
	s.pending[name] = s.pending[name][1:]
	r := groupcut.Msg{Cut: a.Cut, Member: name}
	switch {
	case fail:
		r.Kind, r.Reason = groupcut.Failed, reason
		if a.Kind == groupcut.Stop && reason == "after stop" {
			s.stopped[name] = s.now
		}
	case a.Kind == groupcut.Prepare:
		r.Kind = groupcut.Converged
	case a.Kind == groupcut.Stop:
		r.Kind = groupcut.Held
		s.stopped[name] = s.now
	case a.Kind == groupcut.Resume:
		r.Kind = groupcut.Resumed
		delete(s.stopped, name)
	case a.Kind == groupcut.Abort:
		r.Kind = groupcut.Aborted
		delete(s.stopped, name)
	}
	s.printf("%s %s: %s", name, a.Kind, r)
	s.memberOut(name, s.members[name].Local(s.now, r))
}

func (s *script) check(line string) {
	for _, m := range s.o.Members {
		st := s.members[m].State()
		if since := s.stopped[m]; !since.IsZero() {
			if strings.HasPrefix(st, "idle") {
				s.t.Errorf("%s: member %s is idle with its guest stopped", line, m)
			}
			if limit := s.o.HoldTimeout() + s.o.StepTimeout; s.now.Sub(since) > limit {
				s.t.Errorf("%s: member %s's guest stopped for %s (limit %s)", line, m, s.now.Sub(since), limit)
			}
		}
	}
}
