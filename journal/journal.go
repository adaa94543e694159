package journal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/drsync/drsync/vfs"
	"github.com/drsync/drsync/wire"
)

// ErrCorrupt marks a journal whose header is unreadable or names another VM.
var ErrCorrupt = errors.New("corrupt journal")

// ErrVersion marks a journal whose frames are of a wire protocol version
// this build does not read (a journal staged by a newer drsync). It also
// matches ErrCorrupt: the replica needs an operator either way.
var ErrVersion = fmt.Errorf("journal of an unknown protocol version (%w)", ErrCorrupt)

// The header's magic: version 2 records the wire protocol version of the
// frames; version 1 (no such field) always held protocol version 1.
const (
	magic   = "DRJRNL02"
	magicV1 = "DRJRNL01"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func header(vm string) []byte { return headerV(vm, wire.Version) }

func headerV(vm string, version uint16) []byte {
	b := binary.BigEndian.AppendUint16([]byte(magic), version)
	b = append(b, byte(len(vm)))
	b = append(b, vm...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// headerV1 is the header journals had before they recorded a version.
func headerV1(vm string) []byte {
	b := append([]byte(magicV1), byte(len(vm)))
	b = append(b, vm...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// readHeader reads and checks the header for vm and returns the wire
// protocol version of the frames that follow.
func readHeader(r io.Reader, vm string) (uint16, error) {
	m := make([]byte, len(magic))
	if _, err := io.ReadFull(r, m); err != nil {
		return 0, fmt.Errorf("journal header: %w (%w)", err, ErrCorrupt)
	}
	var want []byte
	version := uint16(1)
	switch string(m) {
	case magicV1:
		want = headerV1(vm)
	case magic:
		v := make([]byte, 2)
		if _, err := io.ReadFull(r, v); err != nil {
			return 0, fmt.Errorf("journal header: %w (%w)", err, ErrCorrupt)
		}
		version = binary.BigEndian.Uint16(v)
		want = headerV(vm, version)
		m = append(m, v...)
	default:
		return 0, fmt.Errorf("journal header: magic %q: %w", m, ErrCorrupt)
	}
	rest := make([]byte, len(want)-len(m))
	if _, err := io.ReadFull(r, rest); err != nil {
		return 0, fmt.Errorf("journal header: %w (%w)", err, ErrCorrupt)
	}
	if string(m)+string(rest) != string(want) {
		return 0, fmt.Errorf("journal header does not match VM %q: %w", vm, ErrCorrupt)
	}
	if version < wire.MinVersion || version > wire.Version {
		return 0, fmt.Errorf("journal of VM %q holds protocol version %d frames; this build reads %d..%d: %w", vm, version, wire.MinVersion, wire.Version, ErrVersion)
	}
	return version, nil
}

// Writer appends frames to a journal file.
type Writer struct {
	f   vfs.File
	w   *offsetWriter
	bw  *bufio.Writer
	enc *wire.Encoder
}

type offsetWriter struct {
	f   vfs.File
	off int64
}

func (o *offsetWriter) Write(p []byte) (int, error) {
	n, err := o.f.WriteAt(p, o.off)
	o.off += int64(n)
	return n, err
}

// Create starts a new, empty journal for vm at path, replacing any old one,
// and makes its header durable (the caller syncs the directory).
func Create(fs vfs.FS, path, vm string) (*Writer, error) {
	f, err := fs.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create journal: %w", err)
	}
	h := header(vm)
	if _, err := f.WriteAt(h, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write journal header: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("sync journal header: %w", err)
	}
	return newWriter(f, int64(len(h))), nil
}

// OpenAppend reopens a journal to append after its valid prefix of validLen
// bytes (as reported by Scan), cutting off any torn tail first.
func OpenAppend(fs vfs.FS, path string, validLen int64) (*Writer, error) {
	f, err := fs.OpenReadWrite(path)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	if err := f.Truncate(validLen); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate journal torn tail at %d: %w", validLen, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("sync journal: %w", err)
	}
	return newWriter(f, validLen), nil
}

func newWriter(f vfs.File, off int64) *Writer {
	ow := &offsetWriter{f: f, off: off}
	bw := bufio.NewWriterSize(ow, 1<<20)
	return &Writer{f: f, w: ow, bw: bw, enc: wire.NewEncoder(bw, wire.EncoderOptions{Compression: wire.CompressNone})}
}

// Offset is where the next frame will start.
func (w *Writer) Offset() int64 { return w.w.off + int64(w.bw.Buffered()) }

// Append adds a frame. It is not durable until Sync.
func (w *Writer) Append(f wire.Frame) error {
	if err := w.enc.Encode(f); err != nil {
		return fmt.Errorf("journal append %s: %w", f.Type(), err)
	}
	return nil
}

// Sync makes every appended frame durable.
func (w *Writer) Sync() error {
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("journal write: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("journal sync: %w", err)
	}
	return nil
}

// Close closes the file without syncing.
func (w *Writer) Close() error { return w.f.Close() }

// Scan reads the journal at path, checks its header names vm, and calls
// visit for each intact frame with the offset it starts at. It returns the
// length of the valid prefix and, if scanning stopped before the end of the
// file, why (a torn or corrupt frame); a visit error stops the scan and is
// returned as err.
func Scan(fs vfs.FS, path, vm string, visit func(off int64, f wire.Frame) error) (validLen int64, tail error, err error) {
	f, err := fs.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("open journal: %w", err)
	}
	defer f.Close()
	return ScanReader(f, vm, visit)
}

// ScanReader is Scan over any reader positioned at the journal's start.
func ScanReader(r io.Reader, vm string, visit func(off int64, f wire.Frame) error) (validLen int64, tail error, err error) {
	cr := &countingReader{r: bufio.NewReaderSize(r, 256<<10)}
	// One version is all this build writes and reads; the header says
	// which one a journal holds so that a future version can be told apart.
	if _, err := readHeader(cr, vm); err != nil {
		return 0, nil, err
	}
	validLen = cr.n
	dec := wire.NewDecoder(cr, wire.DecoderOptions{})
	for {
		fr, derr := dec.Decode()
		if derr == io.EOF && cr.n == validLen {
			return validLen, nil, nil
		}
		if derr != nil {
			// Only a frame that is cut short or fails its checks is a torn
			// tail; a read error says nothing about what is on disk.
			if errors.Is(derr, wire.ErrMalformed) || errors.Is(derr, io.ErrUnexpectedEOF) || derr == io.EOF {
				return validLen, fmt.Errorf("journal frame at %d: %w", validLen, derr), nil
			}
			return validLen, nil, fmt.Errorf("read journal at %d: %w", validLen, derr)
		}
		if err := visit(validLen, fr); err != nil {
			return validLen, nil, err
		}
		validLen = cr.n
	}
}

type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadFrameAt decodes the single frame that starts at off.
func ReadFrameAt(f io.ReaderAt, off int64) (wire.Frame, error) {
	dec := wire.NewDecoder(io.NewSectionReader(f, off, 1<<62), wire.DecoderOptions{})
	fr, err := dec.Decode()
	if err != nil {
		return nil, fmt.Errorf("journal frame at %d: %w", off, err)
	}
	return fr, nil
}
