#!/usr/bin/env bash
# Starts clawos-wasm-daemon on a socket under build/, installs the sample
# tools, and runs hello through clawosctl. The daemon keeps running;
# `make stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?run through make}"
: "${TOOLS_DIR:?run through make}"
bin="$CARGO_TARGET_DIR/release"
run=build/run
mkdir -p "$run"
socket="$PWD/$run/bridge.sock"
log="$run/daemon.log"

if [ -f "$run/daemon.pid" ] && kill -0 "$(cat "$run/daemon.pid")" 2>/dev/null; then
    echo "demo: stopping the daemon from the last run (pid $(cat "$run/daemon.pid"))"
    kill -TERM "$(cat "$run/daemon.pid")"
    timeout 15 tail --pid="$(cat "$run/daemon.pid")" -f /dev/null
fi
: > "$log"
"$bin/clawos-wasm-daemon" --dev-allow-missing-layers --socket "$socket" --state-dir "$PWD/$run/state" >>"$log" 2>&1 &
echo $! > "$run/daemon.pid"
echo "demo: clawos-wasm-daemon started (pid $!), log in $log"
if ! timeout 60 grep -q -m1 "clawos-wasm-daemon ready" <(tail -n +1 -f "$log"); then
    echo "demo: the daemon did not become ready within 60 s; its log:" >&2
    cat "$log" >&2
    exit 1
fi

ctl() { echo "+ clawosctl $*"; "$bin/clawosctl" --socket "$socket" "$@"; }
for tool in hello echo exerciser; do
    ctl install --replace "$tool" "$TOOLS_DIR/$tool.wasm"
done
ctl run hello ClawOS
ctl run exerciser --env GREETING=from-request | tail -n 1
ctl status
cat <<MSG

demo: the daemon is still running. Try:
  $bin/clawosctl --socket $socket list
  echo hi | $bin/clawosctl --socket $socket run echo --stdin
  make stop
MSG
