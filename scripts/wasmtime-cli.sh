#!/usr/bin/env bash
# Prints the path of the wasmtime CLI the guest benchmark compares with,
# building it first if the cache lacks it: the same wasmtime version as the
# bridge (Cargo.lock), so that `wasmtime run` loads the bridge's `.cwasm`.
# Built from crates.io with only what `run` of a precompiled component
# needs; kept in $CACHE/wasmtime-cli/<version> (about 10 minutes once).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CACHE:-/var/cache/clawos}
say() { printf 'wasmtime-cli: %s\n' "$*" >&2; }
version=$(awk '/^name = "wasmtime"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$here/Cargo.lock")
[ -n "$version" ] || { say "error: no wasmtime in Cargo.lock"; exit 1; }
root=$CACHE/wasmtime-cli/$version
if [ ! -x "$root/bin/wasmtime" ]; then
    say "building wasmtime-cli $version into $root (once; about 10 minutes on 2 cores)"
    CARGO_TARGET_DIR=$CACHE/wasmtime-cli/target cargo install wasmtime-cli --version "=$version" --locked \
        --no-default-features --features run,component-model,cranelift,pooling-allocator \
        --root "$root" >&2
fi
echo "$root/bin/wasmtime"
