#!/usr/bin/env bash
# make demo: protect a VM's disk and RAM images with drsync over loopback
# QUIC (mutual TLS), change them between epochs like a running guest would,
# and show the replica converge after every epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
DRSYNC=$PWD/bin/drsync
DEMO=$PWD/.demo
rm -rf "$DEMO" && mkdir -p "$DEMO"/{keys,images,state,replicas}
cd "$DEMO"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
port=$(( 20000 + RANDOM % 20000 ))

say "identities: one per site, pinned by fingerprint"
FPA=$("$DRSYNC" keygen --out keys --name site-a | sed -n 's/^Fingerprint of .*: //p')
FPB=$("$DRSYNC" keygen --out keys --name site-b | sed -n 's/^Fingerprint of .*: //p')
echo "site-a: $FPA"; echo "site-b: $FPB"

say "a VM: 512 MiB sparse raw disk, 128 MiB RAM image, device state"
truncate -s 512M images/vda.raw
truncate -s 128M images/pc.ram
scribble() { # file, size in MiB, writes
  for _ in $(seq "$3"); do
    dd if=/dev/urandom of="$1" bs=64K count=$(( 1 + RANDOM % 16 )) seek=$(( RANDOM % ($2 * 16 - 16) )) conv=notrunc status=none
  done
}
scribble images/vda.raw 512 200; scribble images/pc.ram 128 200
head -c 4096 /dev/urandom > images/devstate.bin

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
vms = ["web-1"]
TOML
cat > sender.toml <<TOML
# protected site: what to replicate and where to
[identity]
cert = "keys/site-a.crt"
key = "keys/site-a.key"
[receiver]
address = "127.0.0.1:$port"
fingerprints = ["$FPB"]
[state]
dir = "state"
[[vm]]
name = "web-1"
compression = "fast"
device_state = "images/devstate.bin"
  [[vm.disk]]
  name = "vda"
  path = "images/vda.raw"
  format = "raw"
  [[vm.ram]]
  name = "pc.ram"
  path = "images/pc.ram"
TOML

say "receiver (DR site) on 127.0.0.1:$port"
"$DRSYNC" receive --config receiver.toml 2> receiver.log &
RCV=$!
trap 'kill $RCV 2>/dev/null; wait $RCV 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening receiver.log && break; sleep 0.1; done

for epoch in 1 2 3 4; do
  say "epoch $epoch"
  "$DRSYNC" send --once --config sender.toml 2> "send-$epoch.log"
  tail -n 1 "send-$epoch.log" | sed 's/^/  /'
  disk=$(ls replicas/web-1/disk-*.img); ram=$(ls replicas/web-1/ram-*.img)
  qemu-img compare -q -f raw -F raw images/vda.raw "$disk" && echo "  disk: replica == source (qemu-img compare)"
  cmp -s images/pc.ram "$ram" && echo "  RAM:  replica == source"
  "$DRSYNC" verify --replica replicas/web-1 | tail -n 1 | sed 's/^/  verify: /'
  # the "guest" keeps writing
  scribble images/vda.raw 512 20; scribble images/pc.ram 128 30
  head -c 4096 /dev/urandom > images/devstate.bin
done

say "status"
"$DRSYNC" status --config sender.toml
"$DRSYNC" status --config receiver.toml
say "done: the replica followed every epoch; files are in .demo/"
