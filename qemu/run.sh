#!/usr/bin/env bash
# Boots the ClawOS appliance in QEMU on the serial console (this terminal).
# One launcher for people (make run) and for the e2e tests.
#
#   qemu/run.sh [options] IMAGE            UEFI: OVMF boots IMAGE's \EFI\BOOT\BOOTX64.EFI
#   qemu/run.sh [options] --kernel BZIMAGE IMAGE
#                                          fast path: QEMU loads the kernel directly
#                                          (built-in initramfs and command line), IMAGE
#                                          is only the data disk
# Options:
#   --kernel FILE   fast path with this kernel (build/bzImage)
#   --initrd FILE   an extra initramfs for the fast path (overlays the built-in one)
#   --append ARGS   extra kernel arguments for the fast path (the appliance's kernel
#                   ignores them: its built-in command line overrides, CMDLINE_OVERRIDE)
#   --vars FILE     OVMF variable store (UEFI NVRAM), created from OVMF_VARS_4M.fd when
#                   missing (default: IMAGE with -OVMF_VARS.fd for .img, kept like a real
#                   machine's NVRAM)
#   --mem MIB       guest memory (default 1024)
#   --smp N         guest CPUs (default 2)
#   --accel A       auto (default), kvm or tcg. auto uses KVM only if a probe boot under
#                   KVM reaches the kernel's init; otherwise TCG with -cpu max
#   --icount SHIFT  TCG, one vCPU, and the guest's clocks driven by its instruction count
#                   (2^SHIFT ns per instruction): guest timings then count instructions,
#                   not the host's time, whatever else the host is doing (benchmarks)
#   --api-port PORT the guest's network (QEMU user networking, restrict=on: the guest
#                   reaches nothing but what is forwarded) with the remote API
#                   (guest port 7443) forwarded to 127.0.0.1:PORT on this machine
#   --guestfwd ADDR:PORT=HOSTPORT
#                   with --api-port: the guest's TCP connections to ADDR:PORT (an
#                   address in 10.0.2.0/24, not .2 or .3) go to 127.0.0.1:HOSTPORT
#                   (QEMU's chardev: one connection at a time); as each:ADDR:PORT=HOSTPORT,
#                   each connection gets its own relay (socat), for many at once
#                   here (repeatable). Without --api-port the guest has no NIC
#   --disk FILE     a second (third, ...) virtio disk, raw, read-write: /dev/vdb, ... in the
#                   guest (repeatable; the tests' device grants use one)
#   --reboot        let a guest reboot restart it (default: QEMU exits when the guest
#                   reboots or powers off)
#   --dry-run       print the QEMU command line and exit
# IMAGE is used read-write: what the guest writes to ClawFS stays in it.
# Leave QEMU with Ctrl-A X, or `poweroff` in the guest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CACHE:-/var/cache/clawos}
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'qemu: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'qemu: %s\n' "$*" >&2; }

kernel="" initrd="" append="" vars="" mem=1024 smp=2 accel=auto icount="" smp_given=0 reboot=0 dry=0 image=""
api_port="" guestfwd=()
disks=()
while [ $# -gt 0 ]; do
    case $1 in
    --kernel) kernel=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --vars) vars=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2 smp_given=1; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --icount) icount=$2; shift 2 ;;
    --api-port) api_port=$2; shift 2 ;;
    --guestfwd) guestfwd+=("$2"); shift 2 ;;
    --disk) disks+=("$2"); shift 2 ;;
    --reboot) reboot=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) [ -z "$image" ] || die "one IMAGE only (got $image and $1)"; image=$1; shift ;;
    esac
done
[ -n "$image" ] || { usage >&2; die "no IMAGE given (make image builds build/clawos.img)"; }
[ -f "$image" ] || die "$image does not exist (make image builds build/clawos.img)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: install qemu-system-x86 (scripts/setup.sh does)"
[ -z "$kernel" ] || [ -f "$kernel" ] || die "kernel $kernel does not exist"
[ -z "$initrd" ] || [ -f "$initrd" ] || die "initrd $initrd does not exist"

# KVM only if it really boots: /dev/kvm can exist and still hang guests (a
# paravirtual device without vmx/svm). The probe boots the appliance kernel
# with an extra initramfs whose /init is `#!/bin/true`, which ends in the
# kernel's "Attempted to kill init" panic: proof that the kernel ran to
# userspace under KVM (the kernel takes no command line from outside, so
# rdinit= cannot say it). The verdict is kept per host kernel and QEMU version.
probe_kvm() {
    local probe_kernel=$1
    [ -w /dev/kvm ] || { echo "no writable /dev/kvm"; return 1; }
    [ -n "$probe_kernel" ] || { echo "no kernel to probe with"; return 1; }
    local id verdict_file
    id=$( { uname -r; qemu-system-x86_64 --version | head -1; } | sha256sum | cut -c1-16)
    verdict_file=$CACHE/qemu/kvm-probe-$id
    if [ -f "$verdict_file" ]; then
        cat "$verdict_file"
        [ "$(head -c2 "$verdict_file")" = ok ]
        return
    fi
    mkdir -p "$CACHE/qemu"
    local out probe_dir
    probe_dir=$(mktemp -d)
    mkdir "$probe_dir/root"
    printf '#!/bin/true\n' >"$probe_dir/root/init"
    chmod 0755 "$probe_dir/root/init"
    (cd "$probe_dir/root" && echo init | cpio --quiet -o -H newc -R 0:0) >"$probe_dir/probe.cpio"
    out=$(timeout 30 qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256 -nographic -no-reboot \
        -kernel "$probe_kernel" -initrd "$probe_dir/probe.cpio" </dev/null 2>&1 || true)
    rm -rf "$probe_dir"
    if grep -q "Attempted to kill init" <<<"$out"; then
        echo "ok: a KVM probe boot reached init" | tee "$verdict_file"
    else
        echo "failed: a KVM probe boot did not reach init within 30 s" | tee "$verdict_file"
        return 1
    fi
}

