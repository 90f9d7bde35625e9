#!/usr/bin/env bash
# Fault soak: mutual-TLS senders that resend like real MLLP senders drive mllp-proxy in front of
# an `ack-server` injecting every fault kind, once per `on_upstream_failure` mode; then
# `mllp-proxy soak` checks the delivery promises from the senders' view, the engine's record
# file and the proxy's metrics, and the proxy must stop cleanly on SIGTERM. Exits non-zero on
# any violation. Everything stays on loopback.
#
# Five runs: on_upstream_failure close and nak, each with upstream.max_connections 0 (a pooled
# connection per busy sender) and 2 (16 senders sharing two engine connections, where every
# time-out fault stalls half the pool for ack_timeout: those runs send 3/8 as many messages);
# then nak with 8, which on 2 or more CPUs is split into a share of 4 per session thread.
# SOAK_RUNS="nak:8" picks runs (mode:max_connections).
#
#   bash bench/soak.sh                 # CI size: 16 senders x 4,000 / 1,500 messages (200,000)
#   bash bench/soak.sh --long          # 16 senders x 12,000 / 4,500 messages (600,000)
#   SOAK_SENDERS=8 SOAK_MESSAGES=500 bash bench/soak.sh
senders=${SOAK_SENDERS:-16}
messages=${SOAK_MESSAGES:-4000}
if [ "${1:-}" = "--long" ]; then messages=${SOAK_MESSAGES:-12000}; fi
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
for run in ${SOAK_RUNS-close:0 nak:0 close:2 nak:2 nak:8}; do
    mode=${run%:*} pool=${run#*:}
    n=$messages; [ "$pool" = 0 ] || n=$((messages * 3 / 8))
    engine_port=$(free_port)
    : > "$work/engine-$mode$pool.jsonl"
    RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$engine_port" --log "$work/engine-$mode$pool.jsonl" \
        --seed "$RANDOM" --late-delay 1500ms "${faults[@]}" & pids+=($!)
    proxy_port=$(free_port); admin_port=$(free_port)
    # Two versions of the file, swapped and reloaded (SIGHUP) every few seconds during the
    # run: a reload changes the allow-list (the soak's demo-sender stays in), the pool (a new one each
    # time) and the timeouts while every sender is mid-exchange.
    config=$work/soak-$mode$pool.yaml
    other_pool=$(( pool == 0 ? 4 : pool + 1 ))
    for version in a b; do
        if [ $version = a ]; then p=$pool t=1s allow="[]"; else p=$other_pool t=1100ms allow="[{cn: demo-sender}, {cn: billing-01}]"; fi
        cat > "$config.$version" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: error }
shutdown: { drain_timeout: 10s }
config_reload_interval: 0
routes:
  - name: soak
    listen: "127.0.0.1:$proxy_port"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    allowed_clients: $allow
    upstream: { targets: ["127.0.0.1:$engine_port"], connect_timeout: 1s, ack_timeout: $t, max_connections: $p, idle_timeout: 1s }
    on_upstream_failure: $mode
YAML
    done
    cp "$config.a" "$config"
    "$bin" run -c "$config" 2> "$work/proxy-$mode$pool.log" & proxy_pid=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "== soak, on_upstream_failure: $mode, upstream.max_connections: $pool (and $other_pool on every other reload)"
    (
        n=0
        while kill -0 "$proxy_pid" 2>/dev/null; do
            sleep "${SOAK_RELOAD_EVERY:-3}"
            n=$((n + 1))
            if [ $((n % 2)) = 1 ]; then cp "$config.b" "$config"; else cp "$config.a" "$config"; fi
            kill -HUP "$proxy_pid" 2>/dev/null || true
        done
    ) & reloader=$!
    "$bin" soak --to "127.0.0.1:$proxy_port" "${tls[@]}" --senders "$senders" --messages "$n" \
        --engine-log "$work/engine-$mode$pool.jsonl" --admin "127.0.0.1:$admin_port" --proxy-pid "$proxy_pid" \
        --mode "$mode" --prefix "$mode$pool-" --timeout 20s --require-every-fault || status=1
    kill "$reloader" 2>/dev/null || true
    wait "$reloader" 2>/dev/null || true
    metrics=$(curl -fs "http://127.0.0.1:$admin_port/metrics" || true)
    applied=$(awk '/^mllp_proxy_config_reloads_total\{result="success"\}/ {print $2}' <<< "$metrics")
    refused=$(awk '/^mllp_proxy_config_reloads_total\{result="failure"\}/ {print $2}' <<< "$metrics")
    echo "configuration reloads during the run: ${applied:-?} applied, ${refused:-?} refused"
    if [ "${refused:-1}" != 0 ] || [ "${applied:-0}" = 0 ]; then
        echo "VIOLATION reloads during the soak were refused or did not happen"; status=1
    fi
    kill -TERM "$proxy_pid"
    if wait "$proxy_pid"; then
        echo "proxy stopped on SIGTERM with status 0"
    else
        echo "VIOLATION proxy exited with status $? on SIGTERM"; status=1
    fi
    if grep -q 'panicked' "$work/proxy-$mode$pool.log"; then
        echo "VIOLATION the proxy panicked:"; grep -m3 'panicked' "$work/proxy-$mode$pool.log"; status=1
    fi
