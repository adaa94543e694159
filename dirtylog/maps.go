package dirtylog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64 // addresses, End exclusive
	Perms      string // "rw-s", "r-xp", ...
	Offset     uint64 // offset in the mapped file
	Path       string // "" for anonymous memory
}

// Shared says whether writes through the mapping reach the file.
func (m Mapping) Shared() bool { return len(m.Perms) == 4 && m.Perms[3] == 's' }

// Exec says whether the mapping holds executable code.
func (m Mapping) Exec() bool { return len(m.Perms) == 4 && m.Perms[2] == 'x' }

// ErrMalformedMaps marks a maps line that is not what the kernel writes.
var ErrMalformedMaps = errors.New("malformed /proc/PID/maps line")

// ParseMaps decodes /proc/PID/maps.
func ParseMaps(r io.Reader) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		m, err := parseMapsLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read maps: %w", err)
	}
	return out, nil
}

// parseMapsLine decodes "start-end perms offset dev inode   path".
func parseMapsLine(line string) (Mapping, error) {
	var m Mapping
	fields := strings.Fields(line)
	if len(fields) < 5 {
		return m, fmt.Errorf("%w: %d fields in %q", ErrMalformedMaps, len(fields), line)
	}
	a, b, ok := strings.Cut(fields[0], "-")
	if !ok {
		return m, fmt.Errorf("%w: range %q", ErrMalformedMaps, fields[0])
	}
	var err error
	if m.Start, err = strconv.ParseUint(a, 16, 64); err != nil {
		return m, fmt.Errorf("%w: start %q", ErrMalformedMaps, a)
	}
	if m.End, err = strconv.ParseUint(b, 16, 64); err != nil {
		return m, fmt.Errorf("%w: end %q", ErrMalformedMaps, b)
	}
	if m.End <= m.Start || m.Start%pageSize != 0 || m.End%pageSize != 0 {
		return m, fmt.Errorf("%w: range %q", ErrMalformedMaps, fields[0])
	}
	if len(fields[1]) != 4 {
		return m, fmt.Errorf("%w: permissions %q", ErrMalformedMaps, fields[1])
	}
	m.Perms = fields[1]
	if m.Offset, err = strconv.ParseUint(fields[2], 16, 64); err != nil {
		return m, fmt.Errorf("%w: offset %q", ErrMalformedMaps, fields[2])
	}
	if len(fields) > 5 {
		// The path is the rest of the line after the inode, spaces
		// included ("/memfd:ram0 (deleted)").
		rest := line
		for i := 0; i < 5; i++ {
			rest = strings.TrimLeft(rest, " \t")
			j := strings.IndexAny(rest, " \t")
			if j < 0 {
				rest = ""
				break
			}
			rest = rest[j:]
		}
		m.Path = strings.TrimLeft(rest, " \t")
	}
	return m, nil
}

// Region is guest RAM mapped in QEMU: addresses [Start, End) hold the
// backend's bytes from Offset on.
type Region struct {
	Start, End uint64
	Offset     uint64
}

// ErrNoSharedRAM says the process has no shared memory backend to track:
// guest RAM is private anonymous memory, which only a full migration reads.
var ErrNoSharedRAM = errors.New("no shared memfd guest RAM mapping")

// MemfdRAM finds the shared memfd mappings named name (QEMU's
// memory-backend-memfd names its memfd "memory-backend-memfd"), merged
// where adjacent in both address and file offset. Their total must be size
// bytes when size is not 0, so a mapping of some other memfd is never
// mistaken for guest RAM.
func MemfdRAM(maps []Mapping, name string, size uint64) ([]Region, error) {
	want := "/memfd:" + name
	var out []Region
	var total uint64
	for _, m := range maps {
		p := strings.TrimSuffix(m.Path, " (deleted)")
		if p != want || !m.Shared() || m.Perms[1] != 'w' {
			continue
		}
		total += m.End - m.Start
		if n := len(out); n > 0 && out[n-1].End == m.Start && out[n-1].Offset+(out[n-1].End-out[n-1].Start) == m.Offset {
			out[n-1].End = m.End
			continue
		}
		out = append(out, Region{Start: m.Start, End: m.End, Offset: m.Offset})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w named %q", ErrNoSharedRAM, name)
	}
	if size != 0 && total != size {
		return nil, fmt.Errorf("%w: memfd %q maps %d bytes, the guest has %d", ErrNoSharedRAM, name, total, size)
	}
	return out, nil
}
