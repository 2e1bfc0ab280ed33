#!/usr/bin/env bash
# Builds the appliance disk image, without root privileges for the image
# itself and without loop mounts:
#   rootfs cpio  (gen_init_cpio list: busybox, init, daemon, clawosctl,
#                 apparmor_parser, their libraries; sorted, fixed mtimes)
#   kernel       scripts/kernel.sh, the cpio linked in as built-in initramfs
#   data.ext4    the ClawFS partition (mkfs.ext4 -d): the sample tools
#                installed and precompiled by the real daemon on this host
#   esp.vfat     \EFI\BOOT\BOOTX64.EFI = the kernel (EFI stub)
#   clawos.img   GPT: ESP + data, fixed GUIDs
#   vmlinux.btf  the kernel's BTF (not in the image; for the e2e suite)
# Same inputs, same bytes: SOURCE_DATE_EPOCH (default: the last commit's
# date) for every timestamp, fixed UUIDs and seeds, sorted archives.
#
# Usage: image/build.sh [--out DIR]   (default DIR: build/; run through make image)
# Env: CARGO_TARGET_DIR (release binaries), TOOLS_DIR (sample .wasm),
#      KERNEL_SRC, CACHE (see scripts/kernel.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/build
case ${1:-} in
--out) out=$(realpath -m "$2") ;;
"") ;;
-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
esac
: "${CARGO_TARGET_DIR:?run through make image (CARGO_TARGET_DIR)}"
: "${TOOLS_DIR:?run through make image (TOOLS_DIR)}"
bin=$CARGO_TARGET_DIR/release
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C

# Fixed identities (image/README.md lists them).
DISK_GUID=8f1d3c2a-6b7e-4f10-9a5d-2c4e6b8a0d11
ESP_PART_GUID=1b6e2f4a-3c5d-4e7f-8a9b-0c1d2e3f4a51
DATA_PART_GUID=7d0a9b8c-5e4f-4a3b-9c2d-1e0f2a3b4c61
DATA_FS_UUID=3f6c8a1e-2b4d-4c6e-8f0a-1b3c5d7e9f21
DATA_HASH_SEED=9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c31
DATA_LABEL=clawos-data
ESP_VOLID=C1A05E5F
ESP_MIB=64
DATA_MIB=256
TOOLS=(hello echo exerciser misbehave memgrow spinner hostio probe noop)
# The remote API's keys (clawosctl keys init): made on the first build and
# kept, so that every image built from this checkout trusts the same
# clients and builds stay byte for byte the same. KEYS=DIR uses an
# operator's own (server.pem, server.key, clients-ca.pem; docs/remote.md).
KEYS=${KEYS:-$here/build/keys}

say() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

for b in clawos-wasm-daemon clawosctl clawos-seccomp-probe; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing (make build)"
done
for t in "${TOOLS[@]}"; do
    [ -f "$TOOLS_DIR/$t.wasm" ] || die "$TOOLS_DIR/$t.wasm is missing (make tools)"
done
for c in busybox:busybox-static apparmor_parser:apparmor mkfs.ext4:e2fsprogs debugfs:e2fsprogs \
    mkfs.vfat:dosfstools mcopy:mtools sgdisk:gdisk; do
    command -v "${c%%:*}" >/dev/null || die "${c%%:*} is missing: install ${c#*:} (scripts/setup.sh does)"
done
busybox_bin=$(command -v busybox)
file -L "$busybox_bin" 2>/dev/null | grep -q 'statically linked' || ldd "$busybox_bin" 2>&1 | grep -q 'not a dynamic' ||
    die "$busybox_bin is not static: install busybox-static"

work=$(mktemp -d "${TMPDIR:-/tmp}/clawos-image.XXXXXX")
daemon_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
root=$work/root data=$work/data
mkdir -p "$root" "$data" "$out"

# ---- kernel (cached; built on the first run) ----
kdir=$("$here/scripts/kernel.sh" build)
kversion=$(cat "$kdir/version")
ksource=$(cat "$kdir/source")
gen_init_cpio=$kdir/build/clawos-tools/gen_init_cpio

# ---- rootfs ----
say "rootfs for Linux $kversion"
for d in bin sbin usr/bin usr/sbin lib lib64 etc/clawos etc/apparmor.d root proc sys dev run tmp var/lib/clawos \
    sys/kernel/security sys/fs/cgroup sys/fs/bpf; do
    mkdir -p "$root/$d"
