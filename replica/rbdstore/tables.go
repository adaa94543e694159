package rbdstore

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
)

// A target's block table is a whole table written at one epoch and, once
// later epochs have changed entries of it, a patch of every entry changed
// since (blockhash.Patch), rewritten at each epoch that changes the table:
// an epoch writes what changed since the whole table, not the table (8
// bytes per page, 8 MiB per epoch for a 4 GiB guest's RAM). Once the patch
// would hold more than 1/patchShare of the entries, the epoch writes the
// whole table again, so reading a table costs at most about 1.3 times the
// whole table (an entry of a patch takes up to 20 bytes), in two objects.
const patchShare = 8

// tableRef names the objects of a committed table.
type tableRef struct {
	Base  uint64 // the epoch the whole table was written at
	Patch uint64 // the epoch the patch over it was written at; 0: none
}

// refOf is where e's table is in a manifest at epoch.
func refOf(e replica.TargetEntry, epoch uint64) tableRef {
	if e.TableBase == 0 {
		return tableRef{Base: epoch}
	}
	return tableRef{e.TableBase, e.TablePatch}
}

func tableName(table string, epoch uint64) string {
	return table + "." + strconv.FormatUint(epoch, 10)
}

func patchName(table string, epoch uint64) string {
	return table + ".p." + strconv.FormatUint(epoch, 10)
}

// objects are the names of the objects behind ref.
func (ref tableRef) objects(table string) []string {
	out := []string{tableName(table, ref.Base)}
	if ref.Patch != 0 {
		out = append(out, patchName(table, ref.Patch))
	}
	return out
}

// tableWrite is what an apply writes of one target's table.
type tableWrite struct {
	ref     tableRef
	whole   bool    // write the whole table at ref.Base
	patched []int64 // the entries changed since ref.Base, ascending
	write   bool    // write a patch of patched at ref.Patch
}

// nextTable decides how the apply of epoch records tab, the table of a
// target after it: prev is where its committed table old is (nil for a
// new target), patched the entries changed since prev's whole table. A
// table the epoch did not change keeps its objects. It does no IO.
func nextTable(prev *tableRef, old *blockhash.Table, patched []int64, tab *blockhash.Table, epoch uint64) tableWrite {
	if prev == nil || old == nil || old.Size != tab.Size || old.BlockSize != tab.BlockSize {
		return tableWrite{ref: tableRef{Base: epoch}, whole: true}
	}
	if tab == old {
		return tableWrite{ref: *prev, patched: patched}
	}
	changed := blockhash.DiffRuns(old, tab)
	if len(changed) == 0 {
		return tableWrite{ref: *prev, patched: patched}
	}
	// As the patch will hold them (with the entries between those close
	// together), so that a replica reopened from it decides alike.
	merged := blockhash.Indices(blockhash.RunsAt(tab, mergeSorted(patched, blockhash.Indices(changed))))
	if len(merged) > len(tab.Hashes)/patchShare {
		return tableWrite{ref: tableRef{Base: epoch}, whole: true}
	}
	return tableWrite{ref: tableRef{Base: prev.Base, Patch: epoch}, patched: merged, write: true}
}

// mergeSorted is the union of two ascending lists, ascending.
func mergeSorted(a, b []int64) []int64 {
	out := make([]int64, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] < b[0]:
			out, a = append(out, a[0]), a[1:]
		case b[0] < a[0]:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return slices.Concat(out, a, b)
}

// readTable reads the table of e, in a manifest at epoch, with read, and
// checks it against the entry: it returns the table and the entries its
// patch holds.
func readTable(read func(name string) ([]byte, error), e replica.TargetEntry, epoch uint64) (*blockhash.Table, []int64, error) {
	ref := refOf(e, epoch)
	b, err := read(tableName(e.Table, ref.Base))
	if err != nil {
		return nil, nil, storageErr("read block table "+e.Table, err)
	}
	tab, err := blockhash.Read(bytes.NewReader(b))
	if err != nil {
		return nil, nil, fmt.Errorf("block table %s: %w (%w)", e.Table, err, replica.ErrCorrupt)
	}
	var patched []int64
	if ref.Patch != 0 {
		b, err := read(patchName(e.Table, ref.Patch))
		if err != nil {
			return nil, nil, storageErr("read block table patch "+patchName(e.Table, ref.Patch), err)
		}
		p, err := blockhash.ReadPatch(b)
		if err == nil {
			tab, err = p.Apply(tab)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("block table %s patch of epoch %d: %w (%w)", e.Table, ref.Patch, err, replica.ErrCorrupt)
		}
		patched = p.Indices()
	}
	if tab.Size != e.Size || tab.BlockSize != e.BlockSize || tab.Digest() != e.Digest {
		return nil, nil, fmt.Errorf("block table %s does not match the manifest (epoch %d): %w", e.Table, epoch, replica.ErrCorrupt)
	}
	return tab, patched, nil
}
