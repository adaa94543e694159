# drsync: disaster-recovery replication for QEMU/KVM virtual machines.
#
#   make demo    protect a real running guest: live epochs over loopback QUIC into a replica
#   make test    everything CI runs: vet, unit, crash, fuzz (bounded) and end-to-end tests
#   make bench   benchmarks: sender pipeline, loopback transfer, stream parsing, live guest epochs,
#                applying an epoch into the RBD store vs the file store (starts a Ceph test cluster)
#   make bench-wan  drsync vs QEMU migration and rsync over emulated WAN links (one table)
#   make fuzz    longer fuzzing of every decoder (FUZZTIME per target)

GO        ?= go
BIN       := bin/drsync
FUZZTIME  ?= 60s
# Bounded fuzz run that make test includes.
CIFUZZ    ?= 4s

FUZZ_TARGETS := \
	./wire:FuzzDecode ./wire:FuzzDecodePayload \
	./journal:FuzzScan ./replica:FuzzRecover ./replica:FuzzParseManifest \
	./blockhash:FuzzRead ./blockhash:FuzzReadPatch ./sender:FuzzUnmarshalIndex ./sender:FuzzIndexDelta \
	./nbd:FuzzParseStructuredChunk ./nbd:FuzzParseBlockStatusChunk ./nbd:FuzzParseOptionReply ./nbd:FuzzParseGreeting \
	./migstream:FuzzParse ./migstream:FuzzParseSkeleton ./migstream:FuzzCheckpointed ./pagecache:FuzzIndex ./epochctl:FuzzController \
	./stripe:FuzzParseHello ./stripe:FuzzChunks ./dirtylog:FuzzParseMaps

SHELL := /bin/bash

.PHONY: all build deps test unit fuzz fuzz-ci bench bench-wan demo clean install

all: build

build:
	$(GO) build -o $(BIN) ./cmd/drsync

# System packages the tests and the demo need, installed without their
# recommends: QEMU (and its tools; qemu-system-x86 depends on the firmware
# and option ROMs its default machine loads: seabios, ipxe-qemu,
# qemu-system-data) and the busybox the test guest is built with; iproute2
# for the WAN emulator's namespaces; rsync, a baseline of the WAN benchmark;
# prometheus for promtool, which checks the alerting rules (its server is
# stopped and disabled: only the tool is wanted); chromium, in which a
# headless test renders the status page; Ceph (its daemons and the headers
# of librados and librbd) for the RBD store's tests. Each entry is
# command:package (or /path:package for a file);
# the package is installed when the command is missing.
DEPS := qemu-img:qemu-utils qemu-nbd:qemu-utils qemu-system-x86_64:qemu-system-x86 \
	busybox:busybox-static ip:iproute2 rsync:rsync promtool:prometheus chromium:chromium \
	ceph-mon:ceph-mon ceph-mgr:ceph-mgr ceph-osd:ceph-osd ceph:ceph-common rbd:ceph-common \
	/usr/include/rbd/librbd.h:librbd-dev /usr/include/rados/librados.h:librados-dev
DEPS += virsh:libvirt-clients libvirtd:libvirt-daemon-system
# QEMU's rbd block driver, for failovers and drills from a Ceph pool: a
# recommends of qemu-system-x86, so not installed with it here.
DEPS += /usr/lib/$(shell uname -m)-linux-gnu/qemu/block-rbd.so:qemu-block-extra