done
install -m 0755 "$busybox_bin" "$root/bin/busybox"
while read -r applet; do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done < <("$busybox_bin" --list-full)
for s in poweroff reboot halt; do
    rm -f "$root/sbin/$s"
    install -m 0755 "$here/image/shutdown" "$root/sbin/$s"
done
sed "s/@DATA_UUID@/$DATA_FS_UUID/" "$here/image/init" >"$root/init"
chmod 0755 "$root/init"
install -m 0644 "$here/image/profile" "$root/etc/profile"
# The repository's defaults, with the remote API on (docs/remote.md).
sed '/^\[remote\]/,/^\[/ s/^listen = ""$/listen = "0.0.0.0:7443"/' "$here/config/daemon.toml" >"$root/etc/clawos/daemon.toml"
grep -qx 'listen = "0.0.0.0:7443"' "$root/etc/clawos/daemon.toml" || die "config/daemon.toml has no [remote] listen = \"\" to turn on"
chmod 0644 "$root/etc/clawos/daemon.toml"
# The network: clawos-network (init runs it; DHCP through busybox udhcpc,
# whose hook calls it back) and config/network.conf as its documentation.
install -D -m 0755 "$here/image/network" "$root/usr/sbin/clawos-network"
install -D -m 0755 "$here/image/udhcpc.script" "$root/usr/share/udhcpc/default.script"
install -D -m 0644 "$here/config/network.conf" "$root/usr/share/clawos/network.conf.example"
install -m 0644 "$here/config/limits.toml" "$root/etc/clawos/limits.toml"
install -m 0644 "$here/config/monitor-rules.toml" "$root/etc/clawos/monitor-rules.toml"
# The eBPF monitors (built by make ebpf; a no-op rebuild here).
install -D -m 0644 "$("$here/scripts/ebpf.sh")" "$root/usr/lib/clawos/clawos-monitor.o"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
# Root's password is locked (the console shell needs none). The file is
# there so that the AppArmor tests prove a read of it is refused.
printf 'root:*:0:0:99999:7:::\n' >"$root/etc/shadow"
chmod 0600 "$root/etc/shadow"
# Name resolution for tools goes through the daemon's resolver (egress
# policy allows "localhost" by default): the loopback names it needs.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf 'clawos\n' >"$root/etc/hostname"
for b in clawos-wasm-daemon clawosctl clawos-seccomp-probe; do
    strip --strip-debug -o "$root/usr/bin/$b" "$bin/$b"
done
install -m 0755 "$(command -v apparmor_parser)" "$root/sbin/apparmor_parser"
# AppArmor profiles (image/apparmor.d; init loads every file there), and the
# feature ABI they declare (abi <abi/3.0>), from the same apparmor package
# as the parser.
cp -r "$here/image/apparmor.d/." "$root/etc/apparmor.d/"
# The worker's device rules, from the shipped config's [devices] list (init
# writes them again from /etc/clawos/daemon.toml at boot).
"$bin/clawosctl" apparmor-devices --config "$here/config/daemon.toml" >"$root/etc/apparmor.d/clawos.d/devices" ||
    die "clawosctl apparmor-devices could not read config/daemon.toml"
[ -f /etc/apparmor.d/abi/3.0 ] || die "/etc/apparmor.d/abi/3.0 is missing: install apparmor (scripts/setup.sh does)"
install -D -m 0644 /etc/apparmor.d/abi/3.0 "$root/etc/apparmor.d/abi/3.0"
# Shared libraries of every dynamic executable, at the paths the loader looks in.
for exe in "$root/usr/bin/clawos-wasm-daemon" "$root/usr/bin/clawosctl" "$root/usr/bin/clawos-seccomp-probe" "$root/sbin/apparmor_parser"; do
    ldd "$exe" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
done
{
    echo "CLAWOS_NAME=ClawOS"
    echo "CLAWOS_VERSION=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "CLAWOS_KERNEL=$kversion"
    echo "CLAWOS_KERNEL_SOURCE=$(basename "$ksource")"
    echo "CLAWOS_KERNEL_PINNED=$(sed -n 's/^version=//p' "$here/kernel-config/pin")"
    echo "CLAWOS_KERNEL_CONFIG_SHA256=$(sha256sum "$here/kernel-config/clawos.config" | cut -c1-64)"
    echo "CLAWOS_BUILD_EPOCH=$SOURCE_DATE_EPOCH"
} >"$root/etc/clawos-release"
cp "$root/etc/clawos-release" "$work/clawos-release"

