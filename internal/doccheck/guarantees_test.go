package doccheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// root is the repository's top directory, two levels up.
const root = "../.."

var (
	backticked = regexp.MustCompile("`([^`]+)`")
	funcName   = regexp.MustCompile(`^(Test|Benchmark|Fuzz)[A-Z0-9_]\w*`)
)

// TestGuaranteesNameExistingTests: every Test, Benchmark and Fuzz function
// the Guarantees table of ARCHITECTURE.md names is declared in the package
// named before it in the same cell.
func TestGuaranteesNameExistingTests(t *testing.T) {
	rows := guaranteeRows(t)
	if len(rows) < 10 {
		t.Fatalf("found %d rows in the Guarantees table: has its layout changed?", len(rows))
	}
	checked := 0
	decls := map[string]map[string]bool{} // by package, read once
	for _, cell := range rows {
		for _, ref := range testRefs(cell) {
			if ref.pkg == "" {
				t.Errorf("%s is named with no package before it: %q", ref.name, cell)
				continue
			}
			checked++
			if decls[ref.pkg] == nil {
				decls[ref.pkg] = declared(t, ref.pkg)
			}
			if !decls[ref.pkg][ref.name] {
				t.Errorf("ARCHITECTURE.md names %s in %s, which declares no such function", ref.name, ref.pkg)
			}
		}
	}
	if checked < 50 {
		t.Errorf("checked only %d test names: has the table's layout changed?", checked)
	}
}

// guaranteeRows is the "shown by" cell of every row of the Guarantees
// table.
func guaranteeRows(t *testing.T) []string {
	data, err := os.ReadFile(filepath.Join(root, "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(data), "\n## Guarantees\n")
	if !ok {
		t.Fatal("ARCHITECTURE.md has no Guarantees section")
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	var cells []string
	for _, line := range strings.Split(sec, "\n") {
		if !strings.HasPrefix(line, "|") || strings.HasPrefix(line, "|---") || strings.HasPrefix(line, "| promise |") {
			continue
		}
		parts := strings.Split(strings.TrimSuffix(strings.TrimSpace(line), "|"), "|")
		cells = append(cells, parts[len(parts)-1])
	}
	return cells
}

type testRef struct{ pkg, name string }

// testRefs are the test names of a cell, each with the package named
// last before it: a backticked directory of the repository that holds Go
// files. Other backticked words (testdata files, subtest names, store
// conformance cases) are neither.
func testRefs(cell string) []testRef {
	var out []testRef
	pkg := ""
	for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
		word := m[1]
		if name := funcName.FindString(word); name != "" && (len(name) == len(word) || word[len(name)] == '/') {
			out = append(out, testRef{pkg, name})
			continue
		}
		if isGoPackage(word) {
			pkg = word
		}
	}
	return out
}

func isGoPackage(dir string) bool {
	if strings.ContainsAny(dir, " *.=") {
		return false
	}
	m, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
	return len(m) > 0
}

var testDecl = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)\w*)\(`)

// declared is the set of Test, Benchmark and Fuzz functions the test files
// of pkg declare, whatever their build tags.
func declared(t *testing.T, pkg string) map[string]bool {
	files, err := filepath.Glob(filepath.Join(root, pkg, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range testDecl.FindAllSubmatch(data, -1) {
			names[string(m[1])] = true
		}
	}
	return names
}