deps:
	@set -e; missing=""; for d in $(DEPS); do \
		{ case $${d%%:*} in /*) [ -e "$${d%%:*}" ];; *) command -v $${d%%:*} >/dev/null;; esac; } || case " $$missing " in *" $${d##*:} "*) ;; *) missing="$$missing $${d##*:}";; esac; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	t0=$$(date +%s); echo "updating the package lists (apt)…"; \
	$$SUDO apt-get update -qq; echo "  done in $$(( $$(date +%s) - t0 ))s"; \
	for p in $$missing; do \
		t0=$$(date +%s); echo "installing $$p (apt)…"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p >/dev/null; \
		echo "  done in $$(( $$(date +%s) - t0 ))s"; \
		if [ "$$p" = prometheus ]; then \
			echo "stopping and disabling the prometheus server the package may have started"; \
			if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true; \
			else $$SUDO service prometheus stop >/dev/null 2>&1 || true; $$SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true; fi; \
		fi; \
	done

# The tests build and test the Ceph RBD store too (package rbd); they start
# a single-node cluster of their own (scripts/ceph-cluster.sh).
test: export GOFLAGS += -tags=ceph
test: deps
	$(GO) vet ./...
	@set -o pipefail; log=$$(mktemp); e2elog=$$(mktemp); tmp=$$(mktemp -d); \
	echo "unit, crash and integration tests (a line per package as it ends):"; \
	TMPDIR=$$tmp $(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/e2e$$') 2>&1 | tee $$log; status=$$?; \
	echo "end-to-end tests with real QEMU guests (a line per test as it starts and ends):"; \
	TMPDIR=$$tmp $(GO) test -count=1 -v -timeout 70m ./e2e 2>&1 | scripts/progress.sh $$e2elog; e2estatus=$${PIPESTATUS[0]}; \
	e2efailed=; if [ $$e2estatus != 0 ]; then status=1; e2efailed=1; echo "end-to-end output:"; grep -v '^=== \(RUN\|PAUSE\|CONT\)' $$e2elog | tail -n 400; fi; \
	grep '^\(ok\|FAIL\)[[:space:]]' $$e2elog >> $$log; \
	echo "the short tests again, under the race detector (not e2e: its subjects are separate processes):"; \
	TMPDIR=$$tmp $(GO) test -race -short -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/e2e$$') 2>&1 | tee -a $$log || status=1; \
	TMPDIR=$$tmp $(MAKE) --no-print-directory fuzz-ci || status=1; \
	if [ -n "$$e2efailed" ]; then echo "end-to-end tests that failed, with the last messages each logged:"; scripts/failures.sh $$e2elog; fi; \
	echo "packages: $$(grep -c '^ok' $$log) passed, $$(grep -c '^FAIL[[:space:]]' $$log) failed"; \
	if grep -q '^FAIL[[:space:]]' $$log; then status=1; fi; \
	left=$$(find $$tmp -mindepth 1 -maxdepth 1 -printf '%f\n'); \
	if [ -n "$$left" ]; then echo "the tests left files in the temporary directory:"; echo "$$left"; status=1; fi; \
	rm -rf $$log $$e2elog $$tmp; exit $$status

unit:
	$(GO) test -short -count=1 ./...

fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(CIFUZZ)

fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		ok=; for attempt in 1 2; do \
			if $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg >$$log 2>&1; then ok=1; break; fi; \
			if grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
				echo "fuzz $$pkg $$name: the fuzzing engine's own deadline race at -fuzztime (go.dev/issue/75804, fixed in Go 1.27), no failing input; again"; continue; \
			fi; break; \
		done; \
		if [ -z "$$ok" ]; then echo "fuzz $$pkg $$name FAILED:"; tail -n 40 $$log; exit 1; fi; \
	done; echo "fuzz: all targets passed"

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 3x ./sender ./e2e ./migstream
	$(GO) test -run '^$$' -bench BenchmarkLiveEpoch -benchtime 8x ./livecut
	$(GO) test -run '^$$' -bench BenchmarkTrackedEpoch -benchtime 5x ./livecut
	$(GO) test -run '^$$' -bench BenchmarkCaptureBySize -benchtime 1x -timeout 90m ./livecut
	DRSYNC_BENCH_MEMORY_MIB=512 $(GO) test -run '^$$' -bench BenchmarkSenderMemory -benchtime 1x -timeout 90m ./e2e
	$(GO) test -run '^$$' -bench BenchmarkWANTransport -benchtime 1x ./transport
	$(GO) test -tags ceph -run '^$$' -bench BenchmarkStoreApply -benchtime 3x ./replica/rbdstore

# drsync against QEMU's own migration (precopy + xbzrle; multifd + zstd;
# disks by drive-mirror to NBD) and rsync, over emulated WAN links: one
# table, about 15 minutes on 2 cores. WAN=100Mbits (or 1Gbits) runs one link.
WAN ?= .
bench-wan: deps
	$(GO) test -run '^$$' -bench '^BenchmarkWAN$$/$(WAN)' -benchtime 1x -timeout 90m ./e2e

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin .demo

# The binary, the systemd units (ExecStart pointed at BINDIR), the sysusers
# entry of the drsync account, the alerting rules, the dashboard and the
# example configurations (as *.example: existing configurations are never
# overwritten). DESTDIR stages it for a package.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DATADIR    ?= $(PREFIX)/share/drsync
SYSCONFDIR ?= /etc/drsync

install:
	$(GO) build -buildvcs=auto -trimpath -o $(BIN) ./cmd/drsync
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/drsync
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DATADIR)/prometheus $(DESTDIR)$(DATADIR)/grafana $(DESTDIR)$(SYSCONFDIR)
	for u in dist/systemd/*.service dist/systemd/*.timer; do \
		sed 's|/usr/local/bin/drsync|$(BINDIR)/drsync|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	install -D -m 0644 dist/systemd/drsync.sysusers $(DESTDIR)$(SYSUSERSDIR)/drsync.conf
	install -m 0644 dist/prometheus/drsync-rules.yml $(DESTDIR)$(DATADIR)/prometheus/
	install -m 0644 dist/grafana/drsync.json $(DESTDIR)$(DATADIR)/grafana/
	for c in testdata/configs/*.toml; do install -m 0640 $$c $(DESTDIR)$(SYSCONFDIR)/$$(basename $$c).example; done
	@echo "installed; then: systemd-sysusers; systemctl daemon-reload; see README \"Running it as a service\""
