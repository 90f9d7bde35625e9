#!/usr/bin/env bash
# The test command of mllp-proxy: installs the third-party peers the interop tests talk to,
# then runs every test. Safe to run repeatedly; only missing pieces are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/interop-venv
if ! "$venv/bin/python" -c 'import hl7, hl7apy' 2>/dev/null; then
    echo "== installing python-hl7 and hl7apy into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
fi
if ! command -v openssl >/dev/null; then
    echo "== installing openssl"
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

export MLLP_PROXY_PYTHON="$PWD/$venv/bin/python"
# Missing peers fail the run instead of being skipped.
export MLLP_PROXY_REQUIRE_INTEROP=1
echo "== cargo test"
cargo test --all-targets
