#!/usr/bin/env bash
# The appliance kernel: tinyconfig + kernel-config/clawos.config, bzImage only.
#
#   scripts/kernel.sh build            build (or find in the cache) the kernel for KERNEL_SRC
#   scripts/kernel.sh dir              print its build directory (no build)
#   scripts/kernel.sh embed CPIO OUT   link CPIO in as the built-in initramfs, copy bzImage to OUT
#                                      (CLAWOS_FORCE_RELINK=1: relink even if CPIO is unchanged)
#
# KERNEL_SRC: a kernel tarball (.tar.xz/.tar.gz) or an unpacked tree. Default,
# offline: Debian's /usr/src/linux-source-6.1.tar.xz. A tarball named like
# the pin (kernel-config/pin) must have the pinned sha256.
# Cache: $CACHE/kernel/<key>/, key = hash of (source, the fragment's option
# lines, this script's build settings). The build tree stays there, so embedding a new
# rootfs only relinks (the initramfs is the one thing that changes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
fragment=$here/kernel-config/clawos.config
pin=$here/kernel-config/pin
CACHE=${CACHE:-/var/cache/clawos}
KERNEL_SRC=${KERNEL_SRC:-/usr/src/linux-source-6.1.tar.xz}
jobs=${KERNEL_JOBS:-$(nproc)}
# Bump when a build setting below changes: it is part of the cache key.
recipe=clawos-kernel-3

say() { printf 'kernel: %s\n' "$*" >&2; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }
loud() {
    printf '\n==================================================================\n' >&2
    printf 'kernel: %s\n' "$@" >&2
    printf '==================================================================\n\n' >&2
}

pinned() { sed -n "s/^$1=//p" "$pin"; }

# Identify the source: sets src_id and src_kind.
identify() {
    [ -e "$KERNEL_SRC" ] || die "KERNEL_SRC=$KERNEL_SRC does not exist (install linux-source-6.1 with scripts/setup.sh, or pass a kernel tarball or tree)"
    if [ -d "$KERNEL_SRC" ]; then
        [ -f "$KERNEL_SRC/Makefile" ] && [ -f "$KERNEL_SRC/Kconfig" ] || die "$KERNEL_SRC is not a kernel source tree (no Makefile/Kconfig)"
        src_kind=tree
        # Path, size and mtime of every file: cheap, and changes with any edit.
        src_id="tree:$(cd "$KERNEL_SRC" && find . -path ./.git -prune -o -type f -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum | cut -c1-64)"
    else
        case $KERNEL_SRC in
        *.tar.xz | *.tar.gz | *.tar.bz2 | *.tar.zst | *.tar) ;;
        *) die "KERNEL_SRC=$KERNEL_SRC is neither a directory nor a .tar(.xz/.gz/.bz2/.zst) tarball" ;;
        esac
        src_kind=tarball
        local sum
        sum=$(sha256sum "$KERNEL_SRC" | cut -c1-64)
        if [ "$(basename "$KERNEL_SRC")" = "$(pinned tarball)" ]; then
            [ "$sum" = "$(pinned sha256)" ] || die "$KERNEL_SRC has sha256 $sum, the pin (kernel-config/pin) says $(pinned sha256): refusing a tampered or truncated tarball"
            say "$KERNEL_SRC matches the pinned sha256 of Linux $(pinned version)"
        fi
        src_id="tarball:$sum"
    fi
}

# The fragment's options only (CONFIG_X=... and "# CONFIG_X is not set", as
# check.sh reads them): editing a comment does not cost a rebuild.
key() {
    { echo "$recipe"; echo "$src_id"; grep -E '^(CONFIG_[^=]*=|# CONFIG_[^ ]* is not set$)' "$fragment"; } | sha256sum | cut -c1-16
}

