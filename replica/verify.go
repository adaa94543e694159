package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"github.com/cespare/xxhash/v2"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/journal"
	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/wire"
)

// Report is the outcome of Verify.
type Report struct {
	VM      string
	Epoch   uint64
	Targets []TargetReport
	// DeviceState is nil when the replica holds no device state.
	DeviceState *Check
	// Staged describes a journal found next to the replica; a staged epoch
	// is normal, a committed-but-unapplied one means recovery has not run.
	Staged string
	// Problems lists every mismatch, in words; empty means the replica is
	// exactly its committed epoch.
	Problems []string
}

// TargetReport is the check of one image.
type TargetReport struct {
	Kind, Name string
	Size       int64
	Digest     uint64
	// BadBlocks are the first (at most 16) blocks whose content differs from
	// the table; BadCount counts them all.
	BadBlocks []int64
	BadCount  int64
	OK        bool
}

// Check is a pass/fail of one file.
type Check struct {
	File string
	OK   bool
}

// OK reports whether nothing is wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Verify recomputes the content digest of every image of the replica in dir
// and compares it with its block table and the manifest, without changing
// anything. It holds the replica's lock while it reads.
func Verify(fsys vfs.FS, dir, vm string) (*Report, error) {
	unlock, err := lock(context.Background(), fsys, path.Join(dir, "LOCK"), fmt.Sprintf("drsync verify (pid %d) is reading it", os.Getpid()), 0)
	if err != nil {
		return nil, err
	}
	defer unlock.Close()
	b, err := readFile(fsys, path.Join(dir, manifestName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: no manifest, not a replica (or nothing committed yet)", dir)
		}
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	rep := &Report{VM: vm}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, err
	}
	if vm != "" && m.VM != vm {
		return nil, fmt.Errorf("%s holds VM %q, not %q: %w", dir, m.VM, vm, ErrCorrupt)
	}
	rep.VM, rep.Epoch = m.VM, m.Epoch
	for _, t := range m.Targets {
		tr := verifyTarget(fsys, dir, t, rep)
		rep.Targets = append(rep.Targets, tr)
	}
	if d := m.DeviceState; d != nil {
		c := &Check{File: d.File}
		h, n, err := hashFile(fsys, path.Join(dir, d.File))
		switch {
		case err != nil:
			rep.Problems = append(rep.Problems, fmt.Sprintf("device state %s: %v", d.File, err))
		case n != d.Size || h != d.Hash:
			rep.Problems = append(rep.Problems, fmt.Sprintf("device state %s: %d bytes hash %016x, manifest says %d bytes hash %016x", d.File, n, h, d.Size, d.Hash))
		default:
			c.OK = true
		}
		rep.DeviceState = c
	}
	var begin *wire.EpochBegin
	committed := false
	_, _, err = journal.Scan(fsys, path.Join(dir, journalName), m.VM, func(_ int64, f wire.Frame) error {
		switch f := f.(type) {
		case *wire.EpochBegin:
			begin = f
		case *wire.EpochCommit:
			committed = true
		}
		return nil
	})
	switch {
	case errors.Is(err, fs.ErrNotExist) || begin == nil:
	case begin.Epoch == m.Epoch+1 && committed:
		rep.Staged = fmt.Sprintf("epoch %d is committed in the journal but not yet applied", begin.Epoch)
		rep.Problems = append(rep.Problems, rep.Staged+": start the receiver (it applies it on start) before trusting the images")
	case begin.Epoch == m.Epoch+1:
		rep.Staged = fmt.Sprintf("epoch %d is staged (not committed); the replica is at epoch %d", begin.Epoch, m.Epoch)
	default:
		rep.Staged = fmt.Sprintf("journal of epoch %d is stale", begin.Epoch)
	}
	return rep, nil
}

func verifyTarget(fsys vfs.FS, dir string, t TargetEntry, rep *Report) TargetReport {
	tr := TargetReport{Kind: t.Kind, Name: t.Name, Size: t.Size, Digest: t.Digest}
	bad := func(format string, a ...any) TargetReport {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%s %q: ", t.Kind, t.Name)+fmt.Sprintf(format, a...))
		return tr
	}
	tab, err := readTable(fsys, path.Join(dir, t.Table))
	if err != nil {
		return bad("%v", err)
	}
	if tab.Size != t.Size || tab.BlockSize != t.BlockSize {
		return bad("table describes %d bytes at %d, manifest %d at %d", tab.Size, tab.BlockSize, t.Size, t.BlockSize)
	}
	if d := tab.Digest(); d != t.Digest {
		return bad("table digest %016x, manifest %016x", d, t.Digest)
	}
	f, err := fsys.Open(path.Join(dir, t.File))
	if err != nil {
		return bad("open image: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return bad("stat image: %v", err)
	}
	if fi.Size() != t.Size {
		return bad("image %s is %d bytes, manifest says %d", t.File, fi.Size(), t.Size)
	}
	buf := make([]byte, 4<<20-4<<20%t.BlockSize)
	for off := int64(0); off < t.Size; {
		n := min(int64(len(buf)), t.Size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return bad("read image at %d: %v", off, err)
		}
		for b := int64(0); b < n; b += int64(t.BlockSize) {
			i := (off + b) / int64(t.BlockSize)
			end := min(b+int64(t.BlockSize), n)
			if blockhash.Hash(buf[b:end]) != tab.Hashes[i] {
				tr.BadCount++
				if len(tr.BadBlocks) < 16 {
					tr.BadBlocks = append(tr.BadBlocks, i)
				}
			}
		}
		off += n
	}
	if tr.BadCount > 0 {
		return bad("%d blocks of %d bytes differ from the committed epoch, first at blocks %v", tr.BadCount, t.BlockSize, tr.BadBlocks)
	}
	tr.OK = true
	return tr
}

func hashFile(fsys vfs.FS, name string) (uint64, int64, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := xxhash.New()
	n, err := io.Copy(h, f)
	return h.Sum64(), n, err
}
