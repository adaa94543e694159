package livecut

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Every object this package creates in QEMU starts with prefix, so leftovers
// of a killed sender can be told from the operator's own.
const prefix = "drsync-"

func bitmapName(gen uint64) string            { return fmt.Sprintf("%sb%d", prefix, gen) }
func fleeceNode(gen uint64, disk int) string  { return fmt.Sprintf("%sf%d-%d", prefix, gen, disk) }
func backupJob(gen uint64, disk int) string   { return fmt.Sprintf("%sj%d-%d", prefix, gen, disk) }
func exportName(gen uint64, disk int) string  { return fmt.Sprintf("%sx%d-%d", prefix, gen, disk) }
func overlayFile(gen uint64, disk int) string { return fmt.Sprintf("fleece-%d-%d.qcow2", gen, disk) }

// The late path's nodes, jobs and overlays (early.go).
func lateFleeceNode(gen uint64, disk int) string { return fmt.Sprintf("%sl%d-%d", prefix, gen, disk) }
func lateBackupJob(gen uint64, disk int) string  { return fmt.Sprintf("%sk%d-%d", prefix, gen, disk) }
func lateOverlayPath(dir string, gen uint64, disk int) string {
	return filepath.Join(dir, fmt.Sprintf("fleece-%d-%d-late.qcow2", gen, disk))
}

// bitmapGen parses a bitmap name made by bitmapName.
func bitmapGen(name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"b")
	if !ok {
		return 0, false
	}
	g, err := strconv.ParseUint(rest, 10, 64)
	return g, err == nil
}

func ours(name string) bool { return strings.HasPrefix(name, prefix) }
