#!/usr/bin/env bash
# Builds the shipped Dockerfile's runtime stage (its user, paths, environment, entrypoint and
# ports) around the binary cargo built on this host, on a local Debian base made from Debian's
# packages (the public base images cannot be fetched here), and runs it the way a user does:
# --version; `check` of a mounted configuration; `run` as 65532 with a read-only root, serving
# /readyz and relaying a message end to end; SIGTERM and the documented exit status; the size.
#
#   bash deploy/container/smoke.sh        (as root; installs podman, runc and mmdebstrap)
#
# Podman runs with runc and explicit limits: crun and podman's default ulimits fail on this
# VM's cgroups. Everything listens on 127.0.0.1 (--network host) on ports the OS picks.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/container/lib.sh

need_podman
base=$(debian_base)
image=$(build_image "$base")
run=("${podman[@]}" run --rm "${limits[@]}" --network host)
work=$(mktemp -d)
pids=()
cleanup() {
    "${podman[@]}" rm -f -t 0 mllp-smoke >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "== --version"
version=$("${run[@]}" "$image" --version)
echo "$version"
[ "$version" = "mllp-proxy $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
engine_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
conf="$work/etc"
mkdir -p "$conf/tls"
cp certs-example/{ca.crt,server.crt,server.key} "$conf/tls/"
cat > "$conf/mllp-proxy.yaml" <<YAML
admin: { listen: "127.0.0.1:$admin_port" }
logging: { format: json }
shutdown: { delay: 1s, drain_timeout: 10s }
routes:
  - name: smoke
    listen: "127.0.0.1:$proxy_port"
    tls:
      certificate: tls/server.crt
      private_key: tls/server.key
      client_ca: tls/ca.crt
    upstream:
      targets: ["127.0.0.1:$engine_port"]
YAML
# Readable by the image's user, not writable by it (the image's default path: no -c).
chmod -R a+rX "$conf"
mount=(-v "$conf:/etc/mllp-proxy:ro")

echo "== check of a mounted configuration"
"${run[@]}" "${mount[@]}" "$image" check

echo "== run as 65532 with a read-only root filesystem"
target/release/mllp-proxy ack-server --listen "127.0.0.1:$engine_port" --log "$work/engine.log" 2>/dev/null & pids+=($!)
"${podman[@]}" rm -f -t 0 mllp-smoke >/dev/null 2>&1 || true   # a leftover of an interrupted run
"${podman[@]}" run -d --name mllp-smoke "${limits[@]}" --network host --read-only \
    --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges "${mount[@]}" "$image" >/dev/null
user=$("${podman[@]}" inspect --format '{{.Config.User}}' mllp-smoke)
echo "container user: $user"
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$admin_port/readyz"
printf 'MSH|^~\\&|SMOKE|TEST|ENGINE|TEST|20261207120000||ADT^A01^ADT_A01|SMOKE-1|P|2.5.1\rPID|1||1^^^T^MR||DOE^J\r' > "$work/msg.hl7"
answer=$(target/release/mllp-proxy send --to "127.0.0.1:$proxy_port" --ca certs-example/ca.crt \
    --cert certs-example/client.crt --key certs-example/client.key --server-name localhost "$work/msg.hl7")
echo "send: $answer"
[ "$answer" = "AA SMOKE-1" ]
grep -q SMOKE-1 "$work/engine.log"

echo "== SIGTERM"
"${podman[@]}" kill --signal TERM mllp-smoke >/dev/null
status=$("${podman[@]}" wait mllp-smoke)
echo "exit status: $status"
"${podman[@]}" logs mllp-smoke 2>&1 | grep -o '"message":"[^"]*"' | sed 's/"message"://'
[ "$status" = 0 ]

echo "== image size"
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
base_size=$("${podman[@]}" image inspect --format '{{.Size}}' "$base")
binary=$(stat -c %s target/release/mllp-proxy)
echo "image $((size / 1024 / 1024)) MiB on the local Debian base of $((base_size / 1024 / 1024)) MiB; the layer mllp-proxy adds: $(((size - base_size) / 1024 / 1024)) MiB (binary $((binary / 1024 / 1024)) MiB)"
echo "container smoke test: OK"
