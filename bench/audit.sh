#!/usr/bin/env bash
# The cost of the audit trail: the same proxy with audit.messages true (a record per message,
# into the log, into audit.file, or into audit.file and over mutual TLS to an rsyslog
# collector on loopback, when rsyslogd with rsyslog-gnutls is installed) and false, 64
# mutual-TLS senders, one engine, medians of 3 interleaved rounds, reported as throughput and
# proxy CPU per message (the syslog sender's thread is in the proxy's CPU).
#
#   bash bench/audit.sh [MESSAGES_PER_SENDER] [SIZE]
n=${1:-1000}
size=${2:-1024}
source "$(dirname "$0")/lib.sh"

start_engine

declare -A port pid
proxy() {
    local name=$1 audit=$2 admin_port
    port[$name]=$(free_port); admin_port=$(free_port)
    cat > "$work/$name.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: warn }
audit: $audit
routes:
  - name: $name
    listen: "127.0.0.1:${port[$name]}"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] }
YAML
    "$bin" run -c "$work/$name.yaml" 2>/dev/null & pids+=($!)
    pid[$name]=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "proxy $name did not become ready" >&2; exit 1
}
proxy off "{ messages: false }"
proxy log "{ messages: true }"
proxy file "{ messages: true, file: $work/audit.log }"
names=(off log file)
if command -v rsyslogd >/dev/null && dpkg -s rsyslog-gnutls >/dev/null 2>&1; then
    syslog_port=$(free_port)
    mkdir -p "$work/rsyslog"
    cat > "$work/rsyslog.conf" <<CONF
global(workDirectory="$work/rsyslog" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="$certs/ca.crt" DefaultNetstreamDriverCertFile="$certs/server.crt" DefaultNetstreamDriverKeyFile="$certs/server.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name" PermittedPeer=["sender.example.org"])
input(type="imtcp" port="$syslog_port" address="127.0.0.1")
*.* action(type="omfile" file="$work/syslog.log")
CONF
    rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rsyslog.pid" 2>/dev/null & pids+=($!)
    proxy syslog "{ messages: true, file: $work/audit-syslog.log, syslog: [{ name: bench, address: \"127.0.0.1:$syslog_port\", tls: { ca: $certs/ca.crt, certificate: $certs/client.crt, private_key: $certs/client.key, server_name: localhost } }] }"
    names+=(syslog)
fi

declare -A r cpu
order=("${names[@]}")
for round in 1 2 3; do
    order=("${order[@]:1}" "${order[0]}")
    for name in "${order[@]}"; do
        before=$(cpu_seconds "${pid[$name]}")
        r[$name,$round]=$(bench_result --to "127.0.0.1:${port[$name]}" "${tls[@]}" --connections 64 --messages "$n" --warmup 20 --size "$size")
        after=$(cpu_seconds "${pid[$name]}")
        cpu[$name,$round]=$(python3 -c "print(($after - $before) / (64 * $n) * 1e6)")
    done
done

echo "| audit | msg/s (median of 3) | vs off | p99 µs | proxy CPU µs/msg |"
echo "|---|---|---|---|---|"
for name in "${names[@]}"; do
    python3 - "$name" "${r[$name,1]}" "${r[$name,2]}" "${r[$name,3]}" "${r[off,1]}" "${r[off,2]}" "${r[off,3]}" \
        "${cpu[$name,1]}" "${cpu[$name,2]}" "${cpu[$name,3]}" <<'PY'
import re, statistics, sys
name, *rest = sys.argv[1:]
mine, base, cpu = rest[:3], rest[3:6], [float(c) for c in rest[6:]]
f = lambda l, k: float(re.search(k + r"=([0-9.]+)", l).group(1))
med = lambda ls, k: statistics.median(f(l, k) for l in ls)
label = {"off": "messages: false", "log": "messages: true, into the log", "file": "messages: true, audit.file", "syslog": "messages: true, audit.file and syslog over mutual TLS"}[name]
print(f"| {label} | {med(mine, 'msgs_per_sec'):.0f} | {med(mine, 'msgs_per_sec') / med(base, 'msgs_per_sec'):.2f} | {med(mine, 'p99_us'):.0f} | {statistics.median(cpu):.1f} |")
PY
done
echo "audit file: $(wc -l < "$work/audit.log") records"
if [ -n "${syslog_port:-}" ]; then
    echo "syslog: $(wc -l < "$work/audit-syslog.log") records written, $(wc -l < "$work/syslog.log") received by rsyslog"
fi
