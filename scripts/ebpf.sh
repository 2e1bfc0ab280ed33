#!/usr/bin/env bash
# Builds the bridge's eBPF monitors (ebpf/programs) and prints the path of
# the object the daemon loads. The programs are Rust for bpfel-unknown-none:
# the pinned rustc (rust-toolchain.toml) builds core itself (-Z build-std,
# allowed on a stable rustc by RUSTC_BOOTSTRAP=1, only for this build), and
# bpf-linker links them with LLVM 22, the LLVM of that rustc (Debian's
# llvm-22-dev). bpf-linker is built once into $CACHE/bpf-linker (about 3
# minutes); the programs build incrementally in $CACHE/ebpf-target.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CACHE:-/var/cache/clawos}
say() { printf 'ebpf: %s\n' "$*" >&2; }

LINKER_VERSION=0.13.0
LLVM=/usr/lib/llvm-22
[ -x "$LLVM/bin/llvm-config" ] || { say "error: $LLVM/bin/llvm-config missing: install llvm-22-dev (scripts/setup.sh)"; exit 1; }
rustc_llvm=$(rustc --version --verbose | sed -n 's/^LLVM version: //p')
llvm_version=$("$LLVM/bin/llvm-config" --version)
[ "${rustc_llvm%%.*}" = "${llvm_version%%.*}" ] ||
    { say "error: rustc uses LLVM $rustc_llvm but $LLVM is $llvm_version: bpf-linker must match rustc's LLVM"; exit 1; }

linker_root=$CACHE/bpf-linker/$LINKER_VERSION-llvm${llvm_version%%.*}
if [ ! -x "$linker_root/bin/bpf-linker" ]; then
    say "building bpf-linker $LINKER_VERSION against LLVM $llvm_version into $linker_root (once)"
    LLVM_PREFIX=$LLVM LLVM_SYS_221_PREFIX=$LLVM CARGO_TARGET_DIR=$CACHE/bpf-linker/target \
        cargo install bpf-linker --version "=$LINKER_VERSION" --locked \
        --no-default-features --features llvm-22 --root "$linker_root" >&2
fi

# --floor: the test-only build whose file hooks return right after the
# cgroup check (feature `floor`), for the floor of the e2e overhead figures.
# Never in the image.
target=$CACHE/ebpf-target features=()
if [ "${1:-}" = --floor ]; then
    target=$CACHE/ebpf-target-floor features=(--features floor)
fi
(
    cd "$here/ebpf/programs"
    PATH=$linker_root/bin:$PATH RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$target \
        cargo build --release --locked --target bpfel-unknown-none -Z build-std=core "${features[@]}" >&2
)
echo "$target/bpfel-unknown-none/release/clawos-monitor"
