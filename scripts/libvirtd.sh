#!/usr/bin/env bash
# Starts or stops Debian's libvirtd for drsync's tests on a host without
# systemd, so that qemu:///system works (domain type qemu: TCG).
#
#   scripts/libvirtd.sh start   start libvirtd unless one already answers
#   scripts/libvirtd.sh stop    stop it, only if this script started it
#   scripts/libvirtd.sh status  exit 0 if qemu:///system answers
#
# The system configuration (/etc/libvirt) is left as it is. libvirtd runs
# in a private mount namespace in which a test qemu.conf is bound over
# /etc/libvirt/qemu.conf: QEMU runs as root with no security driver (the
# tests' images, overlays and sockets live in root-owned temporary
# directories), and QEMU's stdio goes to a file, so no virtlogd is needed.
# Sockets, state and logs are the system ones (/run/libvirt,
# /var/lib/libvirt, /var/log/libvirt/qemu), so virsh works unchanged.
# A production libvirt keeps its own qemu.conf (QEMU as libvirt-qemu);
# README.md says what drsync then needs.
set -euo pipefail

run=/run/drsync-libvirtd
pidfile=$run/libvirtd.pid
uri=qemu:///system

answers() { timeout 10 virsh -c "$uri" version >/dev/null 2>&1; }

start() {
	if answers; then
		return 0
	fi
	if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		wait_up
		return 0
	fi
	mkdir -p "$run" /var/log/libvirt/qemu
	cat >"$run/qemu.conf" <<-'EOF'
		user = "root"
		group = "root"
		dynamic_ownership = 0
		security_driver = "none"
		stdio_handler = "file"
		remember_owner = 0
	EOF
	cat >"$run/libvirtd.conf" <<-'EOF'
		unix_sock_group = "root"
		unix_sock_rw_perms = "0770"
		log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
	EOF
	# unshare: the bind mount is libvirtd's (and its QEMUs') alone.
	unshare --mount --propagation private sh -c '
		mount --bind "$1/qemu.conf" /etc/libvirt/qemu.conf &&
		exec libvirtd --daemon --config "$1/libvirtd.conf" --pid-file "$2"' \
		sh "$run" "$pidfile" 9>&-   # the daemon must not hold the script's lock
	wait_up
}

wait_up() {
	for _ in $(seq 1 100); do
		if answers; then
			return 0
		fi
		sleep 0.2
	done
	echo "libvirtd.sh: libvirtd did not answer on $uri (see /var/log/libvirt/libvirtd.log)" >&2
	exit 1
}

stop() {
	[[ -d $run ]] || return 0
	[[ -s $pidfile ]] || {
		rm -rf "$run"
		return 0
	}
	local pid
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -rf "$run"
}

# Test binaries of several packages may start or stop it at once.
exec 9>/run/drsync-libvirtd.lock
case ${1:-} in
start) flock 9 && start ;;
stop) flock 9 && stop ;;
status) answers ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
