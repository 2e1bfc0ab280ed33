#!/usr/bin/env bash
# Installs what building and testing the bridge needs on a fresh Debian 12
# machine: a C toolchain and make from Debian, PostgreSQL (the network tests
# start their own throwaway server), and the pinned Rust toolchain
# (rust-toolchain.toml) with its wasm32-wasip2 target through rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v git >/dev/null 2>&1 || missing+=(git)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        say "need root to install packages (run as root or install ${missing[*]} yourself)" >&2
        exit 1
    fi
    # The tests run their own server on 127.0.0.1:5432; Debian's default
    # cluster would take that port, so none is created.
    mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
        echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v rustup >/dev/null 2>&1; then
    say "rustup is not installed; Debian 12 does not package it. Install it from rustup.rs, then run this again." >&2
    exit 1
fi

channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
targets=$(sed -n 's/^targets *= *\[\(.*\)\]/\1/p' rust-toolchain.toml | tr -d '" ' | tr ',' ' ')
components=$(sed -n 's/^components *= *\[\(.*\)\]/\1/p' rust-toolchain.toml | tr -d '" ' | tr ',' ' ')
args=()
for t in $targets; do args+=(-t "$t"); done
for c in $components; do args+=(-c "$c"); done
if rustup run "$channel" rustc --print target-libdir --target wasm32-wasip2 >/dev/null 2>&1 \
    && [ -d "$(rustup run "$channel" rustc --print target-libdir --target wasm32-wasip2)" ] \
    && rustup run "$channel" cargo clippy --version >/dev/null 2>&1; then
    say "rust $channel with ${targets} is installed"
else
    say "installing rust $channel with ${targets} (${components})"
    rustup toolchain install "$channel" --profile minimal "${args[@]}"
fi
