# ClawOS WASM runtime bridge. `make help` lists the targets.

SHELL := bash
# Builds are cached outside the checkout (cargo keeps them incremental and
# keyed by content), so a fresh clone on the same machine rebuilds little.
CACHE ?= $(shell if [ -w /var/cache ]; then echo /var/cache/clawos; else echo $(HOME)/.cache/clawos; fi)
export CARGO_TARGET_DIR ?= $(CACHE)/target
TOOLS_TARGET := $(CACHE)/tools-target
export TOOLS_DIR := $(TOOLS_TARGET)/wasm32-wasip2/release
CARGO ?= cargo
# The appliance kernel's source: a tarball or tree (scripts/kernel.sh).
# Default, offline: Debian's linux-source-6.1; the pin is in kernel-config/pin.
export KERNEL_SRC ?= /usr/src/linux-source-6.1.tar.xz
export CACHE
# Which checkout builds: checkouts share the cache, and the sample tools'
# build (tests/tool-artifacts) runs again when this changes.
export CLAWOS_CHECKOUT := $(CURDIR)
# The kernel matrix: `make test` also runs the tests that depend on the
# kernel on a second one (Debian's 6.12 by default), from its own build
# directory. The appliance's own kernel is pinned to 6.6 (kernel-config/pin),
# between the two.
MATRIX_KERNEL_SRC ?= /usr/src/linux-source-6.12.tar.xz
# make run: the appliance's remote API (guest port 7443) on this machine's loopback.
API_PORT ?= 7443
MATRIX_BUILD := build/matrix
# The e2e tests whose outcome depends on the kernel: the platform, the
# monitors (their overhead test aside: it takes a guest of its own, counted
# by instructions), the sandbox layers, AppArmor, the layer matrix, the
# sample tools, the field offsets against the kernel's BTF, and the
# per-tool storage quotas (ext4 project quotas) and devices in workers.
MATRIX_TESTS := --test platform --test monitor --test sandbox --test apparmor \
	--test layers --test tools --test kernel_layout --test network --test storage \
	--test devices

.PHONY: help setup build tools ebpf run demo stop test unit-test seccomp-audit lint bench bench-smoke bench-smoke-guest fuzz clean kernel image qemu-test qemu-test-matrix matrix-image e2e-rest e2e-second e2e-matrix e2e-bench-smoke print-matrix-kernel-src

help:
	@echo "make image      the appliance disk image build/clawos.img (UEFI, GPT: ESP + ClawFS data partition)"
	@echo "make run        boot build/clawos.img in QEMU under OVMF on this terminal (Ctrl-A X quits)"
	@echo "make test       everything CI checks: format, clippy -D warnings, unit and daemon tests, seccomp-audit, bench-smoke, qemu-test, bench-smoke-guest, qemu-test-matrix"
	@echo "make seccomp-audit  the daemon suites under filters that log instead of kill; the kernel must log nothing"
	@echo "make qemu-test  build what is missing and boot the appliance in QEMU: the e2e suite (tests/e2e)"
	@echo "make qemu-test-matrix  the kernel-dependent e2e tests on the second kernel (MATRIX_KERNEL_SRC=$(MATRIX_KERNEL_SRC))"
	@echo "make kernel     only the appliance kernel (KERNEL_SRC=tarball or tree; default $(KERNEL_SRC))"
	@echo "make demo       start clawos-wasm-daemon on this host (socket build/run/bridge.sock) and run a sample tool"
	@echo "make stop       stop the daemon started by make demo"
	@echo "make bench      benchmarks: the in-process engine and host-call costs, then in the booted guest the sandboxed path against wasmtime run and crun, alone and under load"
	@echo "make bench-smoke  every benchmark built, the host ones run briefly (part of make test)"
	@echo "make bench-smoke-guest  the guest benchmark, briefly, in the booted appliance (part of make test)"
	@echo "make fuzz       the fuzz targets (fuzz/, cargo-fuzz on a pinned nightly), FUZZ_TIME seconds each (default 60); docs/fuzzing.md"
	@echo "make build      release binaries: clawos-wasm-daemon, clawosctl"
	@echo "make tools      the sample tools, as wasm32-wasip2 components"
	@echo "make ebpf       the eBPF LSM monitors (ebpf/programs; builds bpf-linker once)"
	@echo "make setup      install the pinned Rust toolchain and Debian packages (run by the others)"
	@echo "cache: $(CACHE)"

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked -p clawos-bridge --bins

