package dist

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const rulesFile = "prometheus/drsync-rules.yml"

// ruleExprs returns the expressions of a rules file and the names its
// recording rules define. The file is ours: each expr is on its line or
// in a "|" block below it.
func ruleExprs(t *testing.T, path string) (exprs []string, recorded map[string]bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recorded = map[string]bool{}
	var block *strings.Builder
	blockIndent := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if block != nil {
			if trimmed == "" || indent > blockIndent {
				block.WriteString(trimmed + "\n")
				continue
			}
			exprs = append(exprs, block.String())
			block = nil
		}
		key, val, _ := strings.Cut(strings.TrimPrefix(trimmed, "- "), ":")
		val = strings.TrimSpace(val)
		switch key {
		case "record":
			recorded[val] = true
		case "expr":
			if val == "|" {
				block, blockIndent = &strings.Builder{}, indent
			} else {
				exprs = append(exprs, val)
			}
		}
	}
	if block != nil {
		exprs = append(exprs, block.String())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return exprs, recorded
}

// TestAlertRules checks the rules with promtool (syntax) and runs their
// unit tests (prometheus/drsync-rules_test.yml: each alert fires when it
// should and not before, among them a failed drill), and checks that
// they use only metric names drsync exports.
func TestAlertRules(t *testing.T) {
	exprs, recorded := ruleExprs(t, rulesFile)
	if len(exprs) < 8 {
		t.Fatalf("%s: only %d expressions found", rulesFile, len(exprs))
	}
	for _, bad := range unknownNames(exportedNames(t), recorded, exprs) {
		t.Errorf("rules use a metric drsync does not export: %s", bad)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus, make deps); the alerting rules are not tested")
	}
	for _, args := range [][]string{{"check", "rules", "drsync-rules.yml"}, {"test", "rules", "drsync-rules_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
