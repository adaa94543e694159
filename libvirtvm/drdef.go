package libvirtvm

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
)

// DRDefinition says how a replicated definition becomes the domain that
// runs at the DR site.
type DRDefinition struct {
	// Name is the domain's name at the DR site; the replicated name if
	// empty. A renamed domain gets a new UUID from libvirt (two domains of
	// one host cannot share one).
	Name string
	// Disks maps a disk's target dev (vda) to the image the DR domain runs
	// on: the takeover's overlay of the replica's disk.
	Disks map[string]string
	// Networks maps what an interface attaches to at the protected site
	// (a bridge or a libvirt network name) to what it attaches to here.
	Networks map[string]string
	// Isolated leaves every interface unattached (a tap on no bridge):
	// a drill's copy must not meet the production network. The guest
	// keeps its NICs and MACs.
	Isolated bool
	// Dir receives the character devices' files and sockets (serial
	// console logs, agent channels).
	Dir string
}

// ErrDRDefinition marks a definition that cannot run at the DR site as
// asked (a disk without a replica, a network without a mapping).
var ErrDRDefinition = errors.New("domain definition cannot run at the DR site")

// ForDR turns a sanitized definition (Sanitize) into the one the DR site
// defines: its name, disks on the overlays, interfaces on the mapped (or
// no) networks, character devices in o.Dir. Everything else, which the
// guest sees, stays.
func ForDR(def []byte, o DRDefinition) ([]byte, error) {
	root, err := parseTree(def)
	if err != nil {
		return nil, err
	}
	if root.name != "domain" {
		return nil, fmt.Errorf("%w: root element <%s>", ErrDomainXML, root.name)
	}
	if o.Name != "" {
		n := root.child("name")
		if n == nil {
			return nil, fmt.Errorf("%w: no <name>", ErrDomainXML)
		}
		if n.text() != o.Name {
			n.kids = []*node{{chars: o.Name}}
			root.remove("uuid")
		}
	}
	devs := root.child("devices")
	if devs == nil {
		return nil, fmt.Errorf("%w: no <devices>", ErrDomainXML)
	}
	used := map[string]bool{}
	count := map[string]int{}
	for _, d := range devs.elems() {
		switch d.name {
		case "disk":
			dev := ""
			if t := d.child("target"); t != nil {
				dev = t.attr("dev")
			}
			img, ok := o.Disks[dev]
			if !ok {
				if kind := d.attr("device"); kind == "cdrom" || kind == "floppy" {
					continue // an empty drive
				}
				return nil, fmt.Errorf("%w: disk %q has no replica (replicated: %v)", ErrDRDefinition, dev, slices.Sorted(maps.Keys(o.Disks)))
			}
			used[dev] = true
			d.setAttr("type", "file")
			d.remove("source")
			d.remove("backingStore")
			drv := d.child("driver")
			if drv == nil {
				drv = &node{name: "driver"}
				drv.setAttr("name", "qemu")
				d.insert(0, drv)
			}
			drv.setAttr("type", "qcow2")
			src := &node{name: "source"}
			src.setAttr("file", img)
			d.insert(slices.Index(d.kids, drv)+1, src)
		case "interface":
			d.remove("target")
			if o.Isolated {
				d.setAttr("type", "ethernet")
				d.remove("source")
				continue
			}
			src := d.child("source")
			key := map[string]string{"bridge": "bridge", "network": "network"}[d.attr("type")]
			if key == "" || src == nil {
				continue // user-mode and the like: nothing of the site's
			}
			to, ok := o.Networks[src.attr(key)]
			if !ok {
				return nil, fmt.Errorf("%w: interface %s on %s %q has no mapping at the DR site", ErrDRDefinition, macOf(d), key, src.attr(key))
			}
			src.setAttr(key, to)
		case "serial", "console", "channel", "parallel":
			n := count[d.name]
			count[d.name]++
			var src *node
			switch d.attr("type") {
			case "file":
				src = &node{name: "source"}
				src.setAttr("path", filepath.Join(o.Dir, fmt.Sprintf("%s%d.log", d.name, n)))
			case "unix":
				src = &node{name: "source"}
				src.setAttr("mode", "bind")
				src.setAttr("path", filepath.Join(o.Dir, fmt.Sprintf("%s%d.sock", d.name, n)))
			case "dev", "pipe":
				d.setAttr("type", "pty") // the protected host's device or pipe
			}
			d.remove("source")
			if src != nil {
				d.insert(0, src)
			}
		}
	}
	for dev := range o.Disks {
		if !used[dev] {
			return nil, fmt.Errorf("%w: the definition has no disk %q", ErrDRDefinition, dev)
		}
	}
	return root.encode()
}

func macOf(d *node) string {
	if m := d.child("mac"); m != nil {
		return m.attr("address")
	}
	return "(no MAC)"
}

// node is an element (name set) or character data of a definition.
type node struct {
	name  string
	attrs []xml.Attr
	kids  []*node
	chars string
}

func parseTree(b []byte) (*node, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	var stack []*node
	var root *node
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
			n := &node{name: rawName(t.Name)}
			for _, a := range t.Attr {
				n.attrs = append(n.attrs, xml.Attr{Name: xml.Name{Local: rawName(a.Name)}, Value: a.Value})
			}
			if len(stack) == 0 {
				if root != nil {
					return nil, fmt.Errorf("%w: more than one root element", ErrDomainXML)
				}
				root = n
			} else {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			if len(stack) == 0 {
				return nil, fmt.Errorf("%w: unbalanced </%s>", ErrDomainXML, rawName(t.Name))
			}
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, &node{chars: string(t)})
			}
		}
	}
	if root == nil || len(stack) != 0 {
		return nil, fmt.Errorf("%w: no complete root element", ErrDomainXML)
	}
	return root, nil
}

func (n *node) encode() ([]byte, error) {
	var b bytes.Buffer
	e := xml.NewEncoder(&b)
	var walk func(n *node) error
	walk = func(n *node) error {
		if n.name == "" {
			return e.EncodeToken(xml.CharData(n.chars))
		}
		if err := e.EncodeToken(xml.StartElement{Name: xml.Name{Local: n.name}, Attr: n.attrs}); err != nil {
			return err
		}
		for _, k := range n.kids {
			if err := walk(k); err != nil {
				return err
			}
		}
		return e.EncodeToken(xml.EndElement{Name: xml.Name{Local: n.name}})
	}
	if err := walk(n); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
	}
	if err := e.Flush(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
	}
	return b.Bytes(), nil
}

func (n *node) elems() []*node {
	var out []*node
	for _, k := range n.kids {
		if k.name != "" {
			out = append(out, k)
		}
	}
	return out
}

func (n *node) child(name string) *node {
	for _, k := range n.kids {
		if k.name == name {
			return k
		}
	}
	return nil
}

func (n *node) remove(name string) {
	n.kids = slices.DeleteFunc(n.kids, func(k *node) bool { return k.name == name })
}

func (n *node) insert(i int, k *node) { n.kids = slices.Insert(n.kids, i, k) }

func (n *node) text() string {
	var s string
	for _, k := range n.kids {
		s += k.chars
	}
	return s
}

func (n *node) attr(name string) string {
	for _, a := range n.attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (n *node) setAttr(name, v string) {
	for i := range n.attrs {
		if n.attrs[i].Name.Local == name {
			n.attrs[i].Value = v
			return
		}
	}
	n.attrs = append(n.attrs, xml.Attr{Name: xml.Name{Local: name}, Value: v})
}
