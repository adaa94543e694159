package libvirtvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A libvirt save image (libvirt's src/qemu/qemu_saveimage.h, version 2)
// is what virDomainRestore resumes a domain from: a header, the domain's
// definition, then QEMU's migration stream, which libvirt feeds to a new
// QEMU started with -incoming. Integers are in the host's byte order
// (little endian on the hosts drsync runs on):
//
//	0                  16          20           24              28         32               36
//	+------------------+-----------+------------+---------------+----------+----------------+
//	| "LibvirtQemudSave" | version | data_len   | was_running   | format   | cookie_offset  |
//	+------------------+-----------+------------+---------------+----------+----------------+
//	| unused: 14 × u32 (zero)                                                                | 92
//	+-----------------------------------------------------------------------------------------+
//	| data (data_len bytes): the XML, a NUL, zero padding                                     |
//	+-----------------------------------------------------------------------------------------+
//	| QEMU migration stream (format 0: uncompressed)                                          |
//	+-----------------------------------------------------------------------------------------+
//
// cookie_offset 0 says there is no cookie; was_running 1 makes libvirt run
// the guest once it is loaded.
const (
	saveMagic      = "LibvirtQemudSave"
	saveVersion    = 2
	saveHeaderSize = 16 + 5*4 + 14*4
	// savePadding leaves room in data, as libvirt does, so that
	// virDomainSaveImageDefineXML can replace the definition in place.
	savePadding = 64 << 10
)

// ErrSaveImage marks a file that is not a libvirt save image drsync reads.
var ErrSaveImage = errors.New("not a libvirt save image")

// SaveHeader is what a save image's header and data hold.
type SaveHeader struct {
	XML        []byte
	WasRunning bool
	DataLen    uint32 // bytes of XML, NUL and padding
}

// WriteSaveHeader writes the header and definition of a save image to w;
// the migration stream follows them.
func WriteSaveHeader(w io.Writer, domainXML []byte) error {
	if bytes.IndexByte(domainXML, 0) >= 0 {
		return fmt.Errorf("libvirt save image: the definition holds a NUL byte")
	}
	data := make([]byte, len(domainXML)+1+savePadding)
	copy(data, domainXML)
	h := make([]byte, saveHeaderSize)
	copy(h, saveMagic)
	le := binary.LittleEndian
	le.PutUint32(h[16:], saveVersion)
	le.PutUint32(h[20:], uint32(len(data)))
	le.PutUint32(h[24:], 1) // was_running
	// format (raw), cookie offset and unused stay 0.
	if _, err := w.Write(h); err != nil {
		return fmt.Errorf("libvirt save image: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("libvirt save image: %w", err)
	}
	return nil
}

// ReadSaveHeader reads the header and definition of a save image; r is
// left at the migration stream.
func ReadSaveHeader(r io.Reader) (*SaveHeader, error) {
	h := make([]byte, saveHeaderSize)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrSaveImage, err)
	}
	le := binary.LittleEndian
	switch {
	case string(h[:16]) != saveMagic:
		return nil, fmt.Errorf("%w: magic %q", ErrSaveImage, h[:16])
	case le.Uint32(h[16:]) != saveVersion:
		return nil, fmt.Errorf("%w: version %d, want %d", ErrSaveImage, le.Uint32(h[16:]), saveVersion)
	case le.Uint32(h[28:]) != 0:
		return nil, fmt.Errorf("%w: compressed (format %d)", ErrSaveImage, le.Uint32(h[28:]))
	case le.Uint32(h[20:]) > 64<<20:
		return nil, fmt.Errorf("%w: data of %d bytes", ErrSaveImage, le.Uint32(h[20:]))
	}
	sh := &SaveHeader{WasRunning: le.Uint32(h[24:]) != 0, DataLen: le.Uint32(h[20:])}
	data := make([]byte, sh.DataLen)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("%w: data: %v", ErrSaveImage, err)
	}
	if cookie := le.Uint32(h[32:]); cookie != 0 && cookie < sh.DataLen {
		data = data[:cookie]
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	sh.XML = data
	return sh, nil
}
