#!/usr/bin/env bash
# Coverage-guided fuzzing of the bridge (fuzz/, cargo-fuzz and libFuzzer):
# installs the nightly pinned in fuzz/rust-toolchain.toml and cargo-fuzz when
# missing, builds every target, replays fuzz/regressions/<target>/, then runs
# each target for FUZZ_TIME seconds (or FUZZ_RUNS executions) on a corpus kept
# under the cache and seeded from fuzz/seeds/<target>/. Ends with one line per
# target; exits 1 naming the crash files if any target crashed.
# docs/fuzzing.md says what each target feeds where.
#
#   FUZZ_TIME=60          seconds per target (ignored when FUZZ_RUNS is set)
#   FUZZ_RUNS=            executions per target instead of a time
#   FUZZ_TARGETS="..."    which targets (default: all five)
#   FUZZ_SANITIZER=none   or address (slower; see docs/fuzzing.md for why none)
#   FUZZ_TIMEOUT=25       seconds one input may take before it counts as a crash
#   CACHE                 the build cache (as the Makefile's)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf 'fuzz: %s\n' "$*"; }

CACHE=${CACHE:-$(if [ -w /var/cache ]; then echo /var/cache/clawos; else echo "$HOME/.cache/clawos"; fi)}
FUZZ_TIME=${FUZZ_TIME:-60}
FUZZ_RUNS=${FUZZ_RUNS:-}
FUZZ_TARGETS=${FUZZ_TARGETS:-frame request worker_channel config install}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-25}
# The version of cargo-fuzz this was written against.
CARGO_FUZZ_VERSION=0.13.2
# The fuzz build's own target directory: its flags (sanitizer coverage,
# --cfg fuzzing) differ from every other build's.
target_dir=$CACHE/fuzz-target
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' fuzz/rust-toolchain.toml)
[ -n "$channel" ] || { say "no channel in fuzz/rust-toolchain.toml" >&2; exit 1; }
if ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
    say "installing the pinned nightly $channel"
    rustup toolchain install "$channel" --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

say "building ${FUZZ_TARGETS// /, } ($channel, sanitizer $FUZZ_SANITIZER)"
for t in $FUZZ_TARGETS; do
    (cd fuzz && cargo "+$channel" fuzz build --sanitizer "$FUZZ_SANITIZER" \
        --codegen-units 16 --target-dir "$target_dir" "$t")
done

# Inputs that once crashed a target run first, once each: a crash that
# comes back fails here, before any fuzzing.
for t in $FUZZ_TARGETS; do
    dir=fuzz/regressions/$t
    if compgen -G "$dir/*" >/dev/null; then
        say "replaying $dir"
        replay=$CACHE/fuzz-logs/$t.regressions.log
        mkdir -p "$(dirname "$replay")"
        "$bin_dir/$t" "$dir"/* >"$replay" 2>&1 || {
            tail -n 30 "$replay" >&2
            say "$t: a regression input fails again (whole log: $replay)" >&2
            exit 1
        }
    fi
done

if [ -n "$FUZZ_RUNS" ]; then
    budget=(-runs="$FUZZ_RUNS")
else
    budget=(-max_total_time="$FUZZ_TIME")
fi
final_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }
# What libFuzzer writes for a failed input (it also writes slow-unit-* files,
# which are reports, not failures).
failures() { find "$1" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort; }

summary=()
crashed=()
for t in $FUZZ_TARGETS; do
    corpus=$CACHE/fuzz-corpus/$t
    artifacts=$CACHE/fuzz-artifacts/$t
    log=$CACHE/fuzz-logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    before=$(failures "$artifacts")
    say "$t: ${budget[*]}, corpus $corpus, log $log"
    start=$(date +%s.%N)
    # New inputs go to the first directory (the cache); the seeds are read only.
    status=0
    "$bin_dir/$t" "$corpus" "fuzz/seeds/$t" "${budget[@]}" -print_final_stats=1 \
        -timeout="$FUZZ_TIMEOUT" -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    end=$(date +%s.%N)
    new=$(comm -13 <(echo "$before") <(failures "$artifacts") | sed '/^$/d')
    execs=$(final_stat number_of_executed_units "$log")
    seconds=$(echo "$start $end" | awk '{printf "%.1f", $2 - $1}')
    rate=$(echo "${execs:-0} $seconds" | awk '$2 > 0 {printf "%.0f", $1 / $2} $2 <= 0 {print "?"}')
    crashes=$(printf '%s' "$new" | grep -c . || true)
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        # libFuzzer stopped without writing an input: name the log instead.
        crashes=1
        new="$log (libFuzzer exit status $status, no crash file)"
    fi
    ((crashes == 0)) || crashed+=("$t: $new")
    summary+=("$(printf '%-15s %12s %10s %8s %8s' "$t" "${execs:-?}" "$rate" "$crashes" "$seconds")")
done

printf '\n%-15s %12s %10s %8s %8s\n' target execs execs/s crashes seconds
printf '%s\n' "${summary[@]}"
if ((${#crashed[@]})); then
    printf '\n' >&2
    for c in "${crashed[@]}"; do say "crash: $c" >&2; done
    say "docs/fuzzing.md: minimize it (cargo fuzz tmin) and keep it in fuzz/regressions/<target>/" >&2
    exit 1
fi
