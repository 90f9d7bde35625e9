# Shared by the bench scripts: start a stand-in engine and proxies on free loopback ports, run
# `mllp-proxy bench`, clean up on exit. Source it; do not run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=target/release/mllp-proxy
certs=$PWD/certs-example
tls=(--ca "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key" --server-name localhost)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something listens on PORT; exits with the servers' logs after 10 s.
wait_port() {
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
    echo "port $1 did not open" >&2; cat "$work"/*.err "$work"/*.log >&2 2>/dev/null; exit 1
}

# start_engine: sets $engine_port.
start_engine() {
    engine_port=$(free_port)
    RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$engine_port" & pids+=($!)
    sleep 0.3
}

# start_haproxy PORT MAXCONN: HAProxy in TCP mode on PORT with the example certificates
# (mutual TLS, as the proxy), forwarding to $engine_port; sets $haproxy_pid.
start_haproxy() {
    cat "$certs/server.crt" "$certs/server.key" > "$work/haproxy.pem"
    cat > "$work/haproxy.cfg" <<CONF
global
  maxconn $2
defaults
  mode tcp
  timeout connect 5s
  timeout client 15m
  timeout server 15m
frontend mllp
  bind 127.0.0.1:$1 ssl crt $work/haproxy.pem ca-file $certs/ca.crt verify required ssl-min-ver TLSv1.2
  default_backend engine
backend engine
  server e1 127.0.0.1:$engine_port
CONF
    haproxy -q -f "$work/haproxy.cfg" 2>"$work/haproxy.err" & pids+=($!)
    haproxy_pid=$!
}

# start_stunnel PORT CONNECT_PORT ROLE: stunnel4 on PORT with the example certificates,
# verifying its peer's chain; ROLE server: mutual TLS in, plain to CONNECT_PORT (as the proxy's
# ingress), ROLE client: plain in, TLS to CONNECT_PORT (as an egress route). Logs to
# $work/stunnel.log; sets $stunnel_pid.
start_stunnel() {
    local side
    if [ "$3" = client ]; then
        side="client = yes
cert = $certs/client.crt
key = $certs/client.key
checkHost = localhost"
    else
        side="cert = $certs/server.crt
key = $certs/server.key
requireCert = yes"
    fi
    cat > "$work/stunnel.conf" <<CONF
foreground = yes
pid =
output = $work/stunnel.log
[mllp]
accept = 127.0.0.1:$1
connect = 127.0.0.1:$2
CAfile = $certs/ca.crt
verifyChain = yes
sslVersionMin = TLSv1.2
$side
CONF
    stunnel4 "$work/stunnel.conf" >/dev/null 2>&1 & pids+=($!)
    stunnel_pid=$!
}

# write_proxy_yaml FILE PORT ADMIN_PORT: one route on PORT in front of $engine_port, as it
# ships (default log level, strict validation, audit records), with $TOP_YAML (top-level
# keys) and $ROUTE_YAML (keys of the route, indented four spaces) added.
write_proxy_yaml() {
    cat > "$1" <<YAML
admin: { listen: "127.0.0.1:$3" }
${TOP_YAML:-}
routes:
  - name: p
    listen: "127.0.0.1:$2"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] }
${ROUTE_YAML:-}
YAML
}

# start_proxy NAME MODE: a proxy route with validation MODE; sets $proxy_port.
start_proxy() {
    local name=$1 mode=$2 admin_port
    proxy_port=$(free_port); admin_port=$(free_port)
    cat > "$work/$name.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: warn }
routes:
  - name: $name
    listen: "127.0.0.1:$proxy_port"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] }
    validation: { mode: $mode, max_message_bytes: 16777216 }
YAML
    "$bin" run -c "$work/$name.yaml" & pids+=($!)
    proxy_pid=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "proxy $name did not become ready" >&2; exit 1
}

# hold_idle PORT N OUT [SIZE]: N mutual-TLS connections to PORT, one message each, then held idle
# for up to 10 minutes by a load generator in the background (its output in OUT); returns once
# all are open and sets $holder (kill it to close them). Exits when they cannot be opened.
hold_idle() {
    "$bin" bench --to "127.0.0.1:$1" "${tls[@]}" --size "${4:-1024}" --hold "$2" --hold-for 600s \
        > "$3" 2>&1 & holder=$!
    for _ in $(seq 1200); do
        grep -q '^HELD' "$3" && return
        kill -0 "$holder" 2>/dev/null || { echo "holding $2 connections to port $1 failed: $(tail -1 "$3")" >&2; exit 1; }
        sleep 0.5
    done
}

# bench_result ARGS…: runs the load generator, prints its RESULT line.
bench_result() { "$bin" bench "$@" 2>/dev/null | grep '^RESULT'; }

# syscalls_per_message LABEL PID BENCH_ARGS…: `strace -c -f` on PID while 64 connections send
# 300 messages each (bench_result BENCH_ARGS --connections 64 --messages 300); prints
# "syscalls LABEL per_msg=N top=call:n,…" (the busiest four, per message). strace slows every
# call: the counts are the result, not the rate.
syscalls_per_message() {
    local label=$1 pid=$2 tracer; shift 2
    strace -c -f -q -o "$work/strace.$label" -p "$pid" & tracer=$!
    sleep 1
    bench_result "$@" --connections 64 --messages 300 --warmup 0 >/dev/null
    kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
    python3 - "$label" "$work/strace.$label" $((64 * 300)) <<'PY'
import sys
label, path, msgs = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
detail = ",".join(f"{k}:{v / msgs:.2f}" for k, v in top)
print(f"syscalls {label} per_msg={sum(calls.values()) / msgs:.2f} top={detail}")
PY
}

# field LINE NAME: a number from a RESULT line.
field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<<"$1"; }

# cpu_seconds PID: a process's CPU time so far (user + system), from /proc at clock-tick
# resolution (process_cpu_seconds_total is whole seconds only).
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
