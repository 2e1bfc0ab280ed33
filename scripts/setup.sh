#!/usr/bin/env bash
# Installs what building and testing the bridge needs on a fresh Debian 12
# machine: the Debian packages below (only those missing), and the pinned
# Rust toolchain (rust-toolchain.toml) with its wasm32-wasip2 target through
# rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

# Debian packages, each with what needs it.
packages=(
    gcc libc6-dev make git                   # C toolchain (the kernel, build scripts of crates)
    bc flex bison libelf-dev libssl-dev cpio # building the kernel
    dwarves                                  # pahole: BTF for the kernel (DEBUG_INFO_BTF)
    xz-utils zstd                            # kernel tarballs; zstd-compressed bzImage
    linux-source-6.1 linux-source-6.12       # offline kernel sources (6.1 default, 6.12 for the matrix)
    busybox-static apparmor                  # the rootfs: busybox, apparmor_parser
    libseccomp-dev                           # the seccomp layer (libseccomp crate)
    e2fsprogs dosfstools mtools gdisk        # the disk image: ext4 data, FAT ESP, GPT
    qemu-system-x86 ovmf                     # booting the appliance (make run, make qemu-test)
    postgresql                               # the network tests' real server (started by the tests)
    dnsmasq-base                             # the network e2e test's real DNS server (started by the test on 127.0.0.1)
    crun                                     # the guest benchmark's container runtime (make bench)
    socat                                    # the guest benchmark's PostgreSQL forward, one relay per connection
    llvm-22-dev libzstd-dev zlib1g-dev       # bpf-linker (the eBPF monitors), against rustc's own LLVM 22
    bpftool                                  # the e2e tests list the daemon's programs with it
)
missing=()
for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
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
    extra=()
    # qemu-system-x86 7.2 conflicts with a newer qemu-utils from backports:
    # install Debian 12's qemu-utils with it (a downgrade when backports' is there).
    [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] && extra=(qemu-utils/bookworm --allow-downgrades)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}"
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
    && rustup run "$channel" cargo clippy --version >/dev/null 2>&1 \
    && [ -d "$(rustup run "$channel" rustc --print sysroot)/lib/rustlib/src/rust/library/core" ]; then
    say "rust $channel with ${targets} is installed"
else
    say "installing rust $channel with ${targets} (${components})"
    rustup toolchain install "$channel" --profile minimal "${args[@]}"
fi
