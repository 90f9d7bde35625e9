#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) under libFuzzer, starting from the seed
# corpus in fuzz/corpus/TARGET (copied: what a run finds is not written back), and fails on any
# crash, panic, leak or timeout. Prints each target's run time and executions.
#
#   bash fuzz/run.sh [TARGET …]          FUZZ_SECONDS=600 bash fuzz/run.sh hl7
#
# cargo-fuzz needs nightly compiler flags: the nightly toolchain when rustup has one, else the
# stable compiler with RUSTC_BOOTSTRAP=1. The README's test command needs neither.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec hl7 proxy_header)
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! "${fuzz[@]}" build --release >"$work/build.log" 2>&1; then
    cat "$work/build.log"
    exit 1
fi
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    cp corpus/"$t"/* "$work/$t/" 2>/dev/null || true
    started=$(date +%s)
    if ! "${fuzz[@]}" run --release "$t" "$work/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "FAIL: fuzz target $t found a crash (the input is in fuzz/artifacts/$t/)"
        exit 1
    fi
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$work/$t.log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$work/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1)
    echo "fuzz $t: $(( $(date +%s) - started )) s, ${execs:-${runs:-?}} executions, ${cov:-cov: ?}, corpus $(ls "$work/$t" | wc -l) inputs, no crash"
done