tools: setup
	cd tests/tools && $(CARGO) build --release --locked --target wasm32-wasip2 --target-dir $(TOOLS_TARGET)

demo: build tools
	scripts/demo.sh

kernel: setup
	scripts/kernel.sh build >/dev/null

ebpf: setup
	scripts/ebpf.sh >/dev/null

image: build tools ebpf
	image/build.sh

run: image
	@echo "make run: the appliance's remote API will be on tls://127.0.0.1:$(API_PORT) (QEMU user networking, restrict=on)."
	@echo "  once the console says 'clawos: ready', from another terminal:"
	@echo "  $(CARGO_TARGET_DIR)/release/clawosctl --connect tls://127.0.0.1:$(API_PORT) --ca build/keys/ca.pem \\"
	@echo "      --cert build/keys/operator.pem --key build/keys/operator.key status"
	@echo "  (the console has no shell; Ctrl-A X quits QEMU; docs/deploy.md)"
	qemu/run.sh --api-port $(API_PORT) build/clawos.img

stop:
	@if [ -f build/run/daemon.pid ] && kill -0 $$(cat build/run/daemon.pid) 2>/dev/null; then \
		kill -TERM $$(cat build/run/daemon.pid) && echo "stopped clawos-wasm-daemon (pid $$(cat build/run/daemon.pid))"; \
	else echo "no daemon from make demo is running"; fi

lint: setup
	$(CARGO) fmt --all -- --check
	cd tests/tools && $(CARGO) fmt --all -- --check
	cd ebpf/programs && $(CARGO) fmt --all -- --check
	scripts/check-feature-unity.sh
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings
	cd tests/tools && $(CARGO) clippy --release --locked --target wasm32-wasip2 --target-dir $(TOOLS_TARGET) -- -D warnings

unit-test: lint
	$(CARGO) test --release --locked --workspace --exclude clawos-e2e
	scripts/seccomp-audit.sh
	$(MAKE) --no-print-directory bench-smoke

# Every benchmark is built, and the host ones run a short pass, so that
# `make bench` cannot rot unseen (its figures come from make bench only).
bench-smoke: setup
	BENCH_ITERATIONS=20 BENCH_ROUNDS=1 $(CARGO) bench --locked -p clawos-bridge --bench runtime --bench hostio
	$(CARGO) bench --locked -p clawos-e2e --bench guest --no-run

# The daemon suites again, against the test-only audit build of the daemon
# (seccomp logs instead of killing): the kernel must log no call.
seccomp-audit: setup
	scripts/seccomp-audit.sh

# The e2e suite boots QEMU one guest at a time (serial_test); --nocapture
# shows the boot times.
# tests/inguest holds the test-only programs the suite puts in the guest on
# an extra initramfs (the layer matrix); the image never contains them.
qemu-test: image
	$(CARGO) build --release --locked -p clawos-inguest
	CLAWOS_MONITOR_FLOOR=$$(scripts/ebpf.sh --floor) $(CARGO) test --release --locked -p clawos-e2e -- --nocapture

print-matrix-kernel-src:
	@echo $(MATRIX_KERNEL_SRC)

# The same image on the matrix's second kernel, in build/matrix, and the
# kernel-dependent part of the suite against it.
qemu-test-matrix: matrix-image
	$(CARGO) build --release --locked -p clawos-inguest
	$(MAKE) --no-print-directory e2e-matrix

