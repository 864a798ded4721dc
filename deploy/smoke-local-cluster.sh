#!/usr/bin/env bash
# Smoke test of deploy/local-cluster.sh, for CI and for anyone changing deploy/:
#   1. `up` in a throwaway state folder, on a free port
#   2. `status` reports everything running
#   3. through nginx: three sockets land on three gateways (least_conn), a message
#      from one reaches the others (fan-out through Redis) and its history (a worker
#      stored it in Postgres) — with tokens minted by `chatter-gateway token` from
#      the JWT_SECRET line `up` printed
#   4. SIGTERM one gateway: new sockets opened through nginx while it drains are all
#      upgraded (nginx retries the next gateway), and `status` reports it stopped
#   5. `down`, then no process `up` started is left and the port is closed
#
#   bash deploy/smoke-local-cluster.sh                 # debug binaries (BUILD=debug)
#   BUILD=release bash deploy/smoke-local-cluster.sh   # the images' build
#
# Needs python3 (the WebSocket client is deploy/smoke_client.py, standard library only).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CHATTER_CLUSTER_DIR=$(mktemp -d /tmp/chatter-smoke.XXXXXX)
export CHATTER_CLUSTER_DIR
export BUILD=${BUILD:-debug}
PORT=$(free_port)
export PORT
# Short drains keep the run short; the gateway closes its sockets within this.
export DRAIN_WINDOW_SECS=${DRAIN_WINDOW_SECS:-3}
dir=$CHATTER_CLUSTER_DIR
url=http://127.0.0.1:$PORT
passed=0
holder=""

cluster() { bash "$repo/deploy/local-cluster.sh" "$@"; }
client() { python3 "$repo/deploy/smoke_client.py" "$@"; }
ok() {
    passed=$((passed + 1))
    echo "smoke: ok: $*"
}

# Gone, or a zombie waiting for init to reap it.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

finish() {
    local status=$?
    [ -z "$holder" ] || kill "$holder" 2>/dev/null || true
    if [ $status -ne 0 ]; then
        echo "smoke: FAILED; the cluster's logs:" >&2
        for log in "$dir"/logs/*.log; do
            [ -e "$log" ] || continue
            echo "--- $(basename "$log")" >&2
            tail -n 30 "$log" >&2
        done
        cluster down >/dev/null 2>&1 || true
        echo "smoke: $passed passed, 1 failed"
    fi
    rm -rf "$dir"
    exit $status
}
trap finish EXIT

# 1. up
start=$SECONDS
cluster up | tee "$dir/up.out"
[ -d "$dir/pids" ] || exit 1
ok "up in $((SECONDS - start)) s (BUILD=$BUILD, nginx on $url)"
started_pids=$(cat "$dir"/pids/*.pid)

# 2. status
cluster status
ok "status: all running"

# 3. a chat through nginx
jwt_secret=$(sed -n 's/^JWT_SECRET=//p' "$dir/up.out")
[ ${#jwt_secret} -ge 32 ] || {
    echo "smoke: no JWT_SECRET line (32+ bytes) in the output of up" >&2
    exit 1
}
bin_dir=${CHATTER_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/$BUILD}
# Only JWT_SECRET: with no REDIS_URL/DATABASE_URL the command reads nothing else.
mint() { (cd "$dir" && env -i PATH="$PATH" JWT_SECRET="$jwt_secret" "$bin_dir/chatter-gateway" token --user "$1"); }
ALICE=$(mint alice) BOB=$(mint bob) CAROL=$(mint carol)
export ALICE BOB CAROL
client chat "$url" "$dir"
ok "chat through nginx across gateways"

# 4. a draining gateway: new sockets still get through
gateway_urls=()
for file in "$dir"/pids/gateway-*.port; do gateway_urls+=("http://127.0.0.1:$(<"$file")"); done
# python3 itself in the background (not through `client`), so $! is the process to kill.
python3 "$repo/deploy/smoke_client.py" hold "${gateway_urls[@]}" >"$dir/hold.out" &
holder=$!
for _ in $(seq 50); do grep -q holding "$dir/hold.out" && break; sleep 0.1; done
grep -q holding "$dir/hold.out"
kill -TERM "$(<"$dir/pids/gateway-1.pid")"
client churn "$url" 12
deadline=$((SECONDS + DRAIN_WINDOW_SECS + 20))
# (status exits 1 while some process is stopped: read its output, not its code.)
until (cluster status || true) | grep -q '^gateway-1 *stopped'; do
    [ $SECONDS -lt $deadline ] || {
        echo "smoke: gateway-1 did not exit after its drain" >&2
        exit 1
    }
    sleep 0.2
done
kill "$holder" 2>/dev/null || true
holder=""
status_code=0
cluster status >/dev/null || status_code=$?
[ $status_code -eq 1 ] || {
    echo "smoke: status with one gateway stopped exited $status_code, not 1" >&2
    exit 1
}
retried=$(grep -c 'upstream=[^ ]*, ' "$dir/logs/nginx.log" || true)
ok "12 new sockets upgraded while gateway-1 drained ($retried requests retried on another gateway); status reports it stopped"

# 5. down: nothing left
start=$SECONDS
cluster down
for pid in $started_pids; do
    if alive "$pid"; then
        echo "smoke: pid $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline)) still runs after down" >&2
        exit 1
    fi
done
if pgrep -f "$dir" >/dev/null; then
    echo "smoke: processes naming $dir still run:" >&2
    pgrep -af "$dir" >&2
    exit 1
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "smoke: port $PORT still accepts connections after down" >&2
    exit 1
fi
status_code=0
cluster status >/dev/null || status_code=$?
[ $status_code -eq 3 ] || {
    echo "smoke: status after down exited $status_code, not 3" >&2
    exit 1
}
ok "down in $((SECONDS - start)) s; nothing left running"
echo "smoke: $passed passed, 0 failed"
