package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/sender"
)

func TestProgressBar(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	b := newProgressBar(&out, func() time.Time { return now })

	b.update("web-1", sender.Progress{Epoch: 3, SentBytes: 0, AllBytes: 100e6})
	now = now.Add(2 * time.Second)
	b.update("web-1", sender.Progress{Epoch: 3, SentBytes: 50e6, AllBytes: 100e6})
	line := out.String()[strings.LastIndex(out.String(), "\r")+1:]
	for _, want := range []string{"web-1 [", " 50%", "50.0/100.0 MB", "25.0 MB/s"} {
		if !strings.Contains(line, want) {
			t.Errorf("bar %q lacks %q", line, want)
		}
	}
	if strings.Contains(out.String(), "\n") {
		t.Errorf("bar wrote a newline: %q", out.String())
	}

	// Redraws are rate-limited.
	n := out.Len()
	b.update("web-1", sender.Progress{Epoch: 3, SentBytes: 51e6, AllBytes: 100e6})
	if out.Len() != n {
		t.Error("bar redrawn within the rate limit")
	}

	// A log line clears the bar, is printed on a line of its own, and the
	// bar comes back under it.
	out.Reset()
	b.Write([]byte("level=INFO msg=hello\n"))
	s := out.String()
	if !strings.HasPrefix(s, "\r"+strings.Repeat(" ", len(line))+"\r") || !strings.Contains(s, "msg=hello\n\rweb-1") {
		t.Errorf("log line around the bar: %q", s)
	}

	// Two VMs share the line without the graphic; finishing both clears it.
	now = now.Add(time.Second)
	b.update("db-1", sender.Progress{Epoch: 1, SentBytes: 10, AllBytes: 10})
	last := out.String()[strings.LastIndex(out.String(), "\r")+1:]
	if !strings.Contains(last, "db-1 100%") || !strings.Contains(last, " | web-1 ") || strings.Contains(last, "[") {
		t.Errorf("two-VM bar %q", last)
	}
	b.done("db-1")
	b.done("web-1")
	out.Reset()
	b.Write([]byte("x\n"))
	if out.String() != "x\n" {
		t.Errorf("after done, log line written as %q", out.String())
	}
}

// Counts whose sent bytes pass the plan's total (page references were once
// counted in one and not the other) must draw a full bar, not panic.
func TestProgressBarSentPastTotal(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	b := newProgressBar(&out, func() time.Time { return now })
	b.update("web-1", sender.Progress{Epoch: 1, SentBytes: 0x4f64000, AllBytes: 0x3cb61c3})
	if line := out.String(); !strings.Contains(line, "100%") || !strings.Contains(line, "["+strings.Repeat("=", 24)+"]") {
		t.Errorf("bar %q", line)
	}
}

// /dev/null is a character device but no terminal: output sent there gets
// no bar.
func TestIsTerminalDevNull(t *testing.T) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("/dev/null taken for a terminal")
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer taken for a terminal")
	}
}
