#!/usr/bin/env bash
# The egress direction side by side with stunnel in client mode: a local engine's plain MLLP
# in, mutual TLS out to a partner. The partner is `ack-server --cert --key --client-ca` (MLLP
# over mutual TLS, AA to everything), the same for both; the load generator is the local
# engine. mllp-proxy runs as it ships (strict validation, ACK correlation, the audit trail in
# its log, a pooled upstream); stunnel opens one TLS connection per local connection.
# Needs: apt-get install stunnel4.
#
#   bash bench/egress.sh [SIZE]
#
# Measured, medians of 3 rounds whose order alternates, with the egress process's CPU per
# message from /proc:
#   1. 1 and 64 closed-loop local connections;
#   2. 32 local connections that each close after every message (legacy engines that send one
#      message per connection): stunnel pays a full TLS handshake with the partner per
#      message, mllp-proxy reuses its pooled connections;
#   3. the TLS handshakes with the partner per message in (2).
size=${1:-1024}
source "$(dirname "$0")/lib.sh"
command -v stunnel4 >/dev/null || { echo "needs stunnel4 (apt-get install stunnel4)" >&2; exit 1; }

partner_port=$(free_port)
RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$partner_port" \
    --cert "$certs/server.crt" --key "$certs/server.key" --client-ca "$certs/ca.crt" 2>"$work/partner.log" & pids+=($!)

declare -A port pid
admin=$(free_port); port[mllp-proxy]=$(free_port)
cat > "$work/egress.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin" }
routes:
  - name: egress
    listen: "127.0.0.1:${port[mllp-proxy]}"
    plaintext: true
    upstream:
      targets: ["127.0.0.1:$partner_port"]
      tls: { ca: $certs/ca.crt, certificate: $certs/client.crt, private_key: $certs/client.key, server_name: localhost }
    limits: { max_connections_per_source: 0 }
YAML
"$bin" run -c "$work/egress.yaml" 2>"$work/egress.log" & pids+=($!); pid[mllp-proxy]=$!

port[stunnel]=$(free_port)
start_stunnel "${port[stunnel]}" "$partner_port" client; pid[stunnel]=$stunnel_pid

for s in mllp-proxy stunnel; do wait_port "${port[$s]}"; done
sleep 0.5

# load SERVER ARGS…: one bench run through SERVER's egress; its RESULT line plus the egress
# process's CPU time per message.
load() {
    local s=$1; shift
    local before after out msgs
    before=$(cpu_seconds "${pid[$s]}")
    out=$(bench_result --to "127.0.0.1:${port[$s]}" --size "$size" "$@")
    after=$(cpu_seconds "${pid[$s]}")
    msgs=$(python3 -c 'import sys; a=sys.argv[1:]; print(int(a[a.index("--connections")+1]) * int(a[a.index("--messages")+1]))' "$@")
    echo "$out cpu_us=$(python3 -c "print(($after - $before) * 1e6 / $msgs)")"
}

# TLS connections each egress has opened to the partner so far: mllp-proxy audits each one
# (`upstream_session`), stunnel logs each.
opened() {
    case $1 in
        mllp-proxy) grep -c 'event="upstream_session"' "$work/egress.log" || true ;;
        stunnel) grep -c 'connected remote server' "$work/stunnel.log" || true ;;
    esac
}

results=$work/results
: > "$results"
order=(mllp-proxy stunnel)
for round in 1 2 3; do
    order=("${order[1]}" "${order[0]}")
    for s in "${order[@]}"; do
        echo "conns1 $s $(load "$s" --connections 1 --messages 10000 --warmup 200)" >> "$results"
        echo "conns64 $s $(load "$s" --connections 64 --messages 1000 --warmup 20)" >> "$results"
        echo "reconnect $s $(load "$s" --connections 32 --messages 100 --warmup 2 --reconnect)" >> "$results"
    done
done
# TLS handshakes with the partner per message, with reconnecting local senders.
for s in mllp-proxy stunnel; do
    before=$(opened "$s")
    load "$s" --connections 32 --messages 100 --warmup 0 --reconnect >/dev/null
    sleep 0.2
    echo "partner $s handshakes=$(( $(opened "$s") - before )) messages=3200" >> "$results"
done

python3 - "$results" <<'PY'
import re, statistics, sys
rows = [l.split(maxsplit=2) for l in open(sys.argv[1]) if l.strip()]
def val(text, key):
    m = re.search(key + r"=([0-9.]+)", text)
    return float(m.group(1)) if m else float("nan")
def med(kind, s, key):
    return statistics.median(val(t, key) for k, n, t in rows if k == kind and n == s)
ratio = lambda x, base: f"{x / base:.2f}" if base else "-"
titles = {
    "conns1": "1 local connection",
    "conns64": "64 local connections",
    "reconnect": "32 local connections, each closed after every message",
}
for kind, title in titles.items():
    print(f"\n{title}, medians of 3; ratio = mllp-proxy ÷ stunnel (client mode)\n")
    print("| egress | msg/s | p99 µs | egress CPU µs/msg |")
    print("|---|---|---|---|")
    v = {s: {k: med(kind, s, k) for k in ("msgs_per_sec", "p99_us", "cpu_us")} for s in ("mllp-proxy", "stunnel")}
    for s in ("mllp-proxy", "stunnel"):
        print(f"| {s} | {v[s]['msgs_per_sec']:.0f} | {v[s]['p99_us']:.0f} | {v[s]['cpu_us']:.1f} |")
    m, st = v["mllp-proxy"], v["stunnel"]
    print(f"| ratio | {ratio(m['msgs_per_sec'], st['msgs_per_sec'])} | {ratio(m['p99_us'], st['p99_us'])} | "
          f"{ratio(m['cpu_us'], st['cpu_us'])} |")
print("\nTLS handshakes with the partner, 32 local senders reconnecting for 3,200 messages\n")
print("| egress | handshakes | per message |")
print("|---|---|---|")
for k, s, t in rows:
    if k == "partner":
        h, m = val(t, "handshakes"), val(t, "messages")
        print(f"| {s} | {h:.0f} | {h / m:.3f} |")
PY
