#!/usr/bin/env bash
# Cost of validation: two proxies in front of one engine, one `strict`, one `off`, loaded
# alternately (ROUNDS rounds, so drift on a shared machine hits both), at 1 KB and 64 KB.
# Reports the median throughput ratio strict/off. Then the isolated per-message cost
# (cargo bench --bench validation).
#
#   bash bench/validation.sh [ROUNDS]
rounds=${1:-5}
source "$(dirname "$0")/lib.sh"

start_engine
start_proxy strict strict; strict_port=$proxy_port
start_proxy off off; off_port=$proxy_port

echo "| size | strict msg/s (median) | off msg/s (median) | strict/off | validation cost |"
echo "|---|---|---|---|---|"
for size in 1024 65536; do
    n=2000; [ "$size" = 65536 ] && n=300
    s=(); o=()
    for _ in $(seq "$rounds"); do
        s+=("$(field "$(bench_result --to "127.0.0.1:$strict_port" "${tls[@]}" --connections 8 --messages "$n" --size "$size")" msgs_per_sec)")
        o+=("$(field "$(bench_result --to "127.0.0.1:$off_port" "${tls[@]}" --connections 8 --messages "$n" --size "$size")" msgs_per_sec)")
    done
    python3 - "$size" "${s[*]}" "${o[*]}" <<'PY'
import statistics, sys
size, s, o = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ms, mo = statistics.median(s), statistics.median(o)
print(f"| {int(size)//1024} KB | {ms:.0f} | {mo:.0f} | {ms/mo:.3f} | {100*(1-ms/mo):+.1f}% |")
PY
done
echo
cargo bench --quiet --bench validation 2>/dev/null
