#!/usr/bin/env bash
# The seccomp allow-lists against every system call the code makes on the
# paths the daemon suites drive: those suites run against the test-only
# clawos-audit-daemon (the daemon's source with every filter's default
# action LOG instead of kill, bridge/Cargo.toml), and the kernel must log
# no call from it. Library code (glibc, tokio, wasmtime, Cranelift) makes
# calls on paths a tool or client drives, and a kill there can go unnoticed
# (a spare worker that dies is replaced; a worker killed is a 204 some tests
# expect); a logged call cannot. Needs root (the kernel log) and the audit
# records of seccomp (kernel.seccomp.actions_logged includes "log").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?the Makefile sets it}"
CARGO=${CARGO:-cargo}
audit="$CARGO_TARGET_DIR/release/clawos-audit-daemon"
if ! grep -qw log /proc/sys/kernel/seccomp/actions_logged; then
    echo "seccomp-audit: this kernel does not log SECCOMP_RET_LOG (kernel.seccomp.actions_logged)" >&2
    exit 1
fi
# Kernel log lines after this moment (seconds since boot, as dmesg prints).
since=$(cut -d' ' -f1 /proc/uptime)
"$CARGO" build --release --locked -p clawos-bridge --bin clawos-audit-daemon
CLAWOS_TEST_DAEMON=$audit "$CARGO" test --release --locked -p clawos-bridge \
    --test ipc --test clients --test install --test sandbox --test hostile_tools \
    --test hostio --test remote --test pool
logged=$(dmesg | awk -v since="$since" -v exe="exe=\"$audit\"" '
    { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t) }
    t + 0 >= since + 0 && /type=1326/ && index($0, exe)')
suppressed=$(dmesg | awk -v since="$since" '
    { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t) }
    t + 0 >= since + 0 && /kauditd_printk_skb: [0-9]+ callbacks suppressed/')
if [ -n "$logged" ]; then
    echo "seccomp-audit: calls outside the allow-lists (syscall=N is the x86_64 number):" >&2
    echo "$logged" | sed 's/.*comm=\("[^"]*"\).* syscall=\([0-9]*\).*/  \1 syscall \2/' | sort | uniq -c >&2
    exit 1
fi
if [ -n "$suppressed" ]; then
    echo "seccomp-audit: the kernel suppressed audit records while the suites ran; cannot tell: $suppressed" >&2
    exit 1
fi
echo "seccomp-audit: the daemon suites made no system call outside the allow-lists"