matrix-image: build tools ebpf
	KERNEL_SRC=$(MATRIX_KERNEL_SRC) image/build.sh --out $(MATRIX_BUILD)

# The guest benchmark's smoke pass: one boot, every case and check of its
# `make bench` run (no error but EAGAIN, nothing left behind) with 3
# samples and 1 s windows at N = 1 and 2: too few to quote. The wasmtime
# CLI is built once into the cache (about 10 minutes).
bench-smoke-guest: image
	$(CARGO) build --release --locked -p clawos-inguest
	$(MAKE) --no-print-directory e2e-bench-smoke

# What CI runs. The e2e part: first, one guest at a time, the tests that
# read a share of the guest's CPU back (the monitors' overhead on 6.1, the
# 5% cpu.max of the sandbox and of the layer matrix on both kernels: with
# another guest beside it, a guest's vCPUs lose host time and a 5% share
# read 1.4%); then two guests at a time: the rest of the 6.1 suite beside
# the guest benchmark's smoke pass and the rest of the 6.12 matrix. A
# guest keeps about one of this machine's two cores busy (the host was
# 45-70% idle while the suite ran alone, 2026-12-03). Each half's output
# is printed whole when it ends (--output-sync).
TIMED_E2E := overhead p15_limits_and_they_bite each_layer_alone
test: unit-test image matrix-image
	$(CARGO) build --release --locked -p clawos-inguest
	CLAWOS_MONITOR_FLOOR=$$(scripts/ebpf.sh --floor) $(CARGO) test --release --locked -p clawos-e2e \
		--test monitor --test sandbox --test layers -- --nocapture $(TIMED_E2E)
	CLAWOS_E2E_BUILD=$(CURDIR)/$(MATRIX_BUILD) $(CARGO) test --release --locked -p clawos-e2e \
		--test sandbox --test layers -- --nocapture $(filter-out overhead,$(TIMED_E2E))
	$(MAKE) --no-print-directory -j2 --output-sync=recurse e2e-rest e2e-second

# The steps above, on images and harness built already (internal).
e2e-rest:
	$(CARGO) test --release --locked -p clawos-e2e -- --nocapture $(addprefix --skip ,$(TIMED_E2E))
e2e-second:
	$(MAKE) --no-print-directory e2e-bench-smoke
	$(MAKE) --no-print-directory e2e-matrix SKIP_E2E="$(filter-out overhead,$(TIMED_E2E))"
e2e-matrix:
	CLAWOS_E2E_BUILD=$(CURDIR)/$(MATRIX_BUILD) $(CARGO) test --release --locked -p clawos-e2e $(MATRIX_TESTS) -- --nocapture $(addprefix --skip ,overhead $(SKIP_E2E))
e2e-bench-smoke:
	CLAWOS_WASMTIME_CLI=$$(scripts/wasmtime-cli.sh) CLAWOS_BENCH_ARGS="--samples 3 --load-secs 1 --clients 1,2" \
		$(CARGO) bench --locked -p clawos-e2e --bench guest

# The guest part boots the image with clawos-guest-bench, the wasmtime CLI
# of the bridge's version (built once into the cache) and crun, with a
# PostgreSQL server on this host's loopback forwarded into the guest
# (docs/benchmarks.md).
bench: image
	$(CARGO) bench --locked -p clawos-bridge --bench runtime
	$(CARGO) bench --locked -p clawos-bridge --bench hostio
	$(CARGO) build --release --locked -p clawos-inguest
	CLAWOS_WASMTIME_CLI=$$(scripts/wasmtime-cli.sh) $(CARGO) bench --locked -p clawos-e2e --bench guest

# Coverage-guided fuzzing; corpora, crash files and logs under $(CACHE).
fuzz: setup
	scripts/fuzz.sh

clean:
	rm -rf build
	$(CARGO) clean