# gen_init_cpio list: sorted paths, modes from the staging tree, owner root.
(
    cd "$root"
    find . -mindepth 1 | sed 's|^\./||' | sort | while read -r p; do
        mode=$(stat -c %a "$p")
        if [ -L "$p" ]; then
            echo "slink /$p $(readlink "$p") 777 0 0"
        elif [ -d "$p" ]; then
            echo "dir /$p $mode 0 0"
        else
            echo "file /$p $root/$p $mode 0 0"
        fi
    done
    echo "nod /dev/console 600 0 0 c 5 1"
) >"$work/rootfs.list"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
"$gen_init_cpio" -t "$SOURCE_DATE_EPOCH" "$work/rootfs.list" >"$work/rootfs.cpio"
say "rootfs: $(wc -l <"$work/rootfs.list") entries, $(($(stat -c %s "$work/rootfs.cpio") / 1024)) KiB"

# ---- kernel with the rootfs built in ----
"$here/scripts/kernel.sh" embed "$work/rootfs.cpio" "$work/bzImage" >/dev/null

# ---- the remote API's keys ----
if [ ! -e "$KEYS/server.pem" ]; then
    say "making the remote API's keys in $KEYS (clawosctl keys init)"
    "$bin/clawosctl" keys init "$KEYS" >/dev/null || die "clawosctl keys init $KEYS failed"
fi
for f in server.pem server.key clients-ca.pem; do
    [ -s "$KEYS/$f" ] || die "$KEYS/$f is missing: the remote API needs it (docs/remote.md)"
done

# ---- data partition: sample tools installed by the real daemon ----
say "installing the sample tools with clawos-wasm-daemon (precompiled .cwasm)"
sock=$work/bridge.sock
: >"$work/daemon.log"
"$bin/clawos-wasm-daemon" --dev-allow-missing-layers --config "$here/config/daemon.toml" --socket "$sock" --state-dir "$data" \
    >"$work/daemon.log" 2>&1 &
daemon_pid=$!
if ! timeout 120 grep -q -m1 "clawos-wasm-daemon ready" <(tail -n +1 -f "$work/daemon.log"); then
    cat "$work/daemon.log" >&2
    die "the daemon did not become ready within 120 s"
fi
# Each is granted nothing (docs/policy.md) but hostio, whose checks open
# /dev/null for writing, /dev/zero and /dev/urandom for reading.
for t in "${TOOLS[@]}"; do
    grants=()
    [ "$t" = hostio ] && grants=(--grant device=null:rw --grant device=zero --grant device=urandom)
    "$bin/clawosctl" --socket "$sock" install "$t" "$TOOLS_DIR/$t.wasm" "${grants[@]}" >/dev/null
