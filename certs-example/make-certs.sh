#!/bin/sh
# Makes the EXAMPLE certificates of mllp-proxy: a CA, a server certificate for localhost and
# 127.0.0.1, and a client certificate. Valid for 10 years. For demos and trials only: the keys
# are public, in this repository. Never use them in production.
#
#   sh certs-example/make-certs.sh [DIR]     (default: the folder of this script)
set -eu
DIR=${1:-$(dirname "$0")}
cd "$DIR"
DAYS=3650
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" \
  -subj "/O=mllp-proxy example (NOT FOR PRODUCTION)/CN=mllp-proxy example CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

issue() { # name subject extensions
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$TMP/$1.csr"
  printf '%s\n' "$3" > "$TMP/$1.ext"
  openssl x509 -req -in "$TMP/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$TMP/$1.ext" -out "$1.crt" 2>/dev/null
}

issue server "/O=mllp-proxy example (NOT FOR PRODUCTION)/CN=localhost" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

issue client "/O=mllp-proxy example (NOT FOR PRODUCTION)/CN=demo-sender" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:sender.example.org,URI:spiffe://hospital.example/demo-sender"

rm -f ca.srl
echo "example certificates written to $DIR (NOT FOR PRODUCTION)"
