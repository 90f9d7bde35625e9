#!/usr/bin/env bash
# The pooled upstream against the design it replaced, in one run on one machine:
#   - 64 mutual-TLS senders through the pool with upstream.max_connections 0 and 8, against the
#     previous release's connection-per-session upstream (built from git ref $BASELINE_REF into
#     target/baseline: `git worktree` + `cargo build --release`, a few minutes the first time);
#   - max_connections 1 (64 senders sharing one engine connection) against one client talking
#     to the engine directly on one connection: what a single-connection engine can carry.
# 5 interleaved rounds whose order rotates. The ratio is the median of the per-round ratios (each
# path against its baseline in the same round, seconds apart), which cancels the machine's slow
# drifts better than a ratio of medians; both are printed, with each proxy's CPU per message.
#
#   bash bench/pool.sh [MESSAGES_PER_SENDER] [SIZE] [ROUNDS]
n=${1:-1000}
size=${2:-1024}
rounds=${3:-5}
baseline_ref=${BASELINE_REF:-1f1da2c}
source "$(dirname "$0")/lib.sh"

baseline_src=target/baseline-src
baseline_bin=target/baseline/release/mllp-proxy
if [ ! -x "$baseline_bin" ]; then
    [ -d "$baseline_src" ] || git worktree add --detach "$baseline_src" "$baseline_ref" >/dev/null
    CARGO_TARGET_DIR=$PWD/target/baseline cargo build --release --quiet --manifest-path "$baseline_src/Cargo.toml"
fi

start_engine

# proxy NAME BINARY MAX_CONNECTIONS: starts a proxy; sets ${port[NAME]} and ${pid[NAME]}.
declare -A port pid
proxy() {
    local name=$1 binary=$2 max=$3 admin_port pool="" audit=""
    port[$name]=$(free_port); admin_port=$(free_port)
    # The baseline predates the pool and the audit trail: compare like with like (the audit
    # trail's own cost is measured by bench/audit.sh).
    [ "$max" = "-" ] || { pool=", max_connections: $max"; audit="audit: { messages: false }"; }
    cat > "$work/$name.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: warn }
$audit
routes:
  - name: $name
    listen: "127.0.0.1:${port[$name]}"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"]$pool }
YAML
    "$binary" run -c "$work/$name.yaml" & pids+=($!); pid[$name]=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "proxy $name did not become ready" >&2; exit 1
}
proxy per-session "$baseline_bin" -
proxy pool-0 "$bin" 0
proxy pool-8 "$bin" 8
proxy pool-1 "$bin" 1

declare -A r
order=(per-session pool-0 pool-8 pool-1)
# measure NAME ARGS…: a RESULT line plus cpu_us, the proxy's CPU per measured message.
measure() {
    local name=$1; shift
    local before after out msgs
    before=$(cpu_seconds "${pid[$name]}")
    out=$(bench_result "$@")
    after=$(cpu_seconds "${pid[$name]}")
    msgs=$((64 * n))
    echo "$out cpu_us=$(python3 -c "print(($after - $before) * 1e6 / $msgs)")"
}
for round in $(seq "$rounds"); do
    # A different order each round, so that no path always runs right after another.
    order=("${order[@]:1}" "${order[0]}")
    for name in "${order[@]}"; do
        r[$name,$round]=$(measure "$name" --to "127.0.0.1:${port[$name]}" "${tls[@]}" --connections 64 --messages "$n" --warmup 20 --size "$size")
    done
    r[direct-1,$round]=$(bench_result --to "127.0.0.1:$engine_port" --connections 1 --messages $((n * 16)) --size "$size")
done

echo "| path | senders | engine connections | msg/s (median of $rounds) | p50 µs | p99 µs | proxy CPU µs/msg | ratio of medians | median of per-round ratios |"
echo "|---|---|---|---|---|---|---|---|---|"
row() {
    local name=$1 senders=$2 conns=$3 base=$4 what=$5 mine=() theirs=()
    for round in $(seq "$rounds"); do mine+=("${r[$name,$round]}"); theirs+=("${r[$base,$round]}"); done
    python3 - "$name" "$senders" "$conns" "$what" "$rounds" "${mine[@]}" "${theirs[@]}" <<'PY'
import re, statistics, sys
name, senders, conns, what, rounds, *lines = sys.argv[1:]
k = int(rounds)
f = lambda l, key: float(m.group(1)) if (m := re.search(key + r"=([0-9.]+)", l)) else float("nan")
mine, base = lines[:k], lines[k:]
med = lambda ls, key: statistics.median(f(l, key) for l in ls)
ratio = med(mine, "msgs_per_sec") / med(base, "msgs_per_sec")
per_round = [f(a, "msgs_per_sec") / f(b, "msgs_per_sec") for a, b in zip(mine, base)]
paired = statistics.median(per_round)
cpu = med(mine, "cpu_us")
cpu = "-" if cpu != cpu else f"{cpu:.1f}"
print(f"| {name} | {senders} | {conns} | {med(mine, 'msgs_per_sec'):.0f} | {med(mine, 'p50_us'):.0f} | "
      f"{med(mine, 'p99_us'):.0f} | {cpu} | {ratio:.2f} | {paired:.2f} {what} |")
print(f"{name} per round: " + " ".join(f"{x:.2f}" for x in per_round), file=sys.stderr)
PY
}
row per-session 64 "one per sender" per-session "(baseline)"
row pool-0 64 "pooled, no limit" per-session "x per-session"
row pool-8 64 "pooled, at most 8" per-session "x per-session"
row direct-1 1 "1 (no proxy)" direct-1 "(baseline)"
row pool-1 64 "pooled, at most 1" direct-1 "x direct on one connection"
