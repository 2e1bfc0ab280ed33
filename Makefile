# ClawOS WASM runtime bridge. `make help` lists the targets.

SHELL := bash
# Builds are cached outside the checkout (cargo keeps them incremental and
# keyed by content), so a fresh clone on the same machine rebuilds little.
CACHE ?= $(shell if [ -w /var/cache ]; then echo /var/cache/clawos; else echo $(HOME)/.cache/clawos; fi)
export CARGO_TARGET_DIR ?= $(CACHE)/target
TOOLS_TARGET := $(CACHE)/tools-target
export TOOLS_DIR := $(TOOLS_TARGET)/wasm32-wasip2/release
CARGO ?= cargo

.PHONY: help setup build tools run stop test lint bench clean

help:
	@echo "make run     build, start clawos-wasm-daemon (socket build/run/bridge.sock) and run a sample tool"
	@echo "make stop    stop the daemon started by make run"
	@echo "make test    everything CI checks: format, clippy -D warnings, unit and daemon tests"
	@echo "make bench   benchmarks against bare wasmtime (figures on stdout)"
	@echo "make build   release binaries: clawos-wasm-daemon, clawosctl"
	@echo "make tools   the sample tools, as wasm32-wasip2 components"
	@echo "make setup   install the pinned Rust toolchain and Debian packages (run by the others)"
	@echo "cache: $(CACHE)"

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked -p clawos-bridge --bins

tools: setup
	cd tests/tools && $(CARGO) build --release --locked --target wasm32-wasip2 --target-dir $(TOOLS_TARGET)

run: build tools
	scripts/demo.sh

stop:
	@if [ -f build/run/daemon.pid ] && kill -0 $$(cat build/run/daemon.pid) 2>/dev/null; then \
		kill -TERM $$(cat build/run/daemon.pid) && echo "stopped clawos-wasm-daemon (pid $$(cat build/run/daemon.pid))"; \
	else echo "no daemon from make run is running"; fi

lint: setup
	$(CARGO) fmt --all -- --check
	cd tests/tools && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings
	cd tests/tools && $(CARGO) clippy --release --locked --target wasm32-wasip2 --target-dir $(TOOLS_TARGET) -- -D warnings

test: lint
	$(CARGO) test --release --locked --workspace

bench: setup
	$(CARGO) bench --locked -p clawos-bridge --bench runtime
	$(CARGO) bench --locked -p clawos-bridge --bench hostio

clean:
	rm -rf build
	$(CARGO) clean
