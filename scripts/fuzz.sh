#!/usr/bin/env bash
# Runs one coverage-guided fuzz target with AFL++ (through cargo-afl, stable Rust) for SECONDS.
#
#   scripts/fuzz.sh TARGET SECONDS
#
# TARGET is unit-parser, api or config (see fuzz/src/lib.rs and Documentation/reliability.md,
# "Fuzzing"). Installs what it needs, idempotently: cargo-afl (`cargo install`), then AFL++
# built by `cargo afl config --build` (needs gcc and make). The instrumented build has its own
# target directory (target/afl) so it never invalidates the normal build.
#
# The seeds are fuzz/seeds/TARGET/; AFL's output is $FUZZ_OUT/TARGET (default target/afl/out),
# resumed when it exists. At the end it prints execs, exec rate, corpus size, coverage and
# crashes from AFL's fuzzer_stats, and exits 1 if any crash or hang was saved. A crash input
# replays with the plain build: `cargo run -p fleet-fuzz --bin TARGET < FILE`.
#
# Environment: FUZZ_OUT (output root), FUZZ_AFL_ARGS (extra afl-fuzz arguments).
set -euo pipefail

usage() {
    echo "usage: $0 {unit-parser|api|config} SECONDS" >&2
    exit 2
}
[ $# -eq 2 ] || usage
target="$1"
seconds="$2"
case "$target" in
    unit-parser | api | config) ;;
    *) usage ;;
esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

for tool in gcc make; do
    command -v "$tool" >/dev/null || {
        echo "fuzz: error: $tool is needed to build AFL++ (apt-get install build-essential)" >&2
        exit 1
    }
done
if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-afl"
    cargo install cargo-afl --locked
fi
# Builds AFL++ once per toolchain; "already built" is the idempotent case.
if ! config_output="$(cargo afl config --build 2>&1)"; then
    if ! grep -q "already built" <<<"$config_output"; then
        echo "$config_output" >&2
        echo "fuzz: error: cargo afl config --build failed" >&2
        exit 1
    fi
fi

export CARGO_TARGET_DIR="$root/target/afl"
# unit-parser builds fleet-systemd alone; api and config share one (large) dependency graph,
# so building one leaves the other a quick build.
features=afl
[ "$target" = unit-parser ] || features="afl,api,config"
cargo afl build -p fleet-fuzz --no-default-features --features "$features" --bin "$target"

out="${FUZZ_OUT:-$root/target/afl/out}"
mkdir -p "$out"
# This machine is shared: no CPU frequency check, no core binding, no core-pattern demand.
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_AUTORESUME=1
# shellcheck disable=SC2086 # FUZZ_AFL_ARGS is a list of arguments.
cargo afl fuzz -V "$seconds" -i "fuzz/seeds/$target" -o "$out/$target" ${FUZZ_AFL_ARGS:-} \
    "$CARGO_TARGET_DIR/debug/$target" >"$out/$target.log" 2>&1 || {
    tail -n 30 "$out/$target.log" >&2
    echo "fuzz: error: afl-fuzz failed (log: $out/$target.log)" >&2
    exit 1
}

stats="$out/$target/default/fuzzer_stats"
echo "fuzz: $target for ${seconds}s (log: $out/$target.log)"
for field in run_time execs_done execs_per_sec corpus_count edges_found total_edges bitmap_cvg \
    saved_crashes saved_hangs; do
    grep -E "^$field +:" "$stats" || true
done
crashes="$(grep -E '^saved_crashes +:' "$stats" | awk '{print $3}')"
hangs="$(grep -E '^saved_hangs +:' "$stats" | awk '{print $3}')"
if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
    echo "fuzz: crashes or hangs saved:" >&2
    ls "$out/$target/default/crashes" "$out/$target/default/hangs" >&2
    exit 1
fi
