#!/usr/bin/env bash
# Fault soak: mutual-TLS senders that resend like real MLLP senders drive mllp-proxy in front of
# an `ack-server` injecting every fault kind, once per `on_upstream_failure` mode; then
# `mllp-proxy soak` checks the delivery promises from the senders' view, the engine's record
# file and the proxy's metrics, and the proxy must stop cleanly on SIGTERM. Exits non-zero on
# any violation. Everything stays on loopback.
#
#   bash bench/soak.sh                 # CI size: 2 modes x 16 senders x 8,000 messages (256,000)
#   bash bench/soak.sh --long          # 2 modes x 16 senders x 16,000 messages (512,000)
#   SOAK_SENDERS=8 SOAK_MESSAGES=500 bash bench/soak.sh
senders=${SOAK_SENDERS:-16}
messages=${SOAK_MESSAGES:-8000}
if [ "${1:-}" = "--long" ]; then messages=${SOAK_MESSAGES:-16000}; fi
source "$(dirname "$0")/lib.sh"

# Every fault kind, 9.6% of messages in all. `late` and `no-answer` each cost a sender one
# ack_timeout, so they are rarer.
faults=(
    --fault no-answer=0.002 --fault late=0.002
    --fault close=0.008 --fault reset=0.008 --fault partial=0.008 --fault garbage=0.008
    --fault wrong-msa2=0.008 --fault duplicate=0.01 --fault drip=0.004 --fault stray=0.01
    --fault close-after-ack=0.01 --fault ae=0.004 --fault ar=0.01
)

status=0
for mode in close nak; do
    engine_port=$(free_port)
    : > "$work/engine-$mode.jsonl"
    RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$engine_port" --log "$work/engine-$mode.jsonl" \
        --seed "$RANDOM" --late-delay 1500ms "${faults[@]}" & pids+=($!)
    proxy_port=$(free_port); admin_port=$(free_port)
    cat > "$work/soak-$mode.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: error }
shutdown: { drain_timeout: 10s }
routes:
  - name: soak
    listen: "127.0.0.1:$proxy_port"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"], connect_timeout: 1s, ack_timeout: 1s }
    on_upstream_failure: $mode
YAML
    "$bin" run -c "$work/soak-$mode.yaml" 2> "$work/proxy-$mode.log" & proxy_pid=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "== soak, on_upstream_failure: $mode"
    "$bin" soak --to "127.0.0.1:$proxy_port" "${tls[@]}" --senders "$senders" --messages "$messages" \
        --engine-log "$work/engine-$mode.jsonl" --admin "127.0.0.1:$admin_port" --proxy-pid "$proxy_pid" \
        --mode "$mode" --prefix "$mode-" --timeout 20s --require-every-fault || status=1
    kill -TERM "$proxy_pid"
    if wait "$proxy_pid"; then
        echo "proxy stopped on SIGTERM with status 0"
    else
        echo "VIOLATION proxy exited with status $? on SIGTERM"; status=1
    fi
    if grep -q 'panicked' "$work/proxy-$mode.log"; then
        echo "VIOLATION the proxy panicked:"; grep -m3 'panicked' "$work/proxy-$mode.log"; status=1
    fi
done
exit $status
