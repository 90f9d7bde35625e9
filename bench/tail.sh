#!/usr/bin/env bash
# The latency tail at 64 connections, with what the scheduler did meanwhile: RUNS rounds of 64
# closed-loop mutual-TLS senders (1,000 messages each) against mllp-proxy as it ships (info log
# with an audit record per message, to a file) and HAProxy, in alternating order. For each run,
# from /proc/PID/task/*/schedstat and status: per server thread, the time it was runnable but
# waiting for a CPU (run-queue delay), its time on a CPU, and its voluntary (it slept) and
# involuntary (it was preempted) context switches, per message. Needs: apt-get install haproxy.
#
#   bash bench/tail.sh [RUNS] [CONNECTIONS]
#
# A stall that preempts a session thread shows as run-queue delay on it; wake-ups of the log
# writer as its voluntary switches.
#
# PIN=1: each server alone on CPU 1 (so one session thread, one HAProxy thread), the engine and
# the load generator on CPU 0: what the server does with a core of its own, without waiting
# behind them.
runs=${1:-5}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
# Everything started from here inherits CPU 0; the servers start there too (so each sizes its
# threads for one CPU) and are then moved, every thread, to CPU 1.
[ "${PIN:-0}" = 1 ] && taskset -cp 0 $$ >/dev/null

start_engine
engine_pid=${pids[-1]}
declare -A port pid
admin=$(free_port); port[mllp-proxy]=$(free_port); port[haproxy]=$(free_port)
ROUTE_YAML="    validation: { mode: strict }
    limits: { max_connections_per_source: 0 }" write_proxy_yaml "$work/proxy.yaml" "${port[mllp-proxy]}" "$admin"
"$bin" run -c "$work/proxy.yaml" 2>"$work/proxy.log" & pids+=($!); pid[mllp-proxy]=$!
start_haproxy "${port[haproxy]}" 1000; pid[haproxy]=$haproxy_pid
wait_port "${port[mllp-proxy]}"; wait_port "${port[haproxy]}"
if [ "${PIN:-0}" = 1 ]; then
    for s in mllp-proxy haproxy; do taskset -a -cp 1 "${pid[$s]}" >/dev/null; done
fi
sleep 0.5

# threads PID: one line per thread: "name run_ns wait_ns voluntary involuntary".
threads() {
    local t on_cpu waiting
    for t in /proc/"$1"/task/*; do
        read -r on_cpu waiting _ < "$t/schedstat" || continue
        echo "$(tr ' ' '_' < "$t/comm") $on_cpu $waiting $(awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { print v, n }' "$t/status")"
    done
}

results=$work/results
: > "$results"
msgs=$(( conns * 1000 ))
for run in $(seq "$runs"); do
    order=(mllp-proxy haproxy)
    (( run % 2 == 0 )) && order=(haproxy mllp-proxy)
    for s in "${order[@]}"; do
        threads "${pid[$s]}" > "$work/before"
        threads "$engine_pid" > "$work/engine.before"
        out=$(bench_result --to "127.0.0.1:${port[$s]}" "${tls[@]}" --connections "$conns" --messages 1000 --warmup 20)
        threads "${pid[$s]}" > "$work/after"
        threads "$engine_pid" > "$work/engine.after"
        echo "run $run $s $out" >> "$results"
        python3 - "$run" "$s" "$msgs" "$work/before" "$work/after" "$work/engine.before" "$work/engine.after" >> "$results" <<'PY'
import sys
run, server, msgs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(path):
    out = {}
    for i, line in enumerate(open(path)):
        name, *v = line.split()
        out[(name, i)] = [int(x) for x in v]
    return out
for label, before, after in ((server, sys.argv[4], sys.argv[5]), ("engine", sys.argv[6], sys.argv[7])):
    b, a = load(before), load(after)
    for key, va in a.items():
        vb = b.get(key, [0, 0, 0, 0])
        run_ns, wait_ns, vol, invol = (x - y for x, y in zip(va, vb))
        if run_ns == 0:
            continue
        print(f"thread {run} {server} {label}:{key[0]} cpu_us_per_msg={run_ns / msgs / 1e3:.2f} "
              f"wait_us_per_msg={wait_ns / msgs / 1e3:.2f} voluntary_per_1k={vol * 1000 / msgs:.1f} "
              f"involuntary_per_1k={invol * 1000 / msgs:.1f}")
PY
    done
done

python3 - "$results" <<'PY'
import re, statistics, sys
rows = [l.split(maxsplit=3) for l in open(sys.argv[1])]
def val(text, key):
    m = re.search(key + r"=([0-9.]+)", text)
    return float(m.group(1)) if m else float("nan")
runs = {}
for r in rows:
    if r[0] == "run":
        runs.setdefault(r[1], {})[r[2]] = r[3]
print("\n| run | proxy p50 µs | p99 µs | HAProxy p50 µs | p99 µs | p99 ratio | proxy msg/s | HAProxy msg/s |")
print("|---|---|---|---|---|---|---|---|")
ratios = []
for run, v in runs.items():
    p, h = v["mllp-proxy"], v["haproxy"]
    ratio = val(p, "p99_us") / val(h, "p99_us")
    ratios.append(ratio)
    print(f"| {run} | {val(p, 'p50_us'):.0f} | {val(p, 'p99_us'):.0f} | {val(h, 'p50_us'):.0f} | "
          f"{val(h, 'p99_us'):.0f} | {ratio:.2f} | {val(p, 'msgs_per_sec'):.0f} | {val(h, 'msgs_per_sec'):.0f} |")
print(f"\nmedian p99 ratio over {len(ratios)} runs: {statistics.median(ratios):.2f}")
print("\nPer thread and run (µs per message; context switches per 1,000 messages)\n")
print("| run | server | thread | CPU | run-queue wait | voluntary | involuntary |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if r[0] == "thread":
        _, run, server, rest = r
        name, rest = rest.split(maxsplit=1)
        print(f"| {run} | {server} | {name} | {val(rest, 'cpu_us_per_msg'):.2f} | {val(rest, 'wait_us_per_msg'):.2f} | "
              f"{val(rest, 'voluntary_per_1k'):.1f} | {val(rest, 'involuntary_per_1k'):.1f} |")
PY
