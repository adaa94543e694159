#!/usr/bin/env bash
# make demo: protect a real running VM with drsync, lose the protected site,
# and bring the VM back at the DR site with its memory.
#
# A small Linux guest (built from Debian packages, run under QEMU/TCG) keeps
# a counter in memory and writes numbered, checksummed records to its disk.
# drsync cuts its memory and disks at one instant every few seconds while it
# runs and streams each epoch over loopback QUIC (mutual TLS) to a replica.
# Then the protected QEMU is killed (the disaster), and `drsync failover`
# resumes the guest from the replica's last committed epoch: its counter and
# its records carry on from the cut; it does not reboot.
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

# Bold headings on a terminal only: piped output stays plain text.
if [ -t 1 ]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi
human() { numfmt --to=iec-i --suffix=B --format=%.1f "$1"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The QEMU the failover started outlives drsync: its pid is in the run log.
  if [ -f failover/run.log ]; then
    for p in $(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' failover/run.log); do kill -9 "$p" 2>/dev/null || true; done
  fi
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
QEMU=$!
pids+=($QEMU)
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
      sed -E 's/.* epoch=([0-9]+) .* data_bytes=([0-9]+) wire_bytes=([0-9]+) .* guest_pause=([^ ]+) .*/\1 \2 \3 \4/' |
      while read -r e d w p; do echo "  epoch $e: $(human "$d") changed, $(human "$w") on the wire, guest paused $p"; done
    shown=$n
  fi
  (( n >= EPOCHS )) && break
  sleep 0.2
done
(( shown >= EPOCHS )) || { echo "only $shown epochs committed:"; tail sender.log; exit 1; }

say "the guest ran on throughout"
grep TICK serial.log | tail -n 3 | sed 's/^/  /'

say "disaster: the protected site is lost (its QEMU is killed)"
kill -9 $QEMU; wait $QEMU 2>/dev/null || true
LAST=$(grep TICK serial.log | tail -n 1 | tr -d '\r')
echo "  the protected guest's last console line: $LAST"
kill -TERM $SND; wait $SND || true
EPOCH=$(sed -n 's/.*"epoch": *\([0-9]*\).*/\1/p' replicas/app-1/MANIFEST | head -n 1)
echo "  the replica holds epoch $EPOCH, cut at $(sed -n 's/.*"cut": *"\([^"]*\)".*/\1/p' replicas/app-1/MANIFEST | head -n 1)"
"$DRSYNC" verify --replica replicas/app-1 | tail -n 1 | sed 's/^/  verify: /'
go run "$ROOT/testkit/guest/verifyrecords" "$(ls replicas/app-1/disk-0.img)" | sed 's/^/  guest records on the replica disk: /'

say "failover at the DR site: drsync failover --runbook runbook.toml"
KERNEL=$ROOT/testdata/guest/build/vmlinuz
INITRD=$ROOT/testdata/guest/build/initrd.gz
cat > runbook.toml <<TOML
# DR site: how app-1 comes up. The machine matches the protected one (same
# devices in the same order); RAM and device state come from the replica.
name = "site-b"
receiver_config = "receiver.toml"
work_dir = "failover"
[[group]]
name = "apps"
vms = ["app-1"]
[[vm]]
name = "app-1"
accel = "tcg"
args = ["-display", "none", "-no-reboot", "-nodefaults", "-serial", "file:$DEMO/dr-serial.log",
        "-kernel", "$KERNEL", "-initrd", "$INITRD", "-append", "console=ttyS0 panic=-1 quiet no_timer_check",
        "-device", "virtio-blk-pci,drive=disk0,id=vblk0", "-device", "virtio-blk-pci,drive=disk1,id=vblk1"]
  [[vm.disk]]
  replica = "vda"
  node = "disk0"
  [[vm.disk]]
  replica = "vdb"
  node = "disk1"
  [[vm.check]]
  kind = "running"
  timeout = "10s"
  [[vm.check]]
  kind = "serial"
  file = "$DEMO/dr-serial.log"
  match = "^TICK "
  timeout = "30s"
TOML
t0=$(date +%s%N)
"$DRSYNC" failover --runbook runbook.toml 2> failover.log | sed 's/^/  /'
t1=$(date +%s%N)
echo "  (the whole runbook, its checks included, took $(( (t1 - t0) / 1000000 )) ms; \"start:app-1: done in\" is command to guest running)"

say "the guest continues from the cut, with its memory"
for _ in $(seq 100); do [ "$(grep -c TICK dr-serial.log 2>/dev/null)" -ge 20 ] && break; sleep 0.1; done
FIRST=$(grep TICK dr-serial.log | head -n 1 | tr -d '\r')
NOW=$(grep TICK dr-serial.log | tail -n 1 | tr -d '\r')
echo "  protected guest, last line before the disaster: $LAST"
echo "  DR guest, first line after the failover:        $FIRST"
echo "  DR guest, now:                                  $NOW"
if grep -qE '^(START|RESUME)' dr-serial.log; then
  echo "  the DR guest booted afresh: failover did NOT resume the memory"; exit 1
fi
read -r _ c0 s0 <<<"$FIRST"; read -r _ cl sl <<<"$LAST"; read -r _ cn sn <<<"$NOW"
echo "  counter (in RAM) resumed at $c0, not 0: the guest's memory came back from epoch $EPOCH"
echo "  ($(( cl - c0 )) ticks were lost: the guest time between the last committed cut and the disaster)"
echo "  records (on disk) resumed at $s0 and it keeps writing: $sn now"
(( c0 > 0 && c0 <= cl && sn >= s0 )) || { echo "  continuity check FAILED"; exit 1; }

say "done: files are in .demo/ (failover/run.log, dr-serial.log, *.log)"
