#!/usr/bin/env bash
# mllp-proxy and HAProxy (TCP mode, the same certificates) loaded in turn by 64 senders,
# ROUNDS rounds (default 4); prints each round's msg/s and CPU per message (user and system)
# of both, and the medians of the per-round ratios. For questions compare.sh is too slow to
# repeat for, such as "what does the HL7 work cost against a byte pipe":
#
#   TOP_YAML='audit: { messages: false }' ROUTE_YAML='    validation: { mode: "off" }' bash bench/vs-haproxy.sh
#
# Needs haproxy (apt-get install haproxy).
rounds=${ROUNDS:-4}
source "$(dirname "$0")/lib.sh"
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
start_engine

pport=$(free_port); admin=$(free_port)
write_proxy_yaml "$work/p.yaml" "$pport" "$admin"
"$bin" run -c "$work/p.yaml" 2>"$work/p.log" & pids+=($!); ppid=$!

hport=$(free_port)
start_haproxy "$hport" 1000; hpid=$haproxy_pid
sleep 1
kill -0 "$ppid" 2>/dev/null || { echo "mllp-proxy did not start:" >&2; cat "$work/p.log" >&2; exit 1; }

ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
lines=()
for round in $(seq "$rounds"); do
    # Each side goes first in every other round: running second was seen to cost ~5%.
    order="mllp-proxy haproxy"; [ $((round % 2)) = 0 ] && order="haproxy mllp-proxy"
    for side in $order; do
        port=$pport; pid=$ppid
        [ "$side" = haproxy ] && { port=$hport; pid=$hpid; }
        read -r u0 s0 < <(ticks "$pid")
        out=$(bench_result --to "127.0.0.1:$port" "${tls[@]}" --connections 64 --messages 1000 --warmup 20)
        read -r u1 s1 < <(ticks "$pid")
        lines+=("$side $out ticks=$u0,$s0,$u1,$s1")
    done
done
python3 - "$(getconf CLK_TCK)" "${lines[@]}" <<'PY'
import re, statistics, sys
hz, lines = int(sys.argv[1]), sys.argv[2:]
msgs = 64 * 1000
rows = []
for l in lines:
    side = l.split()[0]
    rate = float(re.search(r"msgs_per_sec=([0-9.]+)", l).group(1))
    u0, s0, u1, s1 = map(int, re.search(r"ticks=([0-9,]+)", l).group(1).split(","))
    user, sys_ = (u1 - u0) * 1e6 / hz / msgs, (s1 - s0) * 1e6 / hz / msgs
    rows.append((side, rate, user, sys_))
    print(f"{side:10} msg/s {rate:9.0f}  CPU µs/msg user {user:5.2f} system {sys_:5.2f}")
pairs = [(a, b) if a[0] == "mllp-proxy" else (b, a) for a, b in zip(rows[0::2], rows[1::2])]
rate = [p[1] / h[1] for p, h in pairs]
cpu = [(p[2] + p[3]) / (h[2] + h[3]) for p, h in pairs]
print("msg/s ÷ HAProxy per round:", ", ".join(f"{r:.2f}" for r in rate), f"median {statistics.median(rate):.2f}")
print("CPU/msg ÷ HAProxy per round:", ", ".join(f"{c:.2f}" for c in cpu), f"median {statistics.median(cpu):.2f}")
PY
