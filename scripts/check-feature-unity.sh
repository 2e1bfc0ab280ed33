#!/usr/bin/env bash
# Fails if a release build `make test` makes would turn on different
# features in a crate the bridge depends on than the bridge's own build
# does. Cargo unifies features per invocation: one such difference rebuilds
# that crate, everything above it and the bridge once more (with libc's
# extra_traits, from the e2e harness, that was wasmtime and most of the
# graph). bridge/Cargo.toml turns those features on for every build.
# Reads only the dependency graph (`cargo tree`): no compile.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# "name@version|features" per crate in the graph of one invocation; a crate
# built twice (for the target and for build scripts or macros) has both
# sets, joined by ";".
graph() {
    "$CARGO" tree --locked "$@" -f '{p}|{f}' --prefix none |
        sed 's/ (\*)$//; s/ (proc-macro)//' |
        awk -F'|' '{ split($1, a, " "); print a[1] "@" a[2] "|" $2 }' | sort -u |
        awk -F'|' '$1 == key { sets = sets ";" $2; next }
                   { if (key != "") print key "|" sets; key = $1; sets = $2 }
                   END { if (key != "") print key "|" sets }'
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
graph -p clawos-bridge -e normal >"$work/bridge"
graph --workspace --exclude clawos-e2e -e normal,dev >"$work/make-test-host"
graph -p clawos-bridge -e normal,dev >"$work/bridge-tests-and-benches"
graph -p clawos-inguest -e normal >"$work/inguest"
graph -p clawos-e2e -e normal,dev >"$work/e2e"
status=0
for mode in make-test-host bridge-tests-and-benches inguest e2e; do
    # The bridge's crates only: others are built once, for whoever uses them.
    diff=$(join -t'|' -j1 "$work/bridge" "$work/$mode" | awk -F'|' '$2 != $3')
    if [ -n "$diff" ]; then
        echo "check-feature-unity: the $mode build turns on other features than the bridge's own (crate|bridge's|$mode's):" >&2
        echo "$diff" | sed 's/^/  /' >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "check-feature-unity: every build shares the bridge's features"
exit "$status"
