#!/usr/bin/env bash
# Test certificates for the lnpt guidance server: a CA, a server certificate (SAN localhost,
# 127.0.0.1 plus any extra names given) and a client certificate for mutual TLS.
# For testing only: production certificates come from your own PKI.
#
#   deploy/gen-certs.sh [OUT_DIR] [EXTRA_SAN ...]     e.g. deploy/gen-certs.sh certs DNS:teacher.internal
#
# Writes OUT_DIR/{ca,server,client}.pem and .key (default OUT_DIR: ./certs). Then:
#   lnpt serve --checkpoint T.pt --cert certs/server.pem --key certs/server.key [--client-ca certs/ca.pem]
#   client: --set client.ca_cert=certs/ca.pem [--set client.client_cert=certs/client.pem --set client.client_key=certs/client.key]
set -euo pipefail

out="${1:-certs}"
shift || true
days="${DAYS:-30}"
san="DNS:localhost,IP:127.0.0.1"
for extra in "$@"; do san="$san,$extra"; done

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is required" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
umask 077  # private keys readable by the owner only

newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

openssl req -x509 "${newkey[@]}" -keyout ca.key -out ca.pem -days "$days" -subj "/CN=lnpt test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() {  # name subject extensions
  openssl req -new "${newkey[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

issue server "/CN=localhost" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$san\n"
issue client "/CN=lnpt test client" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
chmod 644 ca.pem server.pem client.pem

echo "wrote CA, server ($san) and client certificates to $out"
