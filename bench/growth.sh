#!/usr/bin/env bash
# How the cost grows with the work, side by side with HAProxy (TCP mode, mutual TLS, the same
# certificates and stand-in engine) in one run. Needs: apt-get install haproxy.
#
#   bash bench/growth.sh [sizes] [routes] [idle]      (all three when none is named)
#
#   sizes   messages of 1 KiB, 16 KiB, 256 KiB, 1 MiB and 8 MiB at 1 and 8 closed-loop
#           connections, medians of 3 rounds whose order alternates: messages/s, MB/s, server
#           CPU per MB (from /proc), p50/p99; the proxy's peak RSS (sampled every 20 ms) and its
#           RSS 10 s after the load of that size stopped, against its idle RSS after a short
#           warm-up with small messages. The proxy runs as it ships (strict
#           validation, ACK correlation, audit records in its log) with max_message_bytes 16 MiB.
#   routes  1, 50 and 200 routes, each its own mutual-TLS listener and engine target: time from
#           exec to /readyz, RSS, idle CPU over 30 s, /metrics bytes (plain and gzip) and scrape
#           time, a no-op reload and a one-route change (SIGHUP to the moment
#           config_last_reload_success_timestamp_seconds says it was applied); HAProxy with as
#           many frontends for ready time, RSS and idle CPU.
#   idle    10,000 idle mutual-TLS connections (one message each) held while 64 senders work:
#           their rate against 64 alone, KiB per idle connection. HAProxy holds a client and a
#           server descriptor per connection, so it gets 9,000 in this machine's hard limit of
#           20,000 open files.
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(sizes routes idle)
source "$(dirname "$0")/lib.sh"
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
start_engine
# GROWTH_RESULTS keeps the raw lines (they are in the work directory otherwise, removed at exit).
results=${GROWTH_RESULTS:-$work/results}
: > "$results"

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# start_pair MAX_CONNECTIONS [HAPROXY_MAXCONN]: the proxy (sets $proxy_pid, $proxy_port, $admin_port) and HAProxy
# (sets $haproxy_pid, $haproxy_port) in front of $engine_port.
start_pair() {
    admin_port=$(free_port); proxy_port=$(free_port); haproxy_port=$(free_port)
    ROUTE_YAML="    validation: { mode: strict, max_message_bytes: 16777216 }
    limits: { max_connections: $(( $1 + 200 )), max_connections_per_source: 0 }" \
        write_proxy_yaml "$work/proxy.yaml" "$proxy_port" "$admin_port"
    "$bin" run -c "$work/proxy.yaml" 2>"$work/proxy.log" & pids+=($!); proxy_pid=$!
    start_haproxy "$haproxy_port" "${2:-$(( $1 + 100 ))}"
    wait_port "$proxy_port"; wait_port "$haproxy_port"
    sleep 0.5
}

# cpu_ns PID: the CPU time of PID's threads so far, in ns (schedstat: finer than /proc/PID/stat's
# clock ticks, which a run of a few large messages would round to nothing).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'; }

# load SERVER_PORT SERVER_PID ARGS…: a bench run; prints its RESULT line and cpu_s (the server's
# CPU time over the run).
load() {
    local port=$1 pid=$2 before after out; shift 2
    before=$(cpu_ns "$pid")
    out=$(bench_result --to "127.0.0.1:$port" "${tls[@]}" "$@")
    after=$(cpu_ns "$pid")
    echo "$out cpu_s=$(python3 -c "print(($after - $before) / 1e9)")"
}

# peak_rss PID OUT: samples VmRSS every 20 ms into OUT (the highest seen) until killed.
peak_rss() {
    local peak=0 now
    while now=$(rss_kib "$1" 2>/dev/null); do
        (( now > peak )) && { peak=$now; echo "$peak" > "$2"; }
        sleep 0.02
    done
}

sizes() {
    start_pair 100
    # The idle RSS of a proxy that has served: after a short load of small messages (its
    # threads' heaps and caches exist), not the RSS before its first connection.
    bench_result --to "127.0.0.1:$proxy_port" "${tls[@]}" --connections 8 --messages 500 >/dev/null
    sleep 3
    local idle; idle=$(rss_kib "$proxy_pid")
    echo "idle_rss kib=$idle" >> "$results"
    for size in 1024 16384 262144 1048576 8388608; do
        # 256 MiB for one connection (40 to 20,000 messages), a quarter of that per connection
        # for eight (10 to 5,000 each): runs of a second or more at every size.
        local per=$(( 268435456 / size )); (( per < 40 )) && per=40; (( per > 20000 )) && per=20000
        local per8=$(( per / 4 )); (( per8 < 10 )) && per8=10; (( per8 > 5000 )) && per8=5000
        echo 0 > "$work/peak"
        peak_rss "$proxy_pid" "$work/peak" & local sampler=$!
        for round in 1 2 3; do
            local order=(mllp-proxy haproxy)
            (( round % 2 == 0 )) && order=(haproxy mllp-proxy)
            for s in "${order[@]}"; do
                local port=$proxy_port pid=$proxy_pid
                [ "$s" = haproxy ] && { port=$haproxy_port; pid=$haproxy_pid; }
                echo "size $size c1 $s msgs=$(( per + 2 )) $(load "$port" "$pid" --size "$size" --connections 1 --messages "$per" --warmup 2)" >> "$results"
                echo "size $size c8 $s msgs=$(( (per8 + 2) * 8 )) $(load "$port" "$pid" --size "$size" --connections 8 --messages "$per8" --warmup 2)" >> "$results"
            done
        done
        kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
        sleep 10
        echo "memory $size idle_kib=$idle peak_kib=$(cat "$work/peak") after_kib=$(rss_kib "$proxy_pid")" >> "$results"
    done
    kill "$proxy_pid" "$haproxy_pid"; wait "$proxy_pid" "$haproxy_pid" 2>/dev/null || true
}

routes() {
    python3 "$(dirname "$0")/growth_routes.py" "$bin" "$certs" "$engine_port" "$work" >> "$results"
}

idle() {
    local held=10000 hheld=9000
    start_pair "$held" $(( hheld + 100 ))
    for s in mllp-proxy haproxy; do
        local port=$proxy_port pid=$proxy_pid n=$held
        [ "$s" = haproxy ] && { port=$haproxy_port; pid=$haproxy_pid; n=$hheld; }
        local alone; alone=$(load "$port" "$pid" --connections 64 --messages 1000 --warmup 20)
        local before; before=$(rss_kib "$pid")
        hold_idle "$port" "$n" "$work/hold.$s"
        sleep 2
        local during; during=$(rss_kib "$pid")
        local busy; busy=$(load "$port" "$pid" --connections 64 --messages 1000 --warmup 20)
        echo "idle $s held=$n per_conn_kib=$(python3 -c "print(($during - $before) / $n)") alone_rate=$(field "$alone" msgs_per_sec) busy_rate=$(field "$busy" msgs_per_sec) alone_p99=$(field "$alone" p99_us) busy_p99=$(field "$busy" p99_us)" >> "$results"
        kill "$holder"; wait "$holder" 2>/dev/null || true
    done
    kill "$proxy_pid" "$haproxy_pid"; wait "$proxy_pid" "$haproxy_pid" 2>/dev/null || true
}

for section in "${sections[@]}"; do
    echo "== $section" >&2
    "$section"
done
python3 "$(dirname "$0")/growth_table.py" "$results"
