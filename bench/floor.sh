#!/usr/bin/env bash
# The proxy's floor: mllp-proxy, HAProxy and a bare mutual-TLS byte pipe on the proxy's own
# stack (bench/pipe: tokio and rustls, no HL7 work) loaded in turn by 64 senders, ROUNDS
# rounds (default 5) in rotating order. Prints msg/s, p99 and CPU per message of each, and
# the medians of the per-round ratios to HAProxy. What it answers: how much of the proxy's
# cost is its stack, and how far the machine lets any server on that stack get ahead.
#
# With strace installed it also counts system calls per message of each (after the rounds).
#
#   bash bench/floor.sh            (TOP_YAML / ROUTE_YAML: see write_proxy_yaml in lib.sh)
#
# Needs haproxy (apt-get install haproxy); strace optional.
rounds=${ROUNDS:-5}
source "$(dirname "$0")/lib.sh"
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
cargo build --release --quiet --manifest-path bench/pipe/Cargo.toml
start_engine

declare -A port pid
port[mllp-proxy]=$(free_port); admin=$(free_port)
write_proxy_yaml "$work/p.yaml" "${port[mllp-proxy]}" "$admin"
"$bin" run -c "$work/p.yaml" 2>"$work/p.log" & pids+=($!); pid[mllp-proxy]=$!
port[haproxy]=$(free_port)
start_haproxy "${port[haproxy]}" 1000; pid[haproxy]=$haproxy_pid
port[pipe]=$(free_port)
bench/pipe/target/release/mllp-proxy-pipe "127.0.0.1:${port[pipe]}" "127.0.0.1:$engine_port" "$certs" & pids+=($!); pid[pipe]=$!
sleep 1
for side in mllp-proxy haproxy pipe; do
    kill -0 "${pid[$side]}" 2>/dev/null || { echo "$side did not start" >&2; exit 1; }
done

sides=(mllp-proxy haproxy pipe)
for round in $(seq "$rounds"); do
    for i in 0 1 2; do
        side=${sides[$(( (i + round) % 3 ))]}
        c0=$(cpu_seconds "${pid[$side]}")
        out=$(bench_result --to "127.0.0.1:${port[$side]}" "${tls[@]}" --connections 64 --messages 1000 --warmup 20)
        c1=$(cpu_seconds "${pid[$side]}")
        echo "$round $side $(field "$out" msgs_per_sec) $(field "$out" p99_us) $c0 $c1"
    done
done > "$work/rounds"
# System calls per message, when strace is there: a server making the same calls costs the
# kernel the same, so the CPU between the proxy and the pipe is user-space work.
if command -v strace >/dev/null; then
    for side in "${sides[@]}"; do
        syscalls_per_message "$side" "${pid[$side]}" --to "127.0.0.1:${port[$side]}" "${tls[@]}"
    done > "$work/syscalls"
fi
python3 - "$work/rounds" <<'PY'
import collections, statistics, sys
by = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, side, rate, p99, c0, c1 = line.split()
    by[int(r)][side] = (float(rate), float(p99), (float(c1) - float(c0)) * 1e6 / 64000)
print("| server | msg/s (median) | p99 µs | CPU µs/msg | msg/s ÷ HAProxy, per round | median | CPU ÷ HAProxy, per round | median |")
print("|---|---|---|---|---|---|---|---|")
for side in ("mllp-proxy", "haproxy", "pipe"):
    med = lambda i: statistics.median(by[r][side][i] for r in by)
    rate = [by[r][side][0] / by[r]["haproxy"][0] for r in by]
    cpu = [by[r][side][2] / by[r]["haproxy"][2] for r in by]
    print(f"| {side} | {med(0):.0f} | {med(1):.0f} | {med(2):.1f} | {', '.join(f'{x:.2f}' for x in rate)} | {statistics.median(rate):.2f} "
          f"| {', '.join(f'{x:.2f}' for x in cpu)} | {statistics.median(cpu):.2f} |")
PY
if [ -s "$work/syscalls" ]; then
    echo
    echo "| server | system calls per message | busiest, per message |"
    echo "|---|---|---|"
    sed -n 's/^syscalls \([^ ]*\) per_msg=\([0-9.]*\) top=\(.*\)$/| \1 | \2 | \3 |/p' "$work/syscalls"
fi
