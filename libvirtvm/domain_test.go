package libvirtvm

import "testing"

func TestAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, uri, domain string
		ok                bool
	}{
		{Address("qemu:///system", "web1"), "qemu:///system", "web1", true},
		{Address("qemu+tls://h/system", "0a7c2f9e-1b2d-4c3e-9f00-123456789abc"), "qemu+tls://h/system", "0a7c2f9e-1b2d-4c3e-9f00-123456789abc", true},
		{"/run/vm/qmp.sock", "", "", false},
		{"libvirt:qemu:///system", "", "", false},
		{"libvirt:#web1", "", "", false},
	} {
		uri, domain, ok := ParseAddress(tc.addr)
		if ok != tc.ok || (ok && (uri != tc.uri || domain != tc.domain)) {
			t.Errorf("%q: %q %q %v", tc.addr, uri, domain, ok)
		}
	}
}
