package libvirtvm

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
)

// ErrDomainXML marks a domain definition drsync cannot read.
var ErrDomainXML = errors.New("unreadable domain XML")

// Sanitize turns a domain's definition, as libvirt gives it for the
// inactive domain with secure details (VIR_DOMAIN_XML_INACTIVE|SECURE: the
// definition the operator made, not the runtime one with aliases, tap
// names and monitor paths, and with the passwords the DR site needs to
// keep access to consoles), into what travels to the DR site: what defines
// the machine stays (name, UUID, CPU, memory, firmware and boot, devices,
// their addresses and MACs, the networks they attach to, which the
// takeover maps), what names this host goes:
//
//	disk sources and backing chains   the takeover points disks at overlays
//	character device paths            serial, console, channel, parallel
//	security labels                   seclabel, at the domain and per device
//	tap device names                  interface <target dev>
//	the emulator path and NVRAM file  the DR host's libvirt picks its own
//	the runtime id                    domain id
//
// Kernel, initrd and firmware paths stay: QEMU loads them at start, also
// to receive a running guest, and the guest's RAM must meet the same
// option ROMs, so the DR host must have the same files there (the same
// distribution packages, or the same paths).
func Sanitize(domainXML []byte) ([]byte, error) {
	d := xml.NewDecoder(bytes.NewReader(domainXML))
	var out bytes.Buffer
	e := xml.NewEncoder(&out)
	var path []string // element names from the root
	skip := 0         // depth inside a dropped element
	sawDomain := false
	for {
		tok, err := d.RawToken()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			name := rawName(t.Name)
			if len(path) == 0 {
				if name != "domain" || sawDomain {
					return nil, fmt.Errorf("%w: root element <%s>, want one <domain>", ErrDomainXML, name)
				}
				sawDomain = true
			}
			path = append(path, name)
			if skip > 0 || dropElement(path) {
				skip++
				continue
			}
			t.Name = xml.Name{Local: name}
			t.Attr = keepAttrs(path, t.Attr)
			if err := e.EncodeToken(t); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
			}
		case xml.EndElement:
			if len(path) == 0 {
				return nil, fmt.Errorf("%w: unbalanced </%s>", ErrDomainXML, rawName(t.Name))
			}
			path = path[:len(path)-1]
			if skip > 0 {
				skip--
				continue
			}
			if err := e.EncodeToken(xml.EndElement{Name: xml.Name{Local: rawName(t.Name)}}); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
			}
		case xml.CharData:
			if skip > 0 || len(path) == 0 {
				continue
			}
			if err := e.EncodeToken(t); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
			}
		}
		// Comments, processing instructions and directives do not define
		// the machine: dropped.
	}
	if !sawDomain || len(path) != 0 {
		return nil, fmt.Errorf("%w: no complete <domain> element", ErrDomainXML)
	}
	if err := e.Flush(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
	}
	return out.Bytes(), nil
}

// rawName keeps a namespace prefix as written (qemu:commandline), which
// the encoder would otherwise turn into an xmlns attribute.
func rawName(n xml.Name) string {
	if n.Space != "" {
		return n.Space + ":" + n.Local
	}
	return n.Local
}

// chardevs are the devices whose <source path> is a file, socket or
// device of this host.
var chardevs = []string{"serial", "console", "channel", "parallel"}

func dropElement(path []string) bool {
	name := path[len(path)-1]
	parent := ""
	if len(path) >= 2 {
		parent = path[len(path)-2]
	}
	grand := ""
	if len(path) >= 3 {
		grand = path[len(path)-3]
	}
	switch {
	case name == "seclabel":
		return true
	case parent == "devices" && name == "emulator":
		return true
	case parent == "os" && name == "nvram":
		return true
	case grand == "devices" && parent == "disk" && (name == "source" || name == "backingStore"):
		return true
	case grand == "devices" && parent == "interface" && name == "target":
		return true
	case grand == "devices" && slices.Contains(chardevs, parent) && (name == "source" || name == "log"):
		return true
	}
	return false
}

func keepAttrs(path []string, attrs []xml.Attr) []xml.Attr {
	out := make([]xml.Attr, 0, len(attrs))
	for _, a := range attrs {
		name := rawName(a.Name)
		if len(path) == 1 && name == "id" {
			continue // the runtime id of a running domain
		}
		out = append(out, xml.Attr{Name: xml.Name{Local: name}, Value: a.Value})
	}
	return out
}
