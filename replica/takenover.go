package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"

	"github.com/drsync/drsync/vfs"
)

// ErrTakenOver means the replica runs as the VM at the DR site (a failover
// took it over). Replicating into it would change the disks under the
// running VM, so it is refused until the operator fails back.
var ErrTakenOver = errors.New("replica taken over")

// takenOverFile marks a taken-over replica. It is JSON:
//
//	{"epoch": 12, "at": "2026-11-22T08:40:00Z", "reason": "failover runbook site-b"}
const takenOverFile = "TAKENOVER"

// TakeoverMark records a takeover.
type TakeoverMark struct {
	Epoch  uint64    `json:"epoch"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// TakenOver returns the replica's takeover mark, or nil if it has none.
func TakenOver(fsys vfs.FS, dir string) (*TakeoverMark, error) {
	f, err := fsys.Open(path.Join(dir, takenOverFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read takeover mark: %w (%w)", err, ErrStorage)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read takeover mark: %w (%w)", err, ErrStorage)
	}
	var m TakeoverMark
	if err := json.Unmarshal(b, &m); err != nil {
		// A mark that cannot be read still marks: never replicate into a
		// replica that may be running.
		return &TakeoverMark{Reason: "unreadable mark: " + err.Error()}, nil
	}
	return &m, nil
}

// MarkTakenOver durably marks the replica in dir as taken over. The caller
// holds the replica (Open with AllowTakenOver), so no epoch lands between
// its reading the replica and the mark.
func (r *Replica) MarkTakenOver(m TakeoverMark) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := vfs.WriteFileDurable(r.o.FS, r.p(takenOverFile), append(b, '\n'), filePerm); err != nil {
		return fmt.Errorf("mark taken over: %w (%w)", err, ErrStorage)
	}
	return nil
}
