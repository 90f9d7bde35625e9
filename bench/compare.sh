#!/usr/bin/env bash
# Side by side with the TLS terminators hospitals use today: HAProxy and stunnel4 (TCP mode),
# both with mutual TLS in front of the same stand-in engine, against mllp-proxy as it ships
# (mutual TLS, strict validation, ACK correlation, the audit trail into its log, the pooled
# upstream in its default setting). Same certificates, same load, same run; every figure is
# also given as a ratio to HAProxy's. Needs: apt-get install stunnel4 haproxy strace.
#
#   bash bench/compare.sh [HELD_CONNECTIONS] [SIZE]
#
# Measured, in this order:
#   1. messages/s, p50 and p99 at 1, 8 and 64 closed-loop connections (medians of 3 rounds whose
#      order rotates), with each server's CPU time per message from /proc;
#   2. new mutual-TLS connections/s: a full handshake (no resumption) + one message + close,
#      32 connections at a time;
#   3. syscalls per message (`strace -c -f` attached for a short 64-connection run);
#   4. memory per idle connection: RSS before and while HELD_CONNECTIONS connections (one
#      message each, then idle) are open; the 64-connection load again while they are held;
#      RSS a few seconds after they closed, against RSS at start.
#   5. the egress direction against stunnel in client mode (bench/egress.sh).
# The default of 9,000 held connections fits HAProxy in this machine's hard limit of 20,000
# open files (HAProxy holds a client and a server descriptor per connection).
held=${1:-9000}
size=${2:-1024}
source "$(dirname "$0")/lib.sh"
for tool in stunnel4 haproxy strace; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install stunnel4 haproxy strace)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
(( held + 200 <= nofile / 2 )) || { echo "$held held connections need $(( 2 * held + 400 )) open files; the limit is $nofile" >&2; exit 1; }

start_engine

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

declare -A port pid start_rss
mllp_admin=$(free_port); port[mllp-proxy]=$(free_port)
cat > "$work/mllp-proxy.yaml" <<YAML
admin: { listen: "127.0.0.1:$mllp_admin" }
routes:
  - name: bench
    listen: "127.0.0.1:${port[mllp-proxy]}"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] }
    validation: { mode: strict }
    limits: { max_connections: $(( held + 200 )), max_connections_per_source: 0 }
YAML
# The log (at its default level, info, with one audit record per message) goes to a file, as
# it would to a log pipe.
"$bin" run -c "$work/mllp-proxy.yaml" 2>"$work/mllp-proxy.log" & pids+=($!); pid[mllp-proxy]=$!

port[stunnel]=$(free_port)
start_stunnel "${port[stunnel]}" "$engine_port" server; pid[stunnel]=$stunnel_pid

port[haproxy]=$(free_port)
start_haproxy "${port[haproxy]}" $(( held + 100 )); pid[haproxy]=$haproxy_pid

servers=(mllp-proxy haproxy stunnel)
for s in "${servers[@]}"; do echo "waiting for $s" >&2; wait_port "${port[$s]}"; done
sleep 0.5
for s in "${servers[@]}"; do start_rss[$s]=$(rss_kib "${pid[$s]}"); done

# load SERVER ARGS…: one bench run against SERVER; prints its RESULT line plus cpu_us (the
# server's CPU time per measured message, warm-up included in neither).
load() {
    local s=$1; shift
    local to=(--to "127.0.0.1:${port[$s]:-}" "${tls[@]}")
    [ "$s" = direct ] && to=(--to "127.0.0.1:$engine_port")
    local watched=${pid[$s]:-}
    local before after out
    [ -n "$watched" ] && before=$(cpu_seconds "$watched")
    out=$(bench_result "${to[@]}" --size "$size" "$@")
    [ -n "$watched" ] && after=$(cpu_seconds "$watched")
    local msgs
    msgs=$(python3 -c 'import sys; a=sys.argv[1:]; print(int(a[a.index("--connections")+1]) * int(a[a.index("--messages")+1]))' "$@")
    if [ -n "$watched" ]; then
        echo "$out cpu_us=$(python3 -c "print(($after - $before) * 1e6 / $msgs)")"
    else
        echo "$out cpu_us=0"
    fi
}

results=$work/results
: > "$results"
order=(direct "${servers[@]}")
for round in 1 2 3; do
    order=("${order[@]:1}" "${order[0]}")
    for s in "${order[@]}"; do
        echo "conns1 $s $(load "$s" --connections 1 --messages 10000 --warmup 200)" >> "$results"
        echo "conns8 $s $(load "$s" --connections 8 --messages 3000 --warmup 50)" >> "$results"
        echo "conns64 $s $(load "$s" --connections 64 --messages 1000 --warmup 20)" >> "$results"
        [ "$s" = direct ] && continue
        echo "reconnect $s $(load "$s" --connections 32 --messages 60 --warmup 2 --reconnect)" >> "$results"
    done
