#!/usr/bin/env bash
# Baseline benchmark: the same load direct to the stand-in engine (plain MLLP) and through
# mllp-proxy (mutual TLS), in one run, reported as ratios. Everything stays on loopback.
#
#   bash bench/run.sh [SIZE_BYTES] [MESSAGES_PER_CONNECTION_AT_1] [MESSAGES_PER_CONNECTION_AT_32]
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-1024}
n1=${2:-5000}
n32=${3:-500}
bin=target/release/mllp-proxy
cargo build --release --quiet

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
engine_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
certs=$PWD/certs-example

cat > "$work/proxy.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: warn }
routes:
  - name: bench
    listen: "127.0.0.1:$proxy_port"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"] }
    validation: { max_message_bytes: 16777216 }
YAML

RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$engine_port" & pids+=($!)
"$bin" run -c "$work/proxy.yaml" & pids+=($!)
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

tls=(--ca "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key" --server-name localhost)
declare -A result
for conns in 1 32; do
    n=$n1; [ "$conns" = 32 ] && n=$n32
    for path in direct proxy; do
        if [ "$path" = direct ]; then args=(--to "127.0.0.1:$engine_port"); else args=(--to "127.0.0.1:$proxy_port" "${tls[@]}"); fi
        line=$("$bin" bench "${args[@]}" --connections "$conns" --messages "$n" --size "$size" 2>/dev/null | grep '^RESULT')
        result[$path,$conns]=$line
        echo "$path conns=$conns: ${line#RESULT }"
    done
done

field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<<"${result[$1]}"; }
echo
echo "| connections | direct msg/s | proxy msg/s | proxy/direct throughput | direct p50 µs | proxy p50 µs | direct p99 µs | proxy p99 µs | proxy/direct p99 |"
echo "|---|---|---|---|---|---|---|---|---|"
for conns in 1 32; do
    dr=$(field "direct,$conns" msgs_per_sec); pr=$(field "proxy,$conns" msgs_per_sec)
    d50=$(field "direct,$conns" p50_us); p50=$(field "proxy,$conns" p50_us)
    d99=$(field "direct,$conns" p99_us); p99=$(field "proxy,$conns" p99_us)
    python3 - "$conns" "$dr" "$pr" "$d50" "$p50" "$d99" "$p99" <<'PY'
import sys
c, dr, pr, d50, p50, d99, p99 = sys.argv[1:]
dr, pr, d99, p99 = float(dr), float(pr), float(d99), float(p99)
print(f"| {c} | {dr:.0f} | {pr:.0f} | {pr/dr:.2f} | {d50} | {p50} | {d99:.0f} | {p99:.0f} | {p99/d99:.2f} |")
PY
done
