// Package scripts holds the shell scripts make and CI run; its test checks
// the make test recipe's exit status.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeGo stands in for go in make test's recipe: every package passes but
// ./e2e, which fails when E2E_FAILS is set.
const fakeGo = `#!/bin/bash
case $1 in
list) echo example.com/a; echo example.com/e2e ;;
test)
	if [[ " $* " == *" ./e2e "* ]]; then
		echo "=== RUN   TestX"
		if [ -n "$E2E_FAILS" ]; then
			echo "    x_test.go:1: broken"; echo "--- FAIL: TestX (0.01s)"; echo FAIL; echo "FAIL	example.com/e2e	0.1s"; exit 1
		fi
		echo "--- PASS: TestX (0.01s)"; echo PASS; echo "ok  	example.com/e2e	0.1s"; exit 0
	fi
	echo "ok  	example.com/a	0.1s" ;;
esac
`

// TestMakeTestFailsOnEndToEndFailure: make test exits non-zero when only
// the end-to-end run fails, and names the failed test at its end. (A
// recipe that read the e2e run's status after another command had
// replaced it passed such a run.)
func TestMakeTestFailsOnEndToEndFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("runs make")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dir := t.TempDir()
	gobin := filepath.Join(dir, "go")
	if err := os.WriteFile(gobin, []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, fails := range []bool{false, true} {
		cmd := exec.Command("make", "-C", "..", "--no-print-directory", "test", "GO="+gobin, "DEPS=")
		cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir(), "MAKEFLAGS=", "MFLAGS=")
		if fails {
			cmd.Env = append(cmd.Env, "E2E_FAILS=1")
		}
		out, err := cmd.CombinedOutput()
		switch {
		case fails && err == nil:
			t.Fatalf("make test passed a failed end-to-end run:\n%s", out)
		case fails && !(strings.Contains(string(out), "end-to-end tests that failed") && strings.Contains(string(out), "TestX")):
			t.Fatalf("make test does not name the failed end-to-end test at its end:\n%s", out)
		case !fails && err != nil:
			t.Fatalf("make test failed with every test passing: %v\n%s", err, out)
		}
	}
}
