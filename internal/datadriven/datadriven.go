// Package datadriven runs the repo's data-driven script tests: a file of
// commands, each followed by a line "----" and its expected output up to a
// blank line. Lines starting with # and blank lines are comments, kept as
// they are. With -rewrite the expected output is replaced by what the
// commands produce (then read the diff).
//
// It knows nothing of what the commands mean: each test hands it a
// function that runs one command line and returns its output, which may
// read its "k=v" arguments with ParseArgs.
package datadriven

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the testdata scripts")

// Walk runs f as a subtest, named after the file, for each file matching
// pattern; no file at all is a failure, so a moved directory cannot make
// the test pass by testing nothing.
func Walk(t *testing.T, pattern string, f func(t *testing.T, path string)) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts match %s: %v", pattern, err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) { f(t, path) })
	}
}

// RunFile runs the script at path, calling run for each command line and
// comparing what it returns with the expected output.
func RunFile(t *testing.T, path string, run func(line string) string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var out strings.Builder
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			out.WriteString(line + "\n")
			continue
		}
		cmdLine := i + 1
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s:%d: %q is not followed by ----", path, cmdLine, line)
		}
		i += 2
		var want []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			want = append(want, lines[i])
		}
		i-- // the blank line, if any, is written by the loop
		got := run(line)
		if !*rewrite && got != strings.Join(want, "\n") {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, cmdLine, line, got, strings.Join(want, "\n"))
		}
		fmt.Fprintf(&out, "%s\n----\n%s\n", line, got)
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
