#!/usr/bin/env bash
# Runs chatter's whole test suite: unit tests and the end-to-end suite, which starts
# its own redis-server and Postgres processes on free ports.
#
# On a machine without redis-server or PostgreSQL it installs them first (Debian
# packages; needs root or sudo). The system services need not be running: the
# tests never use them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# tests/tests/security.rs makes its RSA keys with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --workspace --locked "$@"
