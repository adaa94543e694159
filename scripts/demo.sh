#!/usr/bin/env bash
# make demo: protect a real running VM with drsync. A small Linux guest
# (built from Debian packages, run under QEMU/TCG) keeps a counter in
# memory and writes checksummed records to its disk; drsync cuts its memory
# and disks at one instant every few seconds while it runs, and streams
# each epoch over loopback QUIC (mutual TLS) to a replica.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRSYNC=$ROOT/bin/drsync
DEMO=$ROOT/.demo
EPOCHS=${EPOCHS:-6}
rm -rf "$DEMO" && mkdir -p "$DEMO"/{keys,images,state,replicas}
# QEMU's sockets need short paths.
RUN=$(mktemp -d /tmp/drsync-demo.XXXXXX)
cd "$DEMO"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))

say "the protected VM: 256 MiB guest, a raw disk and a qcow2 disk, running under QEMU"
"$ROOT/testdata/guest/build.sh"
qemu-img create -q -f raw images/vda.raw 64M
qemu-img create -q -f qcow2 images/vdb.qcow2 32M
"$ROOT/testdata/guest/launch.sh" -m 256 -q "$RUN/qmp.sock" -s "$DEMO/serial.log" images/vda.raw images/vdb.qcow2 2> qemu.log &
pids+=($!)
for _ in $(seq 600); do grep -q TICK serial.log 2>/dev/null && break; sleep 0.1; done
grep -q TICK serial.log || { echo "the guest did not boot:"; tail qemu.log serial.log; exit 1; }
echo "guest console: $(grep TICK serial.log | tail -n 1)   (TICK <counter in RAM> <last record on disk>)"

say "identities: one per site, pinned by fingerprint"
FPA=$("$DRSYNC" keygen --out keys --name site-a | sed -n 's/^Fingerprint of .*: //p')
FPB=$("$DRSYNC" keygen --out keys --name site-b | sed -n 's/^Fingerprint of .*: //p')
echo "site-a: $FPA"; echo "site-b: $FPB"

cat > receiver.toml <<TOML
# DR site: where replicas live and who may write them
listen = "127.0.0.1:$port"
[identity]
cert = "keys/site-b.crt"
key = "keys/site-b.key"
[storage]
dir = "replicas"
[[sender]]
name = "site-a"
fingerprint = "$FPA"
vms = ["app-1"]
TOML
cat > sender.toml <<TOML
# protected site: the running VM, by its QMP socket and block nodes
[identity]
cert = "keys/site-a.crt"
key = "keys/site-a.key"
[receiver]
address = "127.0.0.1:$port"
fingerprints = ["$FPB"]
[state]
dir = "state"
[[vm]]
name = "app-1"
qmp = "$RUN/qmp.sock"
mode = "continuous"
min_interval = "2s"
  [[vm.disk]]
  name = "vda"
  node = "disk0"
  [[vm.disk]]
  name = "vdb"
  node = "disk1"
TOML

say "receiver (DR site) on 127.0.0.1:$port"
"$DRSYNC" receive --config receiver.toml 2> receiver.log &
pids+=($!)
for _ in $(seq 100); do grep -q listening receiver.log && break; sleep 0.1; done

say "sender: continuous epochs of the running guest (memory + disks cut at one instant)"
"$DRSYNC" send --config sender.toml 2> sender.log &
SND=$!
pids+=($SND)
epochs() { sed -n 's/.*"epochs": *\([0-9]*\).*/\1/p' state/app-1/status.json 2>/dev/null || echo 0; }
shown=0
for _ in $(seq 900); do
  n=$(epochs); n=${n:-0}
  if (( n > shown )); then
    grep 'msg="epoch committed"' sender.log | tail -n $(( n - shown )) |
      sed -E 's/.* epoch=([0-9]+) .* data_bytes=([0-9]+) wire_bytes=([0-9]+) .* guest_pause=([^ ]+) .*/  epoch \1: \2 bytes changed, \3 on the wire, guest paused \4/'
    shown=$n
  fi
  (( n >= EPOCHS )) && break
  sleep 0.2
done
kill -TERM $SND; wait $SND || true
(( shown >= EPOCHS )) || { echo "only $shown epochs committed:"; tail sender.log; exit 1; }

say "the guest ran on throughout"
grep TICK serial.log | tail -n 3 | sed 's/^/  /'

say "the replica: a whole committed epoch"
"$DRSYNC" verify --replica replicas/app-1 | tail -n 1 | sed 's/^/  verify: /'
go run "$ROOT/testkit/guest/verifyrecords" "$(ls replicas/app-1/disk-0.img)" | sed 's/^/  guest records on the replica disk: /'

say "status"
"$DRSYNC" status --config sender.toml
"$DRSYNC" status --config receiver.toml
say "done: files are in .demo/"
