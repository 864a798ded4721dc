#!/usr/bin/env bash
# chatter's benchmarks: builds the release binaries, runs every scenario (idle,
# fan-out, 1:1, persist, storm, scaling) and writes bench/RESULTS.md. About 12-15
# minutes on a 2-core machine, plus the first release build.
#
#   bash bench/run.sh                 # everything → bench/RESULTS.md
#   bash bench/run.sh fanout          # one scenario (idle | fanout | one-to-one | persist | storm |
#                                     # scaling), Markdown on stdout
#   bash bench/run.sh --quick all     # small loads, short steps: a smoke test
#
# Needs redis-server, redis-benchmark, redis-cli (the scaling scenario forms a
# Redis Cluster with it) and PostgreSQL (installed here if missing, as
# scripts/test.sh does). Every process runs on this machine; load goes to
# 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v redis-benchmark >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    missing+=(redis-tools)
fi
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

# As many open files as this machine allows (the hard limit; 20,000 here):
# every gateway, ceiling and load generator process inherits it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true

cargo build --release -p chatter-bench -p chatter-gateway -p chatter-worker
bin="${CARGO_TARGET_DIR:-target}/release/chatter-bench"

if [ $# -eq 0 ]; then
    exec "$bin" --out bench/RESULTS.md all
fi
exec "$bin" "$@"
