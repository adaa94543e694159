package rbd

import "strings"

// QEMUFile is the file name under which QEMU's rbd driver (and qemu-img)
// opens pool/image, at snap unless it is "", as c's user with c's
// ceph.conf and keyring: "rbd:pool/image@snap:id=user:conf=path".
// Colons, at signs and backslashes in the parts (and slashes in the names) are escaped as QEMU's
// parser wants; it needs no librbd, so it is in every build.
func QEMUFile(c Config, pool, image, snap string) string {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `@`, `\@`).Replace
	name := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `@`, `\@`, `/`, `\/`).Replace
	var b strings.Builder
	b.WriteString("rbd:" + name(pool) + "/" + name(image))
	if snap != "" {
		b.WriteString("@" + name(snap))
	}
	if c.Client != "" {
		b.WriteString(":id=" + esc(c.Client))
	}
	if c.ConfFile != "" {
		b.WriteString(":conf=" + esc(c.ConfFile))
	}
	if c.Keyring != "" {
		b.WriteString(":keyring=" + esc(c.Keyring))
	}
	return b.String()
}