# Unpacked source for a tarball (shared by every config), or the tree itself.
source_tree() {
    if [ "$src_kind" = tree ]; then
        echo "$KERNEL_SRC"
        return
    fi
    local dir=$CACHE/kernel/src/${src_id#tarball:}
    if [ ! -f "$dir/.unpacked" ]; then
        say "unpacking $KERNEL_SRC into $dir"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        tar -xf "$KERNEL_SRC" -C "$dir.tmp" --strip-components=1
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
        touch "$dir/.unpacked"
    fi
    echo "$dir"
}

version_of() {
    make -s -C "$1" kernelversion 2>/dev/null
}

# Reproducible kernel builds: fixed build identity; pahole without -j
# (parallel BTF encoding in pahole 1.24 emits types in a varying order); and
# no rustc: the kernel has no Rust, but 6.12 records the version of whatever
# rustc is in PATH in .config (so in /proc/config.gz), and with rustup that
# depends on the caller's directory and RUSTUP_TOOLCHAIN.
kmake() {
    local src=$1
    shift
    local stamp
    stamp=$(date -u -d "@$(stat -c %Y "$src/Makefile")" '+%a %b %e %H:%M:%S UTC %Y')
    nice -n 10 make -C "$src" O="$build" ARCH=x86_64 \
        KBUILD_BUILD_USER=clawos KBUILD_BUILD_HOST=clawos \
        KBUILD_BUILD_VERSION=1 KBUILD_BUILD_TIMESTAMP="$stamp" \
        PAHOLE="$here/scripts/pahole-serial" RUSTC=false BINDGEN=false "$@"
}

placeholder_cpio() {
    # The first build links a cpio with only /dev/console; `embed` swaps in
    # the rootfs. gen_init_cpio is the kernel's own tool (usr/gen_init_cpio.c).
    local src=$1 out=$2
    mkdir -p "$build/clawos-tools"
    cc -O2 -o "$build/clawos-tools/gen_init_cpio" "$src/usr/gen_init_cpio.c"
    printf 'dir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\n' >"$build/clawos-tools/placeholder.list"
    "$build/clawos-tools/gen_init_cpio" -t 0 "$build/clawos-tools/placeholder.list" >"$out"
}

do_build() {
    identify
    local k src version
    k=$(key)
    dir=$CACHE/kernel/$k
    build=$dir/build
    mkdir -p "$dir"
    exec 9>"$dir/lock"
    flock 9
    if [ -f "$dir/built" ]; then
        say "cached: Linux $(cat "$dir/version") for $KERNEL_SRC in $dir"
        echo "$dir"
        return
    fi
    src=$(source_tree)
    version=$(version_of "$src")
    [ -n "$version" ] || die "cannot read the kernel version of $src"
    case $version in
    6.1.* | 6.6.* | 6.12.*) ;;
    *) say "warning: Linux $version is not one of the tested series (6.1, 6.6, 6.12)" ;;
    esac
    if [ "$src_kind" = tarball ] && [ "$(basename "$KERNEL_SRC")" != "$(pinned tarball)" ]; then
        loud "building Linux $version from $KERNEL_SRC" \
            "NOTE: this is not the pinned Linux $(pinned version) (kernel-config/pin)." \
            "      Pass KERNEL_SRC=/path/to/$(pinned tarball) to build the pinned kernel." \
            "config: tinyconfig + kernel-config/clawos.config, cache $dir"
    else
        loud "building Linux $version from $KERNEL_SRC" "config: tinyconfig + kernel-config/clawos.config, cache $dir"
    fi
    rm -rf "$build"
    mkdir -p "$build"
    placeholder_cpio "$src" "$build/clawos-rootfs.cpio"
    kmake "$src" -s tinyconfig >/dev/null
    { cat "$fragment"; echo "CONFIG_INITRAMFS_SOURCE=\"$build/clawos-rootfs.cpio\""; } >>"$build/.config"
    kmake "$src" -s olddefconfig >&2
    "$here/kernel-config/check.sh" "$fragment" "$build/.config" >&2
    local started=$SECONDS
    say "make -j$jobs bzImage (nice 10); this takes 10-30 minutes on 2 cores"
    kmake "$src" -j"$jobs" bzImage >"$dir/build.log" 2>&1 || {
        tail -n 60 "$dir/build.log" >&2
        die "building Linux $version failed; whole log in $dir/build.log"
    }
    "$here/kernel-config/check.sh" "$fragment" "$build/.config" >&2
    echo "$version" >"$dir/version"
    echo "$KERNEL_SRC" >"$dir/source"
    touch "$dir/built"
    say "built Linux $version in $((SECONDS - started)) s: $build/arch/x86/boot/bzImage"
    echo "$dir"
}

do_embed() {
    local cpio=$1 out=$2
    dir=$(do_build)
    build=$dir/build
    exec 9>"$dir/lock"
    flock 9
    local src
    identify
    src=$(source_tree)
    if ! cmp -s "$cpio" "$build/clawos-rootfs.cpio"; then
        say "linking the rootfs into Linux $(cat "$dir/version") (only the initramfs and vmlinux are rebuilt)"
        cp "$cpio" "$build/clawos-rootfs.cpio"
    elif [ "${CLAWOS_FORCE_RELINK:-0}" = 1 ]; then
        # The reproducibility test: relink although nothing changed.
        say "relinking Linux $(cat "$dir/version") although the rootfs is unchanged (CLAWOS_FORCE_RELINK=1)"
        touch "$build/clawos-rootfs.cpio"
    fi
    kmake "$src" -j"$jobs" bzImage >"$dir/embed.log" 2>&1 || {
        tail -n 60 "$dir/embed.log" >&2
        die "relinking Linux $(cat "$dir/version") with $cpio failed; whole log in $dir/embed.log"
    }
    "$here/kernel-config/check.sh" "$fragment" "$build/.config" >&2
    mkdir -p "$(dirname "$out")"
    cp "$build/arch/x86/boot/bzImage" "$out.tmp"
    mv "$out.tmp" "$out"
    cat "$dir/version"
}

case ${1:-} in
build) do_build ;;
dir) identify; echo "$CACHE/kernel/$(key)" ;;
embed) [ $# -eq 3 ] || die "usage: $0 embed CPIO OUT"; do_embed "$2" "$3" ;;
-h | --help | help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
*) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
