package diskmirror

// QemuNBDOf exposes the qemu-nbd behind an image from OpenQcow2 to the
// external tests: its pid, a channel closed once it has been reaped, and
// its private directory.
func QemuNBDOf(img Image) (pid int, exited <-chan struct{}, dir string) {
	p := img.(*NBDImage).proc
	return p.cmd.Process.Pid, p.exited, p.dir
}
