#!/usr/bin/env bash
# Baseline: the same load direct to the stand-in engine (plain MLLP) and through mllp-proxy
# (mutual TLS), in one run, reported as ratios. Everything stays on loopback.
#
#   bash bench/run.sh [SIZE_BYTES] [MESSAGES_PER_CONNECTION_AT_1] [MESSAGES_PER_CONNECTION_AT_32]
size=${1:-1024}
n1=${2:-5000}
n32=${3:-500}
source "$(dirname "$0")/lib.sh"

start_engine
start_proxy bench strict

declare -A result
for conns in 1 32; do
    n=$n1; [ "$conns" = 32 ] && n=$n32
    result[direct,$conns]=$(bench_result --to "127.0.0.1:$engine_port" --connections "$conns" --messages "$n" --size "$size")
    result[proxy,$conns]=$(bench_result --to "127.0.0.1:$proxy_port" "${tls[@]}" --connections "$conns" --messages "$n" --size "$size")
    echo "direct conns=$conns: ${result[direct,$conns]#RESULT }"
    echo "proxy conns=$conns: ${result[proxy,$conns]#RESULT }"
done

echo
echo "| connections | direct msg/s | proxy msg/s | proxy/direct throughput | direct p50 µs | proxy p50 µs | direct p99 µs | proxy p99 µs | proxy/direct p99 |"
echo "|---|---|---|---|---|---|---|---|---|"
for conns in 1 32; do
    d=${result[direct,$conns]}; p=${result[proxy,$conns]}
    python3 - "$conns" "$(field "$d" msgs_per_sec)" "$(field "$p" msgs_per_sec)" "$(field "$d" p50_us)" \
        "$(field "$p" p50_us)" "$(field "$d" p99_us)" "$(field "$p" p99_us)" <<'PY'
import sys
c, dr, pr, d50, p50, d99, p99 = sys.argv[1:]
dr, pr, d99, p99 = float(dr), float(pr), float(d99), float(p99)
print(f"| {c} | {dr:.0f} | {pr:.0f} | {pr/dr:.2f} | {d50} | {p50} | {d99:.0f} | {p99:.0f} | {p99/d99:.2f} |")
PY
done
