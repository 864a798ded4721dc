#!/usr/bin/env bash
# Where the time goes, for one load at a fixed rate (issue 12, point 1): starts a
# throwaway deployment (Redis, Postgres with pg_stat_statements, 2 gateways, a
# worker), runs the load generator, and prints as Markdown: CPU per process (and
# per message) from /proc, Redis INFO commandstats (delta) and SLOWLOG,
# pg_stat_statements' top statements, and a perf profile of one gateway.
#
#   bash bench/profile.sh one-to-one --connections 20000 --rate 2500 --seconds 10
#   bash bench/profile.sh fanout --connections 10000 --rate 400 --seconds 10
#   bash bench/profile.sh connect --connections 19000 --seconds 15   # a connect storm
#   bash bench/profile.sh one-to-one --out /tmp/profile.md
#
# Installs redis/postgres (as bench/run.sh does) and perf (Debian: linux-perf) if
# missing. Everything runs on this machine; load goes to 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."

load="${1:-one-to-one}"
[ $# -gt 0 ] && shift
case "$load" in
    one-to-one|fanout|connect) ;;
    *) echo "usage: bash bench/profile.sh one-to-one|fanout|connect [--connections N] [--rate R] [--seconds S] [--room-size N] [--out FILE]" >&2; exit 2 ;;
esac

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # perf is optional: the profile says so when it is missing.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || echo "some packages did not install; going on without them" >&2
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true

cargo build --release -p chatter-bench -p chatter-gateway -p chatter-worker
exec "${CARGO_TARGET_DIR:-target}/release/chatter-bench" profile --load "$load" "$@"
