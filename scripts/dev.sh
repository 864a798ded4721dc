#!/usr/bin/env bash
# Runs a throwaway chatter on this machine: its own redis-server and Postgres in a
# temporary folder, one gateway and one worker. Ctrl-C stops everything.
#
#   bash scripts/dev.sh            # gateway on http://127.0.0.1:8080
#   PORT=9000 bash scripts/dev.sh
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-8080}
dir=$(mktemp -d /tmp/chatter-dev.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --quiet -p chatter-gateway -p chatter-worker

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes \
    --logfile "$dir/redis.log" &
pids+=($!)

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$pg_bin" ] || pg_bin=$(dirname "$(command -v initdb)")
pg_port=$(free_port)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$dir/pg" -U postgres --auth=trust -N >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$dir/pg" -p "$pg_port" -k "$dir" -c listen_addresses=127.0.0.1 \
    >"$dir/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.1
done
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres chatter

export REDIS_URL="redis://127.0.0.1:$redis_port"
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/chatter"
export JWT_SECRET=${JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789}
export SERVICE_SECRET=${SERVICE_SECRET:-dev-service-secret}
export ALLOWED_ORIGINS=${ALLOWED_ORIGINS:-*}
export HOST=${HOST:-127.0.0.1} PORT=$port

./target/debug/chatter-worker &
pids+=($!)
./target/debug/chatter-gateway &
pids+=($!)

echo
echo "chatter is running on http://$HOST:$port (WebSocket ws://$HOST:$port/ws)"
echo "JWT_SECRET=$JWT_SECRET  SERVICE_SECRET=$SERVICE_SECRET   Ctrl-C stops it."
wait -n "${pids[@]}"
