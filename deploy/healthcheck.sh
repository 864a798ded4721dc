#!/bin/bash
# chatter-healthcheck: exits 0 when a chatter process answers HTTP 200 on one path.
#
#   chatter-healthcheck gateway              # http://127.0.0.1:${PORT:-8080}/healthz
#   chatter-healthcheck worker               # http://127.0.0.1:${WORKER_PORT:-9091}/healthz
#   chatter-healthcheck 18081 /readyz        # any port and path (deploy/local-cluster.sh)
#
# The images' HEALTHCHECK runs it. It speaks HTTP through bash's /dev/tcp, so the
# runtime image needs neither curl nor wget (bash, an essential Debian package, is
# already in debian:*-slim): no extra package, no extra attack surface.
set -uo pipefail

case "${1:-}" in
    gateway) port=${PORT:-8080} ;;
    worker) port=${WORKER_PORT:-9091} ;;
    [0-9]*) port=$1 ;;
    *)
        echo "usage: chatter-healthcheck gateway|worker|PORT [PATH]" >&2
        exit 2
        ;;
esac
path=${2:-/healthz}
# A process listening on every address answers on loopback; one bound to a
# single address (HOST) answers there.
host=${HOST:-127.0.0.1}
case "$host" in 0.0.0.0 | :: | "[::]") host=127.0.0.1 ;; esac

{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
# Status line: HTTP/1.1 200 OK
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]