done
kill -TERM "$daemon_pid"
wait "$daemon_pid" || die "the daemon did not stop cleanly; log: $(cat "$work/daemon.log")"
daemon_pid=""
install -d -m 0700 "$data/tls"
install -m 0644 "$KEYS/server.pem" "$data/tls/server.pem"
install -m 0600 "$KEYS/server.key" "$data/tls/server.key"
install -m 0644 "$KEYS/clients-ca.pem" "$data/tls/clients-ca.pem"
# The registry stamps installs with the time of day; the image uses SOURCE_DATE_EPOCH.
sed -i "s/^installed_at = .*/installed_at = $SOURCE_DATE_EPOCH/" "$data"/tools/*/tool.toml
find "$data" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# Project quotas (-O quota,project; init mounts it with prjquota): the
# daemon makes each tool's tree a project with the [clawfs] quota limits.
# One inode per 8 KiB (32768 on 256 MiB, twice ext4's default), because
# tools' files are small. 10% of the blocks are reserved for uid and gid
# 65534, which nothing runs as, and for CAP_SYS_RESOURCE: the daemon has it,
# workers (kernel uid 0, no capabilities) do not, so tools that fill the
# partition leave room for installs (docs/storage.md).
mkfs.ext4 -q -F -L "$DATA_LABEL" -U "$DATA_FS_UUID" -T default -I 256 -i 8192 -m 10 \
    -O quota,project \
    -E "hash_seed=$DATA_HASH_SEED,root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard,quotatype=prjquota" \
    -d "$data" "$work/data.ext4" "${DATA_MIB}M" >/dev/null
tune2fs -u 65534 -g 65534 "$work/data.ext4" >/dev/null
# mke2fs copies each file's ctime, which cannot be set on the staging tree.
(cd "$data" && find . | sed 's|^\.||; s|^$|/|' | sort | while read -r p; do
    printf 'sif "%s" ctime %s\n' "$p" "$SOURCE_DATE_EPOCH"
done) >"$work/ctime.debugfs"
debugfs -w -f "$work/ctime.debugfs" "$work/data.ext4" >/dev/null 2>&1
# mke2fs makes the quota inodes before it copies the tree in (-d): e2fsck
# counts the copied files into them (at the build's time, so the same
# bytes every build), then the partition must pass a check that changes nothing.
E2FSCK_TIME=$SOURCE_DATE_EPOCH e2fsck -fy "$work/data.ext4" >/dev/null 2>&1 || [ $? -eq 1 ] ||
    die "e2fsck could not settle the data partition's quota usage"
e2fsck -fn "$work/data.ext4" >/dev/null 2>&1 || die "the data partition does not pass e2fsck"

# ---- ESP ----
mkfs.vfat -C --invariant -i "$ESP_VOLID" -n CLAWOS-ESP -F 32 "$work/esp.vfat" $((ESP_MIB * 1024)) >/dev/null
touch -d "@$SOURCE_DATE_EPOCH" "$work/bzImage"
mmd -i "$work/esp.vfat" ::/EFI ::/EFI/BOOT
mcopy -m -i "$work/esp.vfat" "$work/bzImage" ::/EFI/BOOT/BOOTX64.EFI

# ---- GPT disk ----
esp_start=2048
esp_end=$((esp_start + ESP_MIB * 2048 - 1))
data_start=$((esp_end + 1))
data_end=$((data_start + DATA_MIB * 2048 - 1))
# The data partition ends where the backup GPT (33 sectors) begins: it fills
# the image, so the first boot from the image itself has nothing to grow
# (clawosctl grow-data grows it on a larger disk).
total=$(((data_end + 1 + 33) * 512))
rm -f "$work/clawos.img"
truncate -s "$total" "$work/clawos.img"
sgdisk -U "$DISK_GUID" \
    -n "1:$esp_start:$esp_end" -t 1:ef00 -u "1:$ESP_PART_GUID" -c 1:"EFI System" \
    -n "2:$data_start:$data_end" -t 2:8300 -u "2:$DATA_PART_GUID" -c 2:clawfs \
    "$work/clawos.img" >/dev/null || die "sgdisk could not partition the disk image"
dd if="$work/esp.vfat" of="$work/clawos.img" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$work/clawos.img" bs=512 seek="$data_start" conv=notrunc,sparse status=none
sgdisk -v "$work/clawos.img" >/dev/null || die "sgdisk -v rejects the disk image"
[ "$(sgdisk -i 2 "$work/clawos.img" | sed -n 's/^Partition unique GUID: //p')" = "${DATA_PART_GUID^^}" ] ||
    die "the disk image has no data partition $DATA_PART_GUID"

# The kernel's BTF, as the running kernel exports it in
# /sys/kernel/btf/vmlinux (the vmlinux's .BTF section): not in the image; the
# e2e suite checks the monitors' field offsets against it.
objcopy -O binary --only-section=.BTF "$kdir/build/vmlinux" "$work/vmlinux.btf" ||
    die "cannot take the .BTF section out of $kdir/build/vmlinux"
chmod 0644 "$work/vmlinux.btf"
[ -s "$work/vmlinux.btf" ] || die "$kdir/build/vmlinux has no .BTF section (CONFIG_DEBUG_INFO_BTF)"

for f in clawos.img bzImage rootfs.cpio clawos-release vmlinux.btf; do
    cp --sparse=always "$work/$f" "$out/$f.tmp"
    mv "$out/$f.tmp" "$out/$f"
done
say "Linux $kversion ($(basename "$ksource")), rootfs $(($(stat -c %s "$out/rootfs.cpio") / 1024 / 1024)) MiB, bzImage $(($(stat -c %s "$out/bzImage") / 1024 / 1024)) MiB"
say "$out/clawos.img: $(($(stat -c %s "$out/clawos.img") / 1024 / 1024)) MiB, sha256 $(sha256sum "$out/clawos.img" | cut -c1-64)"
