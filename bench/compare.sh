#!/usr/bin/env bash
# Side by side with the TLS terminators hospitals use today: stunnel4 and haproxy (TCP mode),
# both with mutual TLS in front of the same stand-in engine, against mllp-proxy (mutual TLS,
# strict validation, ACK correlation). Same certificates, same load, same run; ratios against
# the direct (plain) baseline. Needs: apt-get install stunnel4 haproxy.
#
#   bash bench/compare.sh [CONNECTIONS] [MESSAGES_PER_CONNECTION] [SIZE]
conns=${1:-8}
n=${2:-2000}
size=${3:-1024}
source "$(dirname "$0")/lib.sh"
command -v stunnel4 >/dev/null && command -v haproxy >/dev/null || { echo "needs stunnel4 and haproxy (apt-get install stunnel4 haproxy)" >&2; exit 1; }

start_engine
start_proxy bench strict; mllp_port=$proxy_port

stunnel_port=$(free_port)
cat > "$work/stunnel.conf" <<CONF
foreground = yes
pid =
output = $work/stunnel.log
[mllp]
accept = 127.0.0.1:$stunnel_port
connect = 127.0.0.1:$engine_port
cert = $certs/server.crt
key = $certs/server.key
CAfile = $certs/ca.crt
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.2
CONF
stunnel4 "$work/stunnel.conf" >/dev/null 2>&1 & pids+=($!)

haproxy_port=$(free_port)
cat "$certs/server.crt" "$certs/server.key" > "$work/haproxy.pem"
cat > "$work/haproxy.cfg" <<CONF
global
  maxconn 1024
defaults
  mode tcp
  timeout connect 5s
  timeout client 15m
  timeout server 15m
frontend mllp
  bind 127.0.0.1:$haproxy_port ssl crt $work/haproxy.pem ca-file $certs/ca.crt verify required ssl-min-ver TLSv1.2
  default_backend engine
backend engine
  server e1 127.0.0.1:$engine_port
CONF
haproxy -q -f "$work/haproxy.cfg" & pids+=($!)
sleep 1

declare -A r
for rounds in 1 2 3; do
    r[direct,$rounds]=$(bench_result --to "127.0.0.1:$engine_port" --connections "$conns" --messages "$n" --size "$size")
    r[mllp-proxy,$rounds]=$(bench_result --to "127.0.0.1:$mllp_port" "${tls[@]}" --connections "$conns" --messages "$n" --size "$size")
    r[stunnel,$rounds]=$(bench_result --to "127.0.0.1:$stunnel_port" "${tls[@]}" --connections "$conns" --messages "$n" --size "$size")
    r[haproxy,$rounds]=$(bench_result --to "127.0.0.1:$haproxy_port" "${tls[@]}" --connections "$conns" --messages "$n" --size "$size")
done

echo "| path | msg/s (median of 3) | vs direct | p50 µs | p99 µs |"
echo "|---|---|---|---|---|"
for path in direct mllp-proxy stunnel haproxy; do
    args=()
    for rounds in 1 2 3; do args+=("${r[$path,$rounds]}"); done
    base=()
    for rounds in 1 2 3; do base+=("${r[direct,$rounds]}"); done
    python3 - "$path" "${args[@]}" "${base[@]}" <<'PY'
import re, statistics, sys
path, lines = sys.argv[1], sys.argv[2:]
f = lambda l, k: float(re.search(k + r"=([0-9.]+)", l).group(1))
mine, base = lines[:3], lines[3:]
rate = statistics.median(f(l, "msgs_per_sec") for l in mine)
brate = statistics.median(f(l, "msgs_per_sec") for l in base)
p50 = statistics.median(f(l, "p50_us") for l in mine)
p99 = statistics.median(f(l, "p99_us") for l in mine)
print(f"| {path} | {rate:.0f} | {rate/brate:.2f} | {p50:.0f} | {p99:.0f} |")
PY
done
