# drsync: disaster-recovery replication for QEMU/KVM virtual machines.
#
#   make demo    protect a real running guest: live epochs over loopback QUIC into a replica
#   make test    everything CI runs: vet, unit, crash, fuzz (bounded) and end-to-end tests
#   make bench   benchmarks: sender pipeline, loopback transfer, stream parsing, live guest epochs
#   make bench-wan  drsync vs QEMU migration and rsync over emulated WAN links (one table)
#   make fuzz    longer fuzzing of every decoder (FUZZTIME per target)

GO        ?= go
BIN       := bin/drsync
FUZZTIME  ?= 60s
# Bounded fuzz run that make test includes.
CIFUZZ    ?= 4s
APT_PKGS  := qemu-utils qemu-system-x86 busybox-static iproute2 rsync

FUZZ_TARGETS := \
	./wire:FuzzDecode ./wire:FuzzDecodePayload \
	./journal:FuzzScan ./replica:FuzzRecover ./replica:FuzzParseManifest \
	./blockhash:FuzzRead ./sender:FuzzUnmarshalIndex \
	./nbd:FuzzParseStructuredChunk ./nbd:FuzzParseBlockStatusChunk ./nbd:FuzzParseOptionReply ./nbd:FuzzParseGreeting \
	./migstream:FuzzParse ./migstream:FuzzParseSkeleton ./pagecache:FuzzIndex ./epochctl:FuzzController \
	./stripe:FuzzParseHello ./stripe:FuzzChunks

SHELL := /bin/bash

.PHONY: all build deps test unit fuzz fuzz-ci bench bench-wan demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/drsync

# System packages the tests and the demo need: QEMU (and its tools) and the
# busybox the test guest is built with; iproute2 for the WAN emulator's namespaces;
# rsync, a baseline of the WAN benchmark.
deps:
	@missing=""; for c in qemu-img qemu-nbd qemu-system-x86_64 busybox ip rsync; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(APT_PKGS)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

test: deps
	$(GO) vet ./...
	@set -o pipefail; log=$$(mktemp); \
	$(GO) test -count=1 -timeout 30m ./... 2>&1 | tee $$log; status=$$?; \
	$(GO) test -race -short -count=1 -timeout 30m ./... 2>&1 | tee -a $$log || status=1; \
	$(MAKE) --no-print-directory fuzz-ci || status=1; \
	echo "packages: $$(grep -c '^ok' $$log) passed, $$(grep -c '^FAIL[[:space:]]' $$log) failed"; \
	rm -f $$log; exit $$status

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
	$(GO) test -run '^$$' -bench BenchmarkLossyWAN -benchtime 1x ./transport

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