done

for s in "${servers[@]}"; do
    syscalls_per_message "$s" "${pid[$s]}" --to "127.0.0.1:${port[$s]}" "${tls[@]}" --size "$size" >> "$results"
done

for s in "${servers[@]}"; do
    before=$(rss_kib "${pid[$s]}")
    hold_idle "${port[$s]}" "$held" "$work/hold.$s" "$size"
    sleep 2
    during=$(rss_kib "${pid[$s]}")
    echo "idle $s before_kib=$before held_kib=$during per_conn_kib=$(python3 -c "print(($during - $before) / $held)")" >> "$results"
    echo "busy_with_idle $s $(load "$s" --connections 64 --messages 1000 --warmup 20)" >> "$results"
    kill "$holder"; wait "$holder" 2>/dev/null || true
    sleep 5
    echo "after $s start_kib=${start_rss[$s]} after_kib=$(rss_kib "${pid[$s]}")" >> "$results"
done

python3 - "$results" "$held" <<'PY'
import re, statistics, sys
path, held = sys.argv[1], int(sys.argv[2])
rows = [l.split(maxsplit=2) for l in open(path) if l.strip()]
def val(text, key):
    m = re.search(key + r"=([0-9.]+)", text)
    return float(m.group(1)) if m else float("nan")
def med(kind, s, key):
    return statistics.median(val(t, key) for k, n, t in rows if k == kind and n == s)
def one(kind, s, key):
    return next(val(t, key) for k, n, t in rows if k == kind and n == s)
servers = ["mllp-proxy", "haproxy", "stunnel"]
ratio = lambda x, base: f"{x / base:.2f}" if base else "-"

for c in ("1", "8", "64"):
    kind = "conns" + c
    print(f"\n{c} connection(s), medians of 3; ratio = ÷ HAProxy\n")
    print("| path | msg/s | ratio | p50 µs | ratio | p99 µs | ratio | server CPU µs/msg | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    h = {k: med(kind, "haproxy", k) for k in ("msgs_per_sec", "p50_us", "p99_us", "cpu_us")}
    for s in ["direct"] + servers:
        v = {k: med(kind, s, k) for k in h}
        cpu = "-" if s == "direct" else f"{v['cpu_us']:.1f} | {ratio(v['cpu_us'], h['cpu_us'])}"
        if s == "direct":
            cpu = "- | -"
        print(f"| {s} | {v['msgs_per_sec']:.0f} | {ratio(v['msgs_per_sec'], h['msgs_per_sec'])} | "
              f"{v['p50_us']:.0f} | {ratio(v['p50_us'], h['p50_us'])} | {v['p99_us']:.0f} | "
              f"{ratio(v['p99_us'], h['p99_us'])} | {cpu} |")

print("\nNew mutual-TLS connections (full handshake + one message + close, 32 at a time), medians of 3\n")
print("| path | connections/s | ratio | server CPU µs/connection | ratio |")
print("|---|---|---|---|---|")
hr, hc = med("reconnect", "haproxy", "msgs_per_sec"), med("reconnect", "haproxy", "cpu_us")
for s in servers:
    r, c = med("reconnect", s, "msgs_per_sec"), med("reconnect", s, "cpu_us")
    print(f"| {s} | {r:.0f} | {ratio(r, hr)} | {c:.0f} | {ratio(c, hc)} |")

print("\nSyscalls per message at 64 connections (strace -c -f)\n")
print("| path | syscalls/msg | busiest |")
print("|---|---|---|")
for k, s, t in rows:
    if k == "syscalls":
        print(f"| {s} | {val(t, 'per_msg'):.2f} | {t.split('top=')[1].strip()} |")

print(f"\n{held} idle connections held (one message each, then idle)\n")
print("| path | KiB per idle connection | ratio | 64 busy msg/s with them held | ÷ without | RSS at start MiB | RSS after they closed MiB | after ÷ start |")
print("|---|---|---|---|---|---|---|---|")
hk = one("idle", "haproxy", "per_conn_kib")
for s in servers:
    k = one("idle", s, "per_conn_kib")
    busy, alone = one("busy_with_idle", s, "msgs_per_sec"), med("conns64", s, "msgs_per_sec")
    start, after = one("after", s, "start_kib"), one("after", s, "after_kib")
    print(f"| {s} | {k:.1f} | {ratio(k, hk)} | {busy:.0f} | {busy / alone:.2f} | {start / 1024:.1f} | "
          f"{after / 1024:.1f} | {after / start:.2f} |")
PY

# The egress direction (plain in, mutual TLS out) against stunnel in client mode.
echo
echo "== egress: bash bench/egress.sh $size"
bash "$(dirname "$0")/egress.sh" "$size"
