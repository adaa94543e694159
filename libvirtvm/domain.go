package libvirtvm

import (
	"context"
	"encoding/xml"
	"fmt"
	"slices"
	"strings"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/drsync/drsync/livecut"
	"github.com/drsync/drsync/qmp"
)

// addressPrefix marks a monitor address that names a libvirt domain
// rather than a QMP socket path: "libvirt:<uri>#<domain>". It lets a
// domain travel where a socket path does (livecut.Options.QMPSocket, the
// guest guard's configuration).
const addressPrefix = "libvirt:"

// Address is the monitor address of domain at libvirt uri.
func Address(uri, domain string) string { return addressPrefix + uri + "#" + domain }

// ParseAddress splits a monitor address made by Address; ok is false for
// anything else (a QMP socket path).
func ParseAddress(addr string) (uri, domain string, ok bool) {
	rest, ok := strings.CutPrefix(addr, addressPrefix)
	if !ok {
		return "", "", false
	}
	uri, domain, ok = strings.Cut(rest, "#")
	return uri, domain, ok && uri != "" && domain != ""
}

// DialMonitor is a livecut.DialFunc for both kinds of address: a domain
// (Address) through libvirt, anything else as a QMP socket path.
func DialMonitor(ctx context.Context, addr string, o qmp.Options) (livecut.Monitor, error) {
	uri, domain, ok := ParseAddress(addr)
	if !ok {
		return livecut.DialQMP(ctx, addr, o)
	}
	m, err := Dial(ctx, uri, domain, o)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return m, nil
}

var _ livecut.DialFunc = DialMonitor

// Disk is one disk of a running domain as drsync protects it.
type Disk struct {
	Target   string // the guest's device name in the domain XML (vda, sda)
	Source   string // the image file or block device, as libvirt opened it
	Node     string // QEMU's top block node for the device (its format node)
	ReadOnly bool
}

// domainXML is the part of a domain definition drsync reads.
type domainXML struct {
	Name  string `xml:"name"`
	UUID  string `xml:"uuid"`
	Disks []struct {
		Device string `xml:"device,attr"`
		Source struct {
			File  string `xml:"file,attr"`
			Dev   string `xml:"dev,attr"`
			Index string `xml:"index,attr"`
		} `xml:"source"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
		ReadOnly *struct{} `xml:"readonly"`
		Alias    struct {
			Name string `xml:"name,attr"`
		} `xml:"alias"`
	} `xml:"devices>disk"`
}

// blockInfo is one device of QEMU's query-block.
type blockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
	} `json:"inserted"`
}

// Disks lists the running domain's disks with their QEMU block nodes.
// libvirt (with -blockdev, since 5.10) names a disk's format node
// libvirt-<source index>-format, its protocol node libvirt-<index>-storage
// for a format-less source; the live XML gives the index. Without an
// index, QEMU's query-block maps the device (by its alias) to its top
// node. That top node is not used when libvirt's name exists: while a
// backup job runs (a killed sender's leftover) it is the job's
// copy-before-write filter, not the disk. CD-ROMs, floppies and empty
// drives are left out.
func (m *Monitor) Disks(ctx context.Context) ([]Disk, error) {
	x, err := m.conn.DomainGetXMLDesc(m.dom, 0)
	if err != nil {
		return nil, fmt.Errorf("libvirt: XML of domain %q: %w", m.dom.Name, err)
	}
	var d domainXML
	if err := xml.Unmarshal([]byte(x), &d); err != nil {
		return nil, fmt.Errorf("libvirt: XML of domain %q: %w", m.dom.Name, err)
	}
	var blocks []blockInfo
	if err := m.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	var named []struct {
		NodeName string `json:"node-name"`
	}
	if err := m.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &named); err != nil {
		return nil, err
	}
	nodes := map[string]bool{}
	for _, n := range named {
		nodes[n.NodeName] = true
	}
	exists := func(n string) bool { return nodes[n] }
	var out []Disk
	for _, dk := range d.Disks {
		if dk.Device != "" && dk.Device != "disk" {
			continue
		}
		src := dk.Source.File
		if src == "" {
			src = dk.Source.Dev
		}
		if src == "" || dk.Alias.Name == "" {
			continue
		}
		if i := dk.Source.Index; i != "" {
			node := "libvirt-" + i + "-format"
			if !exists(node) {
				node = "libvirt-" + i + "-storage"
			}
			if exists(node) {
				out = append(out, Disk{Target: dk.Target.Dev, Source: src, Node: node, ReadOnly: dk.ReadOnly != nil})
				continue
			}
		}
		// qdev is the device's QOM path: /machine/peripheral/<alias>/...
		i := slices.IndexFunc(blocks, func(b blockInfo) bool {
			p := "/machine/peripheral/" + dk.Alias.Name
			return b.Inserted != nil && (b.QDev == p || strings.HasPrefix(b.QDev, p+"/") || b.Device == "drive-"+dk.Alias.Name)
		})
		if i < 0 {
			return nil, fmt.Errorf("libvirt: domain %q: disk %s (%s): QEMU lists no block device for it", m.dom.Name, dk.Target.Dev, dk.Alias.Name)
		}
		node := blocks[i].Inserted.NodeName
		if strings.HasPrefix(node, "#") {
			return nil, fmt.Errorf("libvirt: domain %q: disk %s: its top node %s has no name of libvirt's (a block job's filter?); name the node in [[vm.disk]]", m.dom.Name, dk.Target.Dev, node)
		}
		out = append(out, Disk{Target: dk.Target.Dev, Source: src, Node: node, ReadOnly: dk.ReadOnly != nil})
	}
	return out, nil
}

// XML is the domain's definition (inactive: as the operator defined it,
// without the run-time details of this host's QEMU).
func (m *Monitor) XML() (string, error) {
	x, err := m.conn.DomainGetXMLDesc(m.dom, libvirt.DomainXMLInactive)
	if err != nil {
		return "", fmt.Errorf("libvirt: XML of domain %q: %w", m.dom.Name, err)
	}
	return x, nil
}
