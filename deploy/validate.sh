#!/usr/bin/env bash
# Validates every deployment file: Kubernetes manifests (each kustomization rendered with
# `kubectl kustomize`) against the Kubernetes schemas
# (kubernetes-validate, offline) plus CRD and cross-reference checks, the systemd unit with
# systemd-analyze, the logrotate stanza with logrotate --debug, the Prometheus configuration and alert rules with promtool (including
# their unit tests), and the Grafana dashboard's JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
fi

echo "== kubernetes manifests, rendered by kustomize as \`kubectl apply -k\` sends them"
command -v kubectl >/dev/null || { echo "needs kubectl (its built-in kustomize renders the examples)" >&2; exit 1; }
rendered=target/deploy-rendered
rm -rf "$rendered" && mkdir -p "$rendered"
for folder in deploy/kubernetes/*/; do
    kubectl kustomize "$folder" > "$rendered/$(basename "$folder").yaml"
done
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "$rendered"/*.yaml 2>&1 | grep -v "Couldn't find schema" || true
# --quiet prints only warnings and failures; run again for the status.
"$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k 1.31.0 "$rendered"/*.yaml
"$venv/bin/python" deploy/check_manifests.py deploy/kubernetes "$rendered"

echo "== systemd unit"
if command -v systemd-analyze >/dev/null; then
    cargo build --quiet --bin mllp-proxy
    unit=$(mktemp -d)/mllp-proxy.service
    sed "s#/usr/local/bin/mllp-proxy#$PWD/target/debug/mllp-proxy#g" deploy/systemd/mllp-proxy.service > "$unit"
    systemd-analyze verify "$unit"
    echo "systemd-analyze verify: OK"
else
    echo "systemd-analyze not available; skipped"
fi

echo "== logrotate"
if ! command -v logrotate >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends logrotate >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends logrotate >/dev/null; }
fi
if command -v logrotate >/dev/null; then
    state=$(mktemp)
    # --debug parses and plans without touching any file; a syntax error exits non-zero.
    logrotate --debug --state "$state" deploy/systemd/mllp-proxy.logrotate 2>&1 | tail -n 2
    rm -f "$state"
else
    echo "logrotate not available; skipped"
fi

echo "== prometheus"
# --syntax-only: the TLS scrape job names certificate files that exist only on a real server.
promtool check config --syntax-only deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/mllp-proxy.rules.test.yml

echo "== grafana"
python3 -m json.tool deploy/grafana/mllp-proxy.json >/dev/null && echo "dashboard JSON: OK"
