#!/usr/bin/env bash
# User-space instructions per message, counted by callgrind: the proxy (profiling build,
# symbols kept) under valgrind, 64 senders, once with 200 and once with 600 messages each;
# the difference divided by the 25,600 extra messages, so start-up and handshakes cancel.
# Unlike a timing, the count does not move with the machine's load: the tool for a change to
# one function, where an A/B's noise is larger than the change. Kernel work is not counted.
#
#   bash bench/instructions.sh [BINARY] [TOP]     (default target/profiling/mllp-proxy, 25)
#   KEEP_PROFILE=DIR bash bench/instructions.sh   keep the callgrind files in DIR
#   DIRECTION=egress bash bench/instructions.sh   the egress direction: plain senders in,
#                                                 mutual TLS out to a partner (ack-server)
#   SUBJECT=pipe bash bench/instructions.sh       bench/pipe, the bare mutual-TLS byte pipe on
#                                                 the same stack, the floor to compare with
#   SIZE=16384 bash bench/instructions.sh         messages of that size (default 1024)
#
# Needs valgrind (apt-get install valgrind).
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
pipe=false; [ "${SUBJECT:-proxy}" = pipe ] && pipe=true
if $pipe; then
    subject=${1:-bench/pipe/target/release/mllp-proxy-pipe}
    [ -n "${1:-}" ] || cargo build --release --quiet --manifest-path bench/pipe/Cargo.toml
else
    subject=${1:-target/profiling/mllp-proxy}
    [ -n "${1:-}" ] || cargo build --profile profiling --quiet
fi
start_engine
senders=("${tls[@]}")
if [ "${DIRECTION:-ingress}" = egress ]; then
    partner_port=$(free_port)
    RUST_LOG=error "$bin" ack-server --listen "127.0.0.1:$partner_port" \
        --cert "$certs/server.crt" --key "$certs/server.key" --client-ca "$certs/ca.crt" & pids+=($!)
    sleep 0.3
    senders=()
fi

for n in 200 600; do
    pport=$(free_port); admin=$(free_port)
    if [ "${DIRECTION:-ingress}" = egress ]; then
        cat > "$work/p$n.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin" }
routes:
  - name: p
    listen: "127.0.0.1:$pport"
    plaintext: true
    upstream:
      targets: ["127.0.0.1:$partner_port"]
      tls: { ca: $certs/ca.crt, certificate: $certs/client.crt, private_key: $certs/client.key, server_name: localhost }
YAML
    else
        write_proxy_yaml "$work/p$n.yaml" "$pport" "$admin"
    fi
    if $pipe; then
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.$n" "$subject" \
            "127.0.0.1:$pport" "127.0.0.1:$engine_port" "$certs" 2>"$work/v$n.log" &
        vpid=$!; pids+=($vpid)
        wait_port "$pport"
    else
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.$n" "$subject" run -c "$work/p$n.yaml" 2>"$work/v$n.log" &
        vpid=$!; pids+=($vpid)
        for _ in $(seq 150); do
            curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
            sleep 0.2
        done
    fi
    bench_result --to "127.0.0.1:$pport" "${senders[@]}" --connections 64 --messages "$n" --warmup 20 --size "${SIZE:-1024}" >/dev/null
    # The pipe has no SIGINT handler, and a background job's SIGINT is ignored: TERM, which
    # valgrind still turns into a clean exit that writes the profile.
    if $pipe; then kill -TERM "$vpid"; else kill -INT "$vpid"; fi
    wait "$vpid" 2>/dev/null || true
done
# KEEP_PROFILE=DIR keeps both callgrind files there, for callgrind_annotate by source line.
[ -z "${KEEP_PROFILE:-}" ] || cp "$work/cg.200" "$work/cg.600" "$KEEP_PROFILE/"
python3 - "$work/cg.200" "$work/cg.600" "${2:-25}" <<'PY'
import collections, re, subprocess, sys
def functions(path):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    cost = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([0-9,]+) \([ 0-9.]+%\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r" \[[^]]*\]$", "", m.group(2))
            name = name.split(":", 1)[1] if re.match(r"^(\?\?\?|[^ ]*\.(rs|c|S|h)):", name) else name
            cost[name] += int(m.group(1).replace(",", ""))
    return cost
small, large = functions(sys.argv[1]), functions(sys.argv[2])
extra = 64 * 400
per = {f: (large[f] - small[f]) / extra for f in set(small) | set(large)}
print(f"user-space instructions per message: {sum(per.values()):.0f}")
# By part, so that the proxy and the pipe compare layer by layer: what the stack costs both
# (crypto, rustls, tokio) and what only the proxy does (its own code and the byte searches
# and copies it calls).
def part(f):
    for key, name in (("mllp_proxy", "proxy code"), ("memchr", "memchr"), ("memcpy", "memcpy"),
                      ("memmove", "memcpy"), ("aws_lc", "crypto"), ("aes", "crypto"),
                      ("gcm", "crypto"), ("rustls", "rustls"), ("tokio", "tokio"),
                      ("malloc", "allocator"), ("free", "allocator")):
        if key in f:
            return name
    return "other"
parts = collections.Counter()
for f, n in per.items():
    parts[part(f)] += n
print("by part: " + ", ".join(f"{name} {n:.0f}" for name, n in parts.most_common()))
for f, n in sorted(per.items(), key=lambda kv: -kv[1])[: int(sys.argv[3])]:
    print(f"{n:8.0f}  {f[:120]}")
PY