accel_args=()
if [ -n "$icount" ]; then
    case $icount in
    [0-9] | 1[0-9]) ;;
    *) die "--icount takes a shift of 0 to 19 (2^SHIFT ns per guest instruction), not '$icount'" ;;
    esac
    [ "$accel" = auto ] || [ "$accel" = tcg ] || die "--icount needs TCG, not --accel $accel"
    [ "$smp_given" = 0 ] || [ "$smp" = 1 ] || die "--icount runs one vCPU, not --smp $smp"
    # icount needs single-threaded TCG. One vCPU: with two, the guest's
    # second CPU never comes up under icount (QEMU 7.2, Linux 6.1: the boot
    # stops at "Bringing up secondary CPUs").
    accel=counted smp=1
    accel_args=(-accel tcg,thread=single -cpu max -icount "shift=$icount,sleep=on")
    say "accelerator: TCG, one thread, one vCPU, clocks from the instruction count (2^$icount ns each)"
fi
case $accel in
counted) ;;
tcg) accel_args=(-accel tcg -cpu max) ;;
kvm) accel_args=(-accel kvm -cpu host) ;;
auto)
    probe_kernel=${kernel:-$(dirname "$image")/bzImage}
    [ -f "$probe_kernel" ] || probe_kernel=""
    if why=$(probe_kvm "$probe_kernel"); then
        accel_args=(-accel kvm -cpu host)
        say "accelerator: KVM ($why)"
    else
        accel_args=(-accel tcg -cpu max)
        say "accelerator: TCG -cpu max (KVM: $why)"
    fi
    ;;
*) die "--accel must be auto, kvm or tcg" ;;
esac

# The network: user mode with restrict=on (the guest can send nothing
# anywhere except through the forwards below, all to this machine's
# loopback), DHCP from QEMU (10.0.2.15, gateway 10.0.2.2).
nic=(-nic none)
if [ -n "$api_port" ]; then
    case $api_port in *[!0-9]* | '') die "--api-port takes a port number, not '$api_port'" ;; esac
    spec="user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$api_port-:7443"
    for f in "${guestfwd[@]}"; do
        each=""
        case $f in each:*) each=1 f=${f#each:} ;; esac
        [[ $f =~ ^10\.0\.2\.([0-9]+):([0-9]+)=([0-9]+)$ ]] || die "--guestfwd $f: expected [each:]10.0.2.N:PORT=HOSTPORT"
        if [ -n "$each" ]; then
            command -v socat >/dev/null || die "--guestfwd each:$f needs socat (scripts/setup.sh installs it)"
            spec+=",guestfwd=tcp:${f%%=*}-cmd:socat STDIO TCP:127.0.0.1:${f#*=}"
        else
            spec+=",guestfwd=tcp:${f%%=*}-tcp:127.0.0.1:${f#*=}"
        fi
    done
    nic=(-nic "$spec")
elif [ ${#guestfwd[@]} -gt 0 ]; then
    die "--guestfwd needs --api-port (the guest has no network without it)"
fi
args=(qemu-system-x86_64 "${accel_args[@]}" -machine q35 -m "$mem" -smp "$smp" -nographic
    -drive "file=$image,format=raw,if=none,id=disk,cache=writeback" -device virtio-blk-pci,drive=disk
    -device virtio-rng-pci "${nic[@]}")
for i in "${!disks[@]}"; do
    [ -f "${disks[$i]}" ] || die "--disk ${disks[$i]}: no such file"
    args+=(-drive "file=${disks[$i]},format=raw,if=none,id=extra$i,cache=writeback" -device "virtio-blk-pci,drive=extra$i")
done
[ "$reboot" = 1 ] || args+=(-no-reboot)
if [ -n "$kernel" ]; then
    args+=(-kernel "$kernel")
    [ -z "$initrd" ] || args+=(-initrd "$initrd")
    [ -z "$append" ] || args+=(-append "$append")
else
    [ -z "$initrd$append" ] || die "--initrd and --append need --kernel (the UEFI image has its command line built in)"
    [ -f "$OVMF_CODE" ] || die "$OVMF_CODE is missing: install ovmf (scripts/setup.sh does)"
    vars=${vars:-${image%.img}-OVMF_VARS.fd}
    [ "$dry" = 1 ] || [ -s "$vars" ] || cp "$OVMF_VARS" "$vars"
    args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
        -drive "if=pflash,format=raw,unit=1,file=$vars")
fi
if [ "$dry" = 1 ]; then
    printf '%q ' "${args[@]}"
    echo
    exit 0
fi
say "booting $image ($([ -n "$kernel" ] && echo "fast path, kernel $kernel" || echo "UEFI, OVMF $OVMF_CODE")); Ctrl-A X quits"
[ -z "$api_port" ] || say "network: QEMU user networking (restrict=on); remote API forwarded to tls://127.0.0.1:$api_port"
exec "${args[@]}"
