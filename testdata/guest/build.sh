#!/usr/bin/env bash
# Builds the drsync test guest into testdata/guest/build/ (gitignored):
#
#   vmlinuz     the kernel of the Debian package linux-image-amd64 depends on
#   initrd.gz   static busybox, /init (testdata/guest/init), the virtio block
#               and network modules and the workload (testkit/guest/workload)
#
# Usage: testdata/guest/build.sh   (from any directory; GO=path picks the go tool)
#
# The build is cached: it reruns only when this script, init, the workload
# or record sources, the kernel package version, busybox or the Go version
# changed, and the unpacked kernel is kept per package version. It installs
# nothing; it needs apt-get, dpkg-deb, tar, go and a static busybox
# (busybox-static), and it may run apt-get download and, if that fails,
# apt-get update. Concurrent runs serialize on a lock.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/build
go=${GO:-go}
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net)

say() { echo "guest-build: $*"; }
die() { echo "guest-build: error: $*" >&2; exit 1; }

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

bb=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
if ldd "$bb" >/dev/null 2>&1; then
	die "$bb is dynamically linked (apt-get install busybox-static)"
fi
command -v "$go" >/dev/null || die "go tool '$go' not found"

# The kernel package that linux-image-amd64 currently depends on, and its
# version: sets kpkg and kver. apt-cache takes most of a second, so the answer
# is remembered for as long as the package lists stay the same, unless the
# argument is "fresh".
resolve_kernel() {
	local lists key=""
	lists=$(stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* 2>/dev/null) &&
		key=$(echo "$lists" | sha256sum | cut -d' ' -f1)
	if [ "${1:-}" != fresh ] && [ -n "$key" ] && read -r k kpkg kver 2>/dev/null <"$out/kernel.resolved" && [ "$k" = "$key" ]; then
		return 0
	fi
	local dep
	dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
		sed -n 's/^Depends:.*\(linux-image-[^ ,]*\)\( *(= *\([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -n 1)
	kpkg=${dep%% *}
	kver=${dep#* }
	if [ -n "$kpkg" ] && [ -z "$kver" ]; then
		kver=$(apt-cache policy "$kpkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
	fi
	[ -n "$kpkg" ] && [ -n "$kver" ] && [ "$kver" != "(none)" ] || return 1
	[ -z "$key" ] || echo "$key $kpkg $kver" >"$out/kernel.resolved"
}

apt_update() {
	say "apt-get update"
	apt-get update -qq >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; die "apt-get update failed"; }
}

rm -rf "$out"/tmp.* # left by killed runs; the lock keeps live ones out
tmp=$(mktemp -d "$out/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if resolve_kernel; then
	kid=${kpkg}_${kver}
elif cached=$(find "$out/kernel" -mindepth 2 -maxdepth 2 -name vmlinuz -printf '%h\n' -quit 2>/dev/null) &&
	[ -n "$cached" ]; then
	cached=${cached##*/}
	say "apt cannot tell which kernel linux-image-amd64 wants; using the cached $cached"
	kid=$cached
else
	apt_update
	resolve_kernel fresh || die "cannot resolve the package linux-image-amd64 depends on"
	kid=${kpkg}_${kver}
fi
kdir=$out/kernel/$kid

stamp=$(
	{
		echo "kernel $kid"
		echo "modules ${modules[*]}"
		sha256sum "$here/build.sh" "$here/init" "$bb" | cut -d' ' -f1
		cd "$root" && find testkit/guest/workload testkit/guest/record -name '*.go' ! -name '*_test.go' |
			LC_ALL=C sort | xargs sha256sum
		"$go" version
	} | sha256sum | cut -d' ' -f1
)
if [ -f "$kdir/vmlinuz" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ] &&
	[ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
	say "up to date ($kid)"
	exit 0
fi

# A kernel unpacked by an older build may lack a module added since.
unpacked=1
for f in vmlinuz "${modules[@]/%/.ko}"; do
	[ -f "$kdir/$f" ] || unpacked=
done
if [ -z "$unpacked" ]; then
	say "downloading $kpkg $kver"
	if ! (cd "$tmp" && apt-get download -qq "$kpkg=$kver" >"$tmp/apt.log" 2>&1); then
		# The mirror may have moved on to a newer kernel: refresh and re-resolve.
		apt_update
		resolve_kernel fresh || die "cannot resolve the package linux-image-amd64 depends on"
		kid=${kpkg}_${kver}
		kdir=$out/kernel/$kid
		say "downloading $kpkg $kver"
		(cd "$tmp" && apt-get download -qq "$kpkg=$kver" >"$tmp/apt.log" 2>&1) ||
			{ cat "$tmp/apt.log" >&2; die "apt-get download $kpkg=$kver failed"; }
	fi
	say "unpacking vmlinuz and ${#modules[@]} modules"
	mkdir "$tmp/x" "$tmp/k"
	patterns=('*/vmlinuz-*')
	for m in "${modules[@]}"; do patterns+=("*/$m.ko*"); done
	dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp/x" --wildcards "${patterns[@]}" ||
		die "the kernel package lacks vmlinuz or a module"
	cp "$(find "$tmp/x" -path '*/boot/vmlinuz-*' -print -quit)" "$tmp/k/vmlinuz"
	for m in "${modules[@]}"; do
		f=$(find "$tmp/x" -name "$m.ko*" -print -quit)
		case $f in
		*.ko) cp "$f" "$tmp/k/$m.ko" ;;
		*.ko.xz) xz -dc "$f" >"$tmp/k/$m.ko" ;;
		*.ko.zst) zstd -qdc "$f" >"$tmp/k/$m.ko" ;;
		*.ko.gz) gzip -dc "$f" >"$tmp/k/$m.ko" ;;
		*) die "module $m: unexpected file '$f'" ;;
		esac
	done
	mkdir -p "$out/kernel"
	rm -rf "$kdir"
	mv "$tmp/k" "$kdir"
	# Drop kernels of older package versions.
	find "$out/kernel" -mindepth 1 -maxdepth 1 ! -name "$kid" -exec rm -rf {} +
fi

say "building workload"
r=$tmp/root
mkdir -p "$r/bin" "$r/lib/modules" "$r/dev" "$r/proc" "$r/sys" "$r/tmp"
(cd "$root" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$go" build -trimpath -buildvcs=false \
	-ldflags='-s -w' -o "$r/bin/workload" ./testkit/guest/workload)
cp "$bb" "$r/bin/busybox"
cp "$here/init" "$r/init"
chmod 0755 "$r/init" "$r/bin/busybox" "$r/bin/workload"
for m in "${modules[@]}"; do cp "$kdir/$m.ko" "$r/lib/modules/"; done

(cd "$r" && find . | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -n >"$tmp/initrd.gz"
cp "$kdir/vmlinuz" "$tmp/vmlinuz"
mv "$tmp/vmlinuz" "$out/vmlinuz"
mv "$tmp/initrd.gz" "$out/initrd.gz"
echo "$stamp" >"$out/stamp"
say "built $out/initrd.gz ($(($(stat -c %s "$out/initrd.gz") / 1024)) KiB) and vmlinuz ($kid)"
