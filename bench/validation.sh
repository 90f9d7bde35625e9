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
start_proxy strict strict; strict_port=$proxy_port; strict_pid=$proxy_pid
start_proxy off off; off_port=$proxy_port; off_pid=$proxy_pid

# Throughput is noisy on a shared machine; the proxy's own CPU time per message (from its
# process_cpu_seconds_total) is the steadier measure of what validation costs.
echo "| size | strict msg/s (median) | off msg/s (median) | strict/off throughput | strict CPU µs/msg | off CPU µs/msg | validation share of proxy CPU |"
echo "|---|---|---|---|---|---|---|"
for size in 1024 65536; do
    n=2000; [ "$size" = 65536 ] && n=300
    s=(); o=(); scpu=0; ocpu=0; msgs=0
    for _ in $(seq "$rounds"); do
        c0=$(cpu_seconds "$strict_pid")
        s+=("$(field "$(bench_result --to "127.0.0.1:$strict_port" "${tls[@]}" --connections 8 --messages "$n" --size "$size")" msgs_per_sec)")
        c1=$(cpu_seconds "$strict_pid")
        d0=$(cpu_seconds "$off_pid")
        o+=("$(field "$(bench_result --to "127.0.0.1:$off_port" "${tls[@]}" --connections 8 --messages "$n" --size "$size")" msgs_per_sec)")
        d1=$(cpu_seconds "$off_pid")
        scpu=$(python3 -c "print($scpu + $c1 - $c0)")
        ocpu=$(python3 -c "print($ocpu + $d1 - $d0)")
        msgs=$((msgs + 8 * (n + 100)))
    done
    python3 - "$size" "${s[*]}" "${o[*]}" "$scpu" "$ocpu" "$msgs" <<'PY'
import statistics, sys
size, s, o = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
scpu, ocpu, msgs = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
ms, mo = statistics.median(s), statistics.median(o)
su, ou = scpu / msgs * 1e6, ocpu / msgs * 1e6
print(f"| {int(size)//1024} KB | {ms:.0f} | {mo:.0f} | {ms/mo:.3f} | {su:.1f} | {ou:.1f} | {100*(su-ou)/su:+.1f}% |")
PY
done
echo
cargo bench --quiet --bench validation 2>/dev/null
