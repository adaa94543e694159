#!/usr/bin/env bash
# Starts the drsync test guest (see build.sh) under QEMU with TCG, for manual
# use and the demo. testkit/guest.Launch runs this same script, so tests and
# humans get the same machine.
#
# Usage: testdata/guest/launch.sh [options] [DISK...] [-- QEMU_ARG...]
#
#   DISK          an image file, attached as a virtio-blk disk whose block
#                 nodes are file0 -> disk0 for the first DISK, file1 -> disk1
#                 for the second, and so on (the replication engine addresses
#                 disks by node name). The format is $FORMAT if set, else a
#                 raw: or qcow2: prefix (qcow2:/images/a.img), else the
#                 extension (.qcow2 and .qcow are qcow2, anything else raw).
#                 The workload writes its record ring to the first disk.
#   -m MIB        guest RAM in MiB ($MEM, default 256)
#   -q SOCKET     QMP unix socket ($QMP, default $TMPDIR/drsync-guest/qmp.sock)
#   -s SERIAL     serial console: a log file, or "stdio"
#                 ($SERIAL, default $TMPDIR/drsync-guest/serial.log)
#   -a KEY=VALUE  adds drsync.KEY=VALUE to the kernel command line; repeat
#                 as needed. Keys: rate (records/s, 20), dirty_mib (32),
#                 dirty_rate_kib (2048), read (0), tick_ms (50), count_ms (10),
#                 and for guest-to-guest messages msg (send or recv), ip
#                 (eth0's address/prefix) and peer (the receiver's address)
#   -k KERNEL     kernel ($KERNEL) and
#   -i INITRD     initramfs ($INITRD); by default build.sh runs (it is
#                 cached) and its outputs are used
#   -n            print the QEMU command line instead of running it
#   QEMU_ARG...   passed to QEMU after everything else, e.g. -S,
#                 -incoming defer, or -object memory-backend-file,... with
#                 -machine memory-backend=...
#
# The command line goes to stderr, then the script execs QEMU, so the
# script's process is QEMU's. Stop the guest with QMP "quit" or a signal.
#
# Example:
#   qemu-img create -f raw /tmp/g.raw 64M
#   testdata/guest/launch.sh -a rate=50 /tmp/g.raw &
#   tail -f /tmp/drsync-guest/serial.log     # START, then TICK <counter> <seq>
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${TMPDIR:-/tmp}/drsync-guest
mem=${MEM:-256}
qmp=${QMP:-$state/qmp.sock}
serial=${SERIAL:-$state/serial.log}
kernel=${KERNEL:-}
initrd=${INITRD:-}
dry=
params=()

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2; }

while getopts "m:q:s:a:k:i:nh" opt; do
	case $opt in
	m) mem=$OPTARG ;;
	q) qmp=$OPTARG ;;
	s) serial=$OPTARG ;;
	a)
		case $OPTARG in
		*=*) params+=("drsync.${OPTARG#drsync.}") ;;
		*) echo "launch: -a wants KEY=VALUE, got '$OPTARG'" >&2; exit 2 ;;
		esac
		;;
	k) kernel=$OPTARG ;;
	i) initrd=$OPTARG ;;
	n) dry=1 ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))

disks=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
	disks+=("$1")
	shift
done
[ $# -gt 0 ] && shift # the --; what is left goes to QEMU

if [ -z "$kernel" ] || [ -z "$initrd" ]; then
	"$here/build.sh" >&2
	kernel=${kernel:-$here/build/vmlinuz}
	initrd=${initrd:-$here/build/initrd.gz}
fi

# QEMU option values escape a comma by doubling it.
esc() { printf '%s' "${1//,/,,}"; }

serialopt=stdio
[ "$serial" = stdio ] || serialopt=file:$serial

# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
# check can miss its ticks and panic the boot ("timer doesn't work").
args=(
	-accel tcg -m "$mem" -display none -no-reboot -nodefaults
	-serial "$serialopt"
	-qmp "unix:$(esc "$qmp"),server=on,wait=off"
	-kernel "$kernel" -initrd "$initrd"
	-append "console=ttyS0 panic=-1 quiet no_timer_check${params[*]:+ ${params[*]}}"
)
for i in "${!disks[@]}"; do
	d=${disks[$i]}
	case $d in
	raw:* | qcow2:*) fmt=${d%%:*} d=${d#*:} ;;
	*.qcow2 | *.qcow) fmt=qcow2 ;;
	*) fmt=raw ;;
	esac
	fmt=${FORMAT:-$fmt}
	[ -e "$d" ] || { echo "launch: disk $d does not exist" >&2; exit 1; }
	args+=(
		-blockdev "driver=file,node-name=file$i,filename=$(esc "$d")"
		-blockdev "driver=$fmt,node-name=disk$i,file=file$i"
		-device "virtio-blk-pci,drive=disk$i,id=vblk$i"
	)
done
args+=("$@")

echo "launch: qemu-system-x86_64 ${args[*]}" >&2
[ -z "$dry" ] || exit 0
mkdir -p "$(dirname "$qmp")"
[ "$serial" = stdio ] || mkdir -p "$(dirname "$serial")"
exec qemu-system-x86_64 "${args[@]}"
