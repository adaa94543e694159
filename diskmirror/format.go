package diskmirror

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Format names, as qemu-img spells them.
const (
	FormatAuto  = "auto" // detect with DetectFormat
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// DetectFormat names the format of the image at path from its header:
// FormatQcow2, FormatRaw when no known header is found, or the name of a
// format this package cannot read ("qcow", "qed", "vmdk", "vhdx", "vpc",
// "vdi", "luks"), so that those are refused rather than copied as raw.
//
// Detection suits images the host created. A guest can write any header
// into a raw disk it owns, so configuration should pin the format of raw
// images rather than re-detect it.
func DetectFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("diskmirror: detect format: %w", err)
	}
	defer f.Close()
	var h [512]byte
	n, err := f.ReadAt(h[:], 0)
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("diskmirror: detect format: %w", err)
	}
	return detectFormat(h[:n]), nil
}

func detectFormat(h []byte) string {
	has := func(off int, magic string) bool {
		return len(h) >= off+len(magic) && string(h[off:off+len(magic)]) == magic
	}
	switch {
	case has(0, "QFI\xfb"):
		// Version 1 is the original qcow, which qemu reads but we do not.
		if len(h) >= 8 && binary.BigEndian.Uint32(h[4:]) == 1 {
			return "qcow"
		}
		return FormatQcow2
	case has(0, "QED\x00"):
		return "qed"
	case has(0, "KDMV"), has(0, "# Disk DescriptorFile"):
		return "vmdk"
	case has(0, "vhdxfile"):
		return "vhdx"
	case has(0, "conectix"):
		return "vpc"
	case has(0, "LUKS\xba\xbe"):
		return "luks"
	case len(h) >= 0x44 && bytes.Equal(h[0x40:0x44], []byte{0x7f, 0x10, 0xda, 0xbe}):
		return "vdi"
	}
	return FormatRaw
}

// Open opens path as format: FormatRaw, FormatQcow2, or FormatAuto (or
// "") to detect it. qopts applies to qcow2 images.
func Open(ctx context.Context, path, format string, qopts Qcow2Options) (Image, error) {
	if format == FormatAuto || format == "" {
		f, err := DetectFormat(path)
		if err != nil {
			return nil, err
		}
		format = f
	}
	switch format {
	case FormatRaw:
		return OpenRaw(path)
	case FormatQcow2:
		return OpenQcow2(ctx, path, qopts)
	}
	return nil, fmt.Errorf("diskmirror: open %s: format %q: %w", path, format, ErrFormat)
}