done
# The egress direction: the soak's senders speak plain MLLP to an egress route, which forwards
# over mutual TLS to an ingress route in front of the faulty engine (both close on a failure:
# an AR written by the ingress proxy would reach the senders as the partner's ACK, which the
# checker cannot tell from the engine's).
if [ "${SOAK_EGRESS:-1}" = 1 ]; then
    n=$((messages * 3 / 8))
    engine_port=$(free_port)
    : > "$work/engine-egress.jsonl"
    RUST_LOG=warn "$bin" ack-server --listen "127.0.0.1:$engine_port" --log "$work/engine-egress.jsonl" \
        --seed "$RANDOM" --late-delay 1500ms "${faults[@]}" & pids+=($!)
    ingress_port=$(free_port); ingress_admin=$(free_port); egress_port=$(free_port); admin_port=$(free_port)
    cat > "$work/ingress.yaml" <<YAML
admin: { listen: "127.0.0.1:$ingress_admin" }
logging: { level: error }
routes:
  - name: ingress
    listen: "127.0.0.1:$ingress_port"
    tls: { certificate: $certs/server.crt, private_key: $certs/server.key, client_ca: $certs/ca.crt }
    upstream: { targets: ["127.0.0.1:$engine_port"], connect_timeout: 1s, ack_timeout: 1s, idle_timeout: 1s }
YAML
    cat > "$work/egress.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { level: ${SOAK_EGRESS_LOG:-error} }
shutdown: { drain_timeout: 10s }
routes:
  - name: egress
    listen: "127.0.0.1:$egress_port"
    plaintext: true
    upstream:
      targets: ["127.0.0.1:$ingress_port"]
      connect_timeout: 1s
      ack_timeout: 3s
      idle_timeout: 1s
      tls: { ca: $certs/ca.crt, certificate: $certs/client.crt, private_key: $certs/client.key, server_name: localhost }
YAML
    "$bin" run -c "$work/ingress.yaml" 2> "$work/proxy-ingress.log" & pids+=($!)
    "$bin" run -c "$work/egress.yaml" 2> "$work/proxy-egress.log" & proxy_pid=$!
    for port in "$ingress_admin" "$admin_port"; do
        for _ in $(seq 100); do
            curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    # The tunnel up (the egress's health probe completed its handshake) before the senders start.
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$admin_port/metrics" | grep -q '^mllp_proxy_upstream_up{.*} 1' && break
        sleep 0.1
    done
    echo "== soak, egress: plain senders -> egress -> mutual TLS -> ingress -> faulty engine"
    "$bin" soak --to "127.0.0.1:$egress_port" --senders "$senders" --messages "$n" \
        --engine-log "$work/engine-egress.jsonl" --admin "127.0.0.1:$admin_port" --proxy-pid "$proxy_pid" \
        --mode close --prefix "egress-" --timeout 20s --require-every-fault || status=1
    kill -TERM "$proxy_pid"
    wait "$proxy_pid" || { echo "VIOLATION egress proxy exited with status $? on SIGTERM"; status=1; }
    [ -z "${SOAK_KEEP_LOG:-}" ] || cp "$work/proxy-egress.log" "$SOAK_KEEP_LOG"
    if grep -q 'panicked' "$work/proxy-egress.log" "$work/proxy-ingress.log"; then
        echo "VIOLATION a proxy panicked"; status=1
    fi
fi
exit $status
