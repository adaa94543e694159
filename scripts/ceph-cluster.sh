#!/bin/bash
# A single-node Ceph cluster for tests: one monitor, one manager, one OSD
# (BlueStore on a sparse file), cephx on, pools of size 1, everything
# under one directory and bound to 127.0.0.1 on ports picked free.
#
#   ceph-cluster.sh start DIR [PID]  create and start a cluster in DIR (empty or
#                               absent), with a pool "rbd" and a client "client.drsync";
#                               with PID, stop it and remove DIR when that process
#                               ends (a test binary killed before it could stop it)
#   ceph-cluster.sh env DIR     print CEPH_CONF=... CEPH_CLIENT=... CEPH_POOL=... lines
#   ceph-cluster.sh stop DIR    stop the daemons and remove DIR
#
# Sized for a small shared test machine: caches and memory targets are
# small, the OSD's file is sparse (OSD_SIZE, default 8 GiB).
set -euo pipefail

cmd=${1:-}; dir=${2:-}; owner=${3:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
OSD_SIZE=${OSD_SIZE:-$((8 << 30))}
POOL=${POOL:-rbd}
CLIENT=${CLIENT:-drsync}

conf() { echo "$dir/ceph.conf"; }

# freeport prints a TCP port on 127.0.0.1 no socket uses, below the
# kernel's ephemeral range: a port in it may be taken by any outgoing
# connection at any time, which blocks a listener's bind as much as
# another listener does (and ss -l does not show). The manager and OSD
# bind in Ceph's own range (6800-7568), trying the next port if one is
# taken, so two clusters only ever race for the monitor's port: start
# picks another one if the monitor cannot bind.
freeport() {
	local p lo
	read -r lo _ < /proc/sys/net/ipv4/ip_local_port_range
	[ "$lo" -gt 12000 ] || lo=32768
	for _ in $(seq 1 200); do
		p=$(( 10000 + RANDOM % (lo - 10000) ))
		if ! ss -Htan "sport = :$p" | grep -q .; then echo "$p"; return; fi
	done
	echo "no free port" >&2; return 1
}

# quiet runs a command, showing its output only if it fails.
quiet() { local out; out=$("$@" 2>&1) || { echo "$*: $out" >&2; return 1; }; }

pids() { cat "$dir"/run/*.pid 2>/dev/null || true; }

stop() {
	[ -d "$dir" ] || return 0
	local p
	for p in $(pids); do kill "$p" 2>/dev/null || true; done
	for _ in $(seq 1 100); do
		local alive=
		for p in $(pids); do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	for p in $(pids); do kill -9 "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}

ceph_() { timeout 60 ceph -c "$(conf)" -n client.admin -k "$dir/admin.keyring" "$@"; }

start() {
	mkdir -p "$dir"
	[ -z "$(ls -A "$dir")" ] || { echo "$dir is not empty" >&2; exit 1; }
	dir=$(cd "$dir" && pwd)
	mkdir -p "$dir"/{run,log,mon/ceph-a,mgr/ceph-x,osd/ceph-0}
	local fsid port t0
	t0=$(date +%s.%N)
	fsid=$(cat /proc/sys/kernel/random/uuid)
	port=$(freeport)
	cat > "$(conf)" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon data = $dir/mon/\$cluster-\$id
mgr data = $dir/mgr/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
keyring = $dir/\$name.keyring
# One node, small caches: this runs beside other test suites.
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $OSD_SIZE
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 1
osd op num threads per shard = 2
mon osd full ratio = .97
mon osd backfillfull ratio = .95
mon osd nearfull ratio = .9
mgr initial modules =
mon data avail warn = 2
# A killed client's exclusive lock is breakable once its watch expires.
osd client watch timeout = 5
# Pool quotas are enforced from usage statistics: report them often.
mgr stats period = 1
auth allow insecure global id reclaim = false
CONF
	ceph-authtool --create-keyring "$dir/mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
	cp "$dir/client.admin.keyring" "$dir/admin.keyring"
	ceph-authtool "$dir/mon.a.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
	# Another cluster starting at the same time may take the port between
	# freeport and the monitor's bind: then the monitor is made again on
	# another port.
	local try
	for try in 1 2 3 4 5; do
		sed -i "s/^mon host = .*/mon host = v2:127.0.0.1:$port/" "$(conf)"
		rm -rf "$dir/monmap" "$dir/mon/ceph-a" && mkdir -p "$dir/mon/ceph-a"
		monmaptool --create --addv a "[v2:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
		ceph-mon -c "$(conf)" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.a.keyring"
		ceph-mon -c "$(conf)" -i a 2>"$dir/log/mon-start.log" && break
		if [ "$try" = 5 ] || ! grep -qi "bind\|address already in use" "$dir/log/mon-start.log"; then
			cat "$dir/log/mon-start.log" >&2; exit 1
		fi
		port=$(freeport)
	done
	ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$dir/mgr.x.keyring"
	ceph-mgr -c "$(conf)" -i x
	local uuid id
	uuid=$(cat /proc/sys/kernel/random/uuid)
	id=$(ceph_ osd new "$uuid")
	ceph_ auth get-or-create "osd.$id" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' -o "$dir/osd.$id.keyring"
	ceph-osd -c "$(conf)" -i "$id" --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.log" 2>&1 || { cat "$dir/log/osd-mkfs.log" >&2; exit 1; }
	quiet ceph-osd -c "$(conf)" -i "$id"
	quiet ceph_ osd pool create "$POOL" 8 8
	quiet ceph_ osd pool set "$POOL" size 1 --yes-i-really-mean-it
	quiet ceph_ osd pool application enable "$POOL" rbd
	# The receiver's user, with what README asks of a production cluster
	# and no more: mon 'profile rbd' (the maps, and blocklisting a dead
	# lock holder), osd 'profile rbd' on the pool. No mgr caps: drsync
	# uses no mgr-side rbd feature.
	ceph_ auth get-or-create "client.$CLIENT" mon 'profile rbd' osd "profile rbd pool=$POOL" \
		-o "$dir/client.$CLIENT.keyring"
	# Wait until the OSD is up and the pool's placement groups are active.
	local deadline=$(( $(date +%s) + 180 ))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if ceph_ pg stat 2>/dev/null | grep -Eq '^([0-9]+) pgs: \1 active\+clean;'; then
			if [ -n "$owner" ]; then
				setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done; exec "$0" stop "$2"' \
					"$(readlink -f "$0")" "$owner" "$dir" </dev/null >/dev/null 2>&1 &
			fi
			echo "ceph cluster in $dir up in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")s (mon 127.0.0.1:$port)" >&2
			return 0
		fi
		sleep 0.2
	done
	echo "the OSD never became active; logs in $dir/log" >&2
	ceph_ -s >&2 || true
	exit 1
}

case $cmd in
start) trap 'rc=$?; [ $rc = 0 ] || stop; exit $rc' EXIT; start ;;
stop) stop ;;
env)
	dir=$(cd "$dir" && pwd)
	echo "CEPH_CONF=$(conf)"
	echo "CEPH_CLIENT=$CLIENT"
	echo "CEPH_POOL=$POOL"
	echo "CEPH_ADMIN_KEYRING=$dir/admin.keyring"
	;;
*) echo "usage: $0 start|stop|env DIR" >&2; exit 2 ;;
esac
