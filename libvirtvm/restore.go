package libvirtvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
)

// Restore describes a guest resumed into libvirt at the DR site.
type Restore struct {
	URI string
	// Definition is the replicated, sanitized definition; DR says how it
	// becomes the DR site's domain (ForDR).
	Definition []byte
	DR         DRDefinition
	// Stream is QEMU's migration stream of the guest with every RAM page
	// (takeover.Options.FullStream); Image the save image written from
	// it, which libvirt reads.
	Stream, Image string
	// Persistent defines the domain (or updates its definition) before
	// it is restored, so it stays libvirt's after it stops; a drill's
	// copy is transient and gone once destroyed.
	Persistent bool
}

// Restored is a domain Restore brought up.
type Restored struct {
	Name    string
	XML     []byte        // the definition it runs with
	Written time.Duration // writing the save image
	Loaded  time.Duration // libvirt's restore, until the guest runs
}

// ErrDomainActive marks a DR domain that already runs: a takeover never
// replaces a running guest.
var ErrDomainActive = errors.New("the domain already runs at the DR site")

// Do writes the save image and has libvirt resume the guest from it.
func (r Restore) Do(ctx context.Context) (*Restored, error) {
	if r.Definition == nil {
		return nil, fmt.Errorf("libvirt: the replica holds no domain definition (was it protected as a libvirt domain?)")
	}
	x, err := ForDR(r.Definition, r.DR)
	if err != nil {
		return nil, err
	}
	l, err := Connect(ctx, r.URI)
	if err != nil {
		return nil, err
	}
	defer l.Disconnect()
	name, err := domainName(x)
	if err != nil {
		return nil, err
	}
	if dom, err := l.DomainLookupByName(name); err == nil {
		if st, _, err := l.DomainGetState(dom, 0); err == nil && libvirt.DomainState(st) != libvirt.DomainShutoff {
			return nil, fmt.Errorf("libvirt: %s: domain %q is %s: %w", r.URI, name, stateName(libvirt.DomainState(st)), ErrDomainActive)
		}
	}
	if r.Persistent {
		dom, err := l.DomainDefineXML(string(x))
		if err != nil {
			return nil, fmt.Errorf("libvirt: %s: define domain %q: %w", r.URI, name, err)
		}
		// The save image must carry the definition as libvirt holds it
		// (its UUID, once generated), or the restore is refused as
		// another domain of the same name.
		s, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLSecure|libvirt.DomainXMLInactive)
		if err != nil {
			return nil, fmt.Errorf("libvirt: %s: definition of %q: %w", r.URI, name, err)
		}
		x = []byte(s)
	}
	out := &Restored{Name: name, XML: x}
	start := time.Now()
	if err := writeSaveImage(r.Image, r.Stream, x); err != nil {
		return nil, err
	}
	out.Written = time.Since(start)
	start = time.Now()
	if err := l.DomainRestore(r.Image); err != nil {
		return nil, fmt.Errorf("libvirt: %s: restore %q from %s: %w", r.URI, name, r.Image, err)
	}
	out.Loaded = time.Since(start)
	return out, nil
}

func writeSaveImage(path, stream string, x []byte) error {
	in, err := os.Open(stream)
	if err != nil {
		return fmt.Errorf("libvirt save image: %w", err)
	}
	defer in.Close()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("libvirt save image: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = WriteSaveHeader(w, x)
	if err == nil {
		_, err = io.Copy(w, in)
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("libvirt save image %s: %w", path, err)
	}
	return nil
}

// domainName is the <name> of a definition.
func domainName(x []byte) (string, error) {
	root, err := parseTree(x)
	if err != nil {
		return "", err
	}
	if n := root.child("name"); n != nil && n.text() != "" {
		return n.text(), nil
	}
	return "", fmt.Errorf("%w: no <name>", ErrDomainXML)
}

// Destroy stops domain at uri at once; a domain that does not run (or no
// longer exists) is no error. A transient domain is gone afterwards.
func Destroy(ctx context.Context, uri, domain string) error {
	l, err := Connect(ctx, uri)
	if err != nil {
		return err
	}
	defer l.Disconnect()
	dom, err := l.DomainLookupByName(domain)
	if isCode(err, libvirt.ErrNoDomain) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("libvirt: %s: look up domain %q: %w", uri, domain, err)
	}
	if err := l.DomainDestroy(dom); err != nil && !isCode(err, libvirt.ErrNoDomain) && !isCode(err, libvirt.ErrOperationInvalid) {
		return fmt.Errorf("libvirt: %s: destroy domain %q: %w", uri, domain, err)
	}
	return nil
}
