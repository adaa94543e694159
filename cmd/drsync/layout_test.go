package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// maxCommandLines bounds the non-test code of this command: flags, the
// configuration file, output and exit codes. The protection agent, the
// receiver's serving loop, the settings' rules (the libraries' Validate)
// and the status and verify reports (package statusreport) live in
// libraries.
const maxCommandLines = 2000

// TestCommandStaysThin: the command holds no loop, retry or pacing logic,
// and its size stays within budget.
func TestCommandStaysThin(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	// Declarations that belong in package agent or receiver/serve.
	libraryOnly := regexp.MustCompile(`(?m)^(type (retrier|pacer|vmLoop|epochRunner|liveProgress|connStream|peekedStream)\b|func (retryable|newRetrier|newPacer|serveConn|lockStorage)\()|epochctl\.|\bbackoff(Initial|Max)\b`)
	lines := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines += bytes.Count(b, []byte("\n"))
		if m := libraryOnly.Find(b); m != nil {
			t.Errorf("%s declares or uses %q: that logic belongs in a library package", f, m)
		}
	}
	t.Logf("%d lines of non-test code", lines)
	if lines > maxCommandLines {
		t.Errorf("%d lines of non-test code, budget %d: move logic to a library package", lines, maxCommandLines)
	}
}
