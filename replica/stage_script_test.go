package replica

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/drsync/drsync/vmspec"
	"github.com/drsync/drsync/wire"
)

// TestStageScripts drives the staging state machine from scripts in
// testdata/replica/*.stage. Each line is a command with key=value
// arguments, then "->" and the expected outcome: "ok" or "error <text>"
// where text must appear in the error.
//
//	manifest epoch=N target=disk:vda:SIZE:BS ...   reset: the committed replica
//	begin epoch= items= bytes= start= plan=N|prefix [open] target=ID:disk|ram:NAME:SIZE:BS ...
//	                                             (prefix: the staged items' wire.OpenPlanID)
//	extent seq= t= off= len=     mem seq= t= page= pages=
//	zero seq= t= off= len=       ref seq= t= page= count= src=disk|page st= so=
//	dev seq= off= total= len=    commit [epoch=] [items=] [digest=bad]
func TestStageScripts(t *testing.T) {
	files, _ := filepath.Glob("../testdata/replica/*.stage")
	if len(files) == 0 {
		t.Fatal("no scripts")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { runStageScript(t, f) })
	}
}

func runStageScript(t *testing.T, file string) {
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var man *Manifest
	var st *stage
	sc := bufio.NewScanner(fh)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cmdPart, want, ok := strings.Cut(line, "->")
		if !ok {
			t.Fatalf("%s:%d: no expectation", file, ln)
		}
		fields := strings.Fields(cmdPart)
		args := map[string]string{}
		var targets []string
		for _, kv := range fields[1:] {
			k, v, hasV := strings.Cut(kv, "=")
			if !hasV {
				v = "1"
			}
			if k == "target" {
				targets = append(targets, v)
			}
			args[k] = v
		}
		num := func(k string) uint64 {
			v, err := strconv.ParseUint(args[k], 0, 64)
			if err != nil && args[k] != "" {
				t.Fatalf("%s:%d: %s=%q", file, ln, k, args[k])
			}
			return v
		}
		data := func(n uint64) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i*7 + int(n))
			}
			return b
		}
		var got error
		switch fields[0] {
		case "manifest":
			man = &Manifest{Format: manifestFormat, VM: "vm", Epoch: num("epoch")}
			for i, ts := range targets {
				p := strings.Split(ts, ":")
				size, _ := strconv.ParseInt(p[2], 0, 64)
				bs, _ := strconv.Atoi(p[3])
				man.Targets = append(man.Targets, TargetEntry{Kind: p[0], Name: p[1], Size: size, BlockSize: bs, File: fmt.Sprintf("f%d", i), Table: fmt.Sprintf("t%d", i)})
			}
			st = nil
		case "begin":
			b := &wire.EpochBegin{Epoch: num("epoch"), Items: num("items"), Bytes: num("bytes"), StartSeq: num("start"), Open: args["open"] == "1"}
			if args["plan"] == "prefix" && st != nil {
				// An open epoch's resume carries the digest of what is staged.
				b.Plan = st.stagedPlan(len(st.items))
			} else {
				b.Plan = num("plan")
			}
			for _, ts := range targets {
				p := strings.Split(ts, ":")
				id, _ := strconv.Atoi(p[0])
				kind := kindOf(p[1])
				size, _ := strconv.ParseUint(p[3], 0, 64)
				bs, _ := strconv.ParseUint(p[4], 0, 32)
				b.Targets = append(b.Targets, wire.Target{ID: uint16(id), Kind: kind, Name: p[2], Size: size, BlockSize: uint32(bs)})
			}
			if st != nil && b.StartSeq > 0 {
				got = st.resume(b)
			} else {
				st, got = newStage(man, b, 1<<30)
			}
		case "extent":
			got = st.item(&wire.DiskExtent{Seq: num("seq"), Target: uint16(num("t")), Offset: num("off"), Data: data(num("len"))}, 0)
		case "mem":
			got = st.item(&wire.MemRun{Seq: num("seq"), Target: uint16(num("t")), Page: num("page"), Data: data(num("pages") * vmspec.PageSize)}, 0)
		case "zero":
			got = st.item(&wire.ZeroRun{Seq: num("seq"), Target: uint16(num("t")), Offset: num("off"), Length: num("len")}, 0)
		case "ref":
			src := wire.RefDisk
			if args["src"] == "page" {
				src = wire.RefPage
			}
			got = st.item(&wire.PageRef{Seq: num("seq"), Target: uint16(num("t")), Page: num("page"), Count: uint32(num("count")), Source: src, SrcTarget: uint16(num("st")), SrcOffset: num("so")}, 0)
		case "dev":
			got = st.item(&wire.DeviceState{Seq: num("seq"), Offset: num("off"), Total: num("total"), Data: data(num("len"))}, 0)
		case "commit":
			c := &wire.EpochCommit{Epoch: st.begin.Epoch, Items: uint64(len(st.items)), Digest: st.digest.Sum()}
			if args["epoch"] != "" {
				c.Epoch = num("epoch")
			}
			if args["items"] != "" {
				c.Items = num("items")
			}
			if args["digest"] == "bad" {
				c.Digest++
			}
			for id := range st.targets {
				c.States = append(c.States, wire.TargetDigest{Target: id})
			}
			got = st.checkCommit(c)
		default:
			t.Fatalf("%s:%d: unknown command %q", file, ln, fields[0])
		}
		want = strings.TrimSpace(want)
		switch {
		case want == "ok" && got != nil:
			t.Errorf("%s:%d: %s: unexpected error: %v", file, ln, fields[0], got)
		case strings.HasPrefix(want, "error"):
			sub := strings.TrimSpace(strings.TrimPrefix(want, "error"))
			if got == nil || !strings.Contains(got.Error(), sub) {
				t.Errorf("%s:%d: %s: got %v, want error containing %q", file, ln, fields[0], got, sub)
			}
		case want != "ok" && !strings.HasPrefix(want, "error"):
			t.Fatalf("%s:%d: bad expectation %q", file, ln, want)
		}
	}
}
