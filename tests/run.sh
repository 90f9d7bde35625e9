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
if ! [ -f tests/interop/node_modules/node-hl7-client/package.json ] \
    || ! [ -f tests/interop/node_modules/node-hl7-server/package.json ]; then
    echo "== installing node-hl7-client and node-hl7-server into tests/interop/node_modules"
    (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi
# openssl (s_client interop), promtool and prometheus (Debian package prometheus: the alert
# rules' tests and the dashboard's queries),
# haproxy (a real load balancer sending PROXY protocol headers) and stunnel4 (a partner's
# TLS terminator in front of an egress route's target).
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v stunnel4 >/dev/null || missing+=(stunnel4)
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
# rsyslog with its GnuTLS driver: the real syslog collector of the audit trail's tests.
command -v rsyslogd >/dev/null || missing+=(rsyslog)
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || missing+=(rsyslog-gnutls)
# xmllint: the ATNA audit messages are well-formed and in the schema's order.
command -v xmllint >/dev/null || missing+=(libxml2-utils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export MLLP_PROXY_PYTHON="$PWD/$venv/bin/python"
# Missing peers fail the run instead of being skipped.
export MLLP_PROXY_REQUIRE_INTEROP=1
echo "== cargo test"
cargo test --all-targets
