#!/usr/bin/env bash
# Make a small CA and one certificate per node for conclave's mutual TLS between nodes.
#
# Usage: deploy/gen-tls.sh DIR NAME...
#   DIR/ca.crt, DIR/ca.key        the cluster CA (keep ca.key off the nodes)
#   DIR/NAME.crt, DIR/NAME.key    one per NAME: subjectAltName NAME (a DNS name or an IP),
#                                 usable as server and client certificate
# Give the orchestrator's certificate the name agent nodes use in `--join` (or pass them
# `--tls-server-name`), and each agent node's certificate its `--name`: the orchestrator
# refuses a node whose certificate is not issued for the name it joins with. An existing CA in DIR is reused, so nodes can be added later.
# Example: deploy/gen-tls.sh tls orchestrator agent-1 agent-2 agent-3
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,10p' "$0" >&2; exit 1; }
command -v openssl >/dev/null 2>&1 || { echo "gen-tls: openssl is needed" >&2; exit 1; }
dir="$1"; shift
days="${CONCLAVE_TLS_DAYS:-365}"
umask 077
mkdir -p "$dir"

if [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj /CN=conclave-cluster-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi

for name in "$@"; do
  case "$name" in
    *[!0-9.]*) san="DNS:$name" ;;
    *) san="IP:$name" ;;
  esac
  case "$name" in *:*) san="IP:$name" ;; esac   # IPv6
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -out "$dir/$name.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$san") \
    2>/dev/null
  rm -f "$dir/$name.csr"
  echo "gen-tls: $dir/$name.crt ($san)"
done
chmod 0644 "$dir"/*.crt
