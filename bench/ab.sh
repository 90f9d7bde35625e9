#!/usr/bin/env bash
# A/B of one idea: two proxies (binaries and/or environments) with the shipped configuration,
# loaded alternately, 6 rounds; prints each side's median msg/s, p99 and CPU µs per message,
# and B ÷ A. For deciding whether a change is kept: CPU per message is the steadiest figure on
# a shared machine, throughput the one users feel.
#
#   A_ENV="VAR=1" B_ENV="VAR=2" bash bench/ab.sh A_BINARY B_BINARY [CONNECTIONS] [MESSAGES]
# A_YAML / B_YAML: a top-level configuration line for that side only (`audit: { messages: false }`);
# A_UPSTREAM / B_UPSTREAM: more keys of the route's upstream (`, max_connections: 8`);
# ROUTE_YAML: more keys of the route on both sides (`    validation: { max_message_bytes: 16777216 }`);
# BENCH_ARGS: more arguments for every `bench` run (`--reconnect`, `--size 8388608`).
a_bin=${1:?A binary}
b_bin=${2:?B binary}
conns=${3:-64}
n=${4:-$((64000 / ${3:-64}))}
source "$(dirname "$0")/lib.sh"
start_engine

declare -A port pid
for side in A B; do
    port[$side]=$(free_port); admin=$(free_port)
    cat > "$work/$side.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin" }
logging: { level: warn }
$( [ "$side" = A ] && echo "${A_YAML:-}" || echo "${B_YAML:-}" )
routes:
  - name: side-${side,,}
    listen: "127.0.0.1:${port[$side]}"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] $( [ "$side" = A ] && echo "${A_UPSTREAM:-}" || echo "${B_UPSTREAM:-}" ) }
${ROUTE_YAML:-}
YAML
    binary=$a_bin; envs=${A_ENV:-}
    [ "$side" = B ] && { binary=$b_bin; envs=${B_ENV:-}; }
    env $envs "$binary" run -c "$work/$side.yaml" 2>"$work/$side.log" & pids+=($!); pid[$side]=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done

# The order alternates (A B, B A, …), each side first in three of six rounds, so running second
# (one A/A run put the second side at 1.09x the CPU) cannot favour a side. Three A/A runs of one
# binary gave B/A CPU 1.09, 0.91 and 0.97: a single run does not resolve a change under ~10%;
# keep a change only when several runs agree.
declare -A r
for round in 1 2 3 4 5 6; do
    order="A B"; [ $((round % 2)) = 0 ] && order="B A"
    for side in $order; do
        kill -0 "${pid[$side]}" 2>/dev/null || { echo "proxy $side exited:" >&2; cat "$work/$side.log" >&2; exit 1; }
        before=$(cpu_seconds "${pid[$side]}")
        out=$(bench_result --to "127.0.0.1:${port[$side]}" "${tls[@]}" --connections "$conns" --messages "$n" --warmup 20 ${BENCH_ARGS:-})
        after=$(cpu_seconds "${pid[$side]}")
        r[$side,$round]="$out cpu_us=$(python3 -c "print(($after - $before) * 1e6 / ($conns * $n))")"
    done
done
python3 - "${r[A,1]}" "${r[A,2]}" "${r[A,3]}" "${r[A,4]}" "${r[A,5]}" "${r[A,6]}" "${r[B,1]}" "${r[B,2]}" "${r[B,3]}" "${r[B,4]}" "${r[B,5]}" "${r[B,6]}" <<'PY'
import re, statistics, sys
f = lambda l, k: float(re.search(k + r"=([0-9.]+)", l).group(1))
a, b = sys.argv[1:7], sys.argv[7:]
m = lambda ls, k: statistics.median(f(l, k) for l in ls)
for k in ("msgs_per_sec", "p99_us", "cpu_us"):
    print(f"{k}: A {m(a, k):.1f}  B {m(b, k):.1f}  B/A {m(b, k) / m(a, k):.3f}")
PY
