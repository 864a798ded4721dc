#!/usr/bin/env bash
# A load-balanced chatter on one machine, without containers: Redis (AOF on,
# noeviction), Postgres, 3 gateways and 2 workers behind nginx on one port.
#
#   bash deploy/local-cluster.sh up        # prints the URL and a JWT_SECRET=... line
#   bash deploy/local-cluster.sh status    # what runs (exit 0: all, 3: nothing, 1: some)
#   bash deploy/local-cluster.sh down      # stops what `up` started; data and logs stay
#
# Settings (environment):
#   PORT=8080             nginx's port on 127.0.0.1: the one URL clients use
#   BUILD=release         or debug: which binaries (built with cargo first when cargo is there)
#   CHATTER_BIN_DIR       use the binaries in this folder as they are, no build
#                         (CI passes the ones its test run just built)
#   GATEWAYS=3 WORKERS=2  how many of each
#   CHATTER_CLUSTER_DIR   state folder (default /tmp/chatter-local-cluster): data, logs,
#                         PID files, the generated secrets. `rm -rf` it after `down` to
#                         start from nothing.
# Any other chatter setting in the environment (DRAIN_WINDOW_SECS=3, LOG_LEVEL=debug,
# ...) reaches every gateway and worker; HOST, PORT, WORKER_PORT, REDIS_URL,
# DATABASE_URL, JWT_SECRET and SERVICE_SECRET are set by this script.
#
# redis-server, PostgreSQL and nginx are Debian packages; missing ones are installed
# (needs root or sudo), as scripts/test.sh does. nginx runs with its own
# configuration, PID file, logs and temp folders in the state folder, never as the
# system service. Its site is deploy/nginx/chatter.conf, the template compose.yaml
# uses, rendered with this cluster's gateway ports.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CHATTER_CLUSTER_DIR:-/tmp/chatter-local-cluster}
build=${BUILD:-release}
gateways=${GATEWAYS:-3}
workers=${WORKERS:-2}
# The port is read once here: every gateway gets its own PORT below.
lb_port=${PORT:-8080}
up_done=0

log() { echo "local-cluster: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- PID files -------------------------------------------------------------------

pid_file() { echo "$dir/pids/$1.pid"; }

# What a process's command line must contain for a PID file to still be ours: a
# PID recycled by an unrelated process is never signalled.
program_of() {
    case "$1" in
        gateway-*) echo chatter-gateway ;;
        worker-*) echo chatter-worker ;;
        redis) echo redis-server ;;
        postgres) echo postgres ;;
        nginx) echo nginx ;;
        *) return 1 ;;
    esac
}

# Whether `pid` is alive. A zombie counts as gone: it has exited, and the machine's
# init (which adopts our detached processes) may be slow to reap it.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Prints the PID of `name` if that process is alive and is what we started.
running_pid() {
    local name=$1 file pid cmdline
    file=$(pid_file "$name")
    [ -s "$file" ] || return 1
    pid=$(<"$file")
    alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"$(program_of "$name")"* ]] || return 1
    echo "$pid"
}

# Every name with a PID file, in start order.
started_names() {
    local name
    for name in redis postgres; do [ -e "$(pid_file $name)" ] && echo $name; done
    for file in "$dir"/pids/gateway-*.pid "$dir"/pids/worker-*.pid; do
        [ -e "$file" ] && basename "$file" .pid
    done | sort -V
    [ -e "$(pid_file nginx)" ] && echo nginx
    return 0
}

# Starts `name` (the rest: the command) in its own session, so a Ctrl-C or a closed
# terminal in the calling shell never reaches it, with output in logs/NAME.log.
start_bg() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 &
    echo $! >"$(pid_file "$name")"
}

# Waits until `check` (the rest) succeeds, while process `name` is alive. (Only
# alive: right after the fork the child still shows this script's command line.)
wait_ready() {
    local name=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds)) pid
    pid=$(<"$(pid_file "$name")")
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pid"; then
            log "$name exited while starting; last lines of $dir/logs/$name.log:"
            tail -n 20 "$dir/logs/$name.log" >&2 || true
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "$name not ready after ${seconds}s; see $dir/logs/$name.log"
            return 1
        fi
        sleep 0.2
    done
}

# Sends `signal` to each named process, then waits up to `seconds` for all to exit;
# a process still there then gets SIGKILL (and is reported).
stop_group() {
    local signal=$1 seconds=$2
    shift 2
    local name pid pids=() names=()
    for name in "$@"; do
        if pid=$(running_pid "$name"); then
            kill "-$signal" "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
        rm -f "$(pid_file "$name")"
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    log "stopping ${names[*]} (SIG$signal)"
    local deadline=$((SECONDS + seconds)) i
    for i in "${!pids[@]}"; do
        while alive "${pids[$i]}"; do
            if [ $SECONDS -ge $deadline ]; then
                log "${names[$i]} (pid ${pids[$i]}) still running after ${seconds}s: SIGKILL"
                kill -KILL "${pids[$i]}" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    done
}

# --- the pieces ------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

install_missing() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    [ ${#missing[@]} -gt 0 ] || return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build_binaries() {
    if [ -n "${CHATTER_BIN_DIR:-}" ]; then
        bin_dir=$CHATTER_BIN_DIR
        [ -x "$bin_dir/chatter-gateway" ] && [ -x "$bin_dir/chatter-worker" ] ||
            die "no chatter-gateway and chatter-worker in CHATTER_BIN_DIR=$bin_dir"
        return
    fi
    local target_dir=${CARGO_TARGET_DIR:-$repo/target}
    case "$build" in
        release) bin_dir=$target_dir/release ;;
        debug) bin_dir=$target_dir/debug ;;
        *) die "BUILD must be release or debug, not '$build'" ;;
    esac
    if command -v cargo >/dev/null 2>&1; then
        # The images' build command (deploy/Dockerfile); a no-op when up to date.
        local profile=()
        [ "$build" = release ] && profile=(--release)
        log "cargo build ${profile[*]} (BUILD=$build)"
        (cd "$repo" && cargo build "${profile[@]}" --locked -p chatter-gateway -p chatter-worker)
    fi
    [ -x "$bin_dir/chatter-gateway" ] && [ -x "$bin_dir/chatter-worker" ] ||
        die "no binaries in $bin_dir and no cargo to build them"
}

# Secrets survive `down`, like the data: tokens minted before stay valid.
load_secrets() {
    local file=$dir/secrets.env
    if [ ! -s "$file" ]; then
        # 32 random bytes, hex: HS256 keys shorter than 32 bytes are refused.
        local jwt service
        jwt=${JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
        service=${SERVICE_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
        (
            umask 077
            printf 'JWT_SECRET=%s\nSERVICE_SECRET=%s\n' "$jwt" "$service" >"$file"
        )
    fi
    # shellcheck disable=SC1090
    source "$file"
    export JWT_SECRET SERVICE_SECRET
}

start_redis() {
    mkdir -p "$dir/redis"
    redis_port=$(free_port)
    # AOF on (fsync every second) and no eviction: an acknowledged message lives in
    # Redis until a worker stores it, so Redis must neither lose nor evict it.
    start_bg redis redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save ""
    wait_ready redis 20 redis-cli -h 127.0.0.1 -p "$redis_port" ping
}

start_postgres() {
    # The newest installed PostgreSQL (Debian keeps its binaries out of PATH).
    local pg_bin
    pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [ -x "$pg_bin/initdb" ] || pg_bin=$(dirname "$(command -v initdb)")
    pg_port=$(free_port)
    # Postgres refuses to run as root: as root, it runs as the `postgres` user
    # (created by the Debian package), which then owns its folder.
    local as_pg=()
    mkdir -p "$dir/postgres"
    touch "$dir/logs/postgres.log"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir/postgres" "$dir/logs/postgres.log"
        as_pg=(runuser -u postgres --)
    fi
    if [ ! -s "$dir/postgres/data/PG_VERSION" ]; then
        "${as_pg[@]}" "$pg_bin/initdb" -D "$dir/postgres/data" -U postgres --auth=trust -N >/dev/null
    fi
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/postgres/data" -l "$dir/logs/postgres.log" -w -t 60 \
        -o "-p $pg_port -k $dir/postgres -c listen_addresses=127.0.0.1" start >/dev/null
    head -n 1 "$dir/postgres/data/postmaster.pid" >"$(pid_file postgres)"
    local exists
    exists=$("$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'chatter'")
    [ "$exists" = 1 ] || "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres chatter
}

start_gateway() {
    local n=$1 port
    port=$(free_port)
    echo "$port" >"$dir/pids/gateway-$n.port"
    # Behind nginx every connection comes from 127.0.0.1: no per-address connection
    # cap, and the per-IP rate limit reads the address nginx appends.
    start_bg "gateway-$n" env HOST=127.0.0.1 PORT="$port" MAX_HTTP_CONNECTIONS_PER_IP=0 \
        TRUST_FORWARDED_FOR=true "$bin_dir/chatter-gateway"
}

start_worker() {
    local n=$1 port
    port=$(free_port)
    echo "$port" >"$dir/pids/worker-$n.port"
    start_bg "worker-$n" env HOST=127.0.0.1 WORKER_PORT="$port" WORKER_NAME="local-worker-$n" \
        "$bin_dir/chatter-worker"
}

# Everything here listens on 127.0.0.1, whatever HOST the calling shell has.
probe() { HOST=127.0.0.1 bash "$repo/deploy/healthcheck.sh" "$@"; }
port_of() { cat "$dir/pids/$1.port"; }

start_nginx() {
    local nginx servers="" n
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    for n in $(seq "$gateways"); do
        servers+="server 127.0.0.1:$(port_of "gateway-$n"); "
    done
    mkdir -p "$dir/nginx/temp"
    # Only these two names are replaced; nginx's own $variables stay.
    # shellcheck disable=SC2016
    CHATTER_LISTEN="127.0.0.1:$lb_port" CHATTER_UPSTREAM_SERVERS="$servers" \
        envsubst '${CHATTER_LISTEN} ${CHATTER_UPSTREAM_SERVERS}' \
        <"$repo/deploy/nginx/chatter.conf" >"$dir/nginx/chatter.conf"
    local user_line=""
    # As root, nginx's workers would switch to a `nobody` user and group that a
    # Debian machine may not have; this throwaway cluster keeps them as root.
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    cat >"$dir/nginx/nginx.conf" <<EOF
# Written by deploy/local-cluster.sh: this cluster's own nginx, not the system one.
$user_line
daemon off;
worker_processes auto;
pid $dir/nginx/nginx.pid;
# \`down\` stops nginx gracefully; this bounds how long it waits for open sockets.
worker_shutdown_timeout 5s;
error_log $dir/logs/nginx.log warn;
events {
    worker_connections 4096;
}
http {
    client_body_temp_path $dir/nginx/temp/body;
    proxy_temp_path $dir/nginx/temp/proxy;
    fastcgi_temp_path $dir/nginx/temp/fastcgi;
    uwsgi_temp_path $dir/nginx/temp/uwsgi;
    scgi_temp_path $dir/nginx/temp/scgi;
    include $dir/nginx/chatter.conf;
}
EOF
    # stdout as when it runs: the access log is /dev/stdout, which a non-root
    # nginx can open only if it is a file of its own. (Both only append to it.)
    # shellcheck disable=SC2094
    "$nginx" -q -t -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/logs/nginx.log" \
        >>"$dir/logs/nginx.log" ||
        die "nginx refuses its configuration ($dir/nginx/nginx.conf)"
    start_bg nginx "$nginx" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/logs/nginx.log"
    wait_ready nginx 20 probe "$lb_port" /readyz
}

# --- commands --------------------------------------------------------------------

cmd_up() {
    local name
    for name in $(started_names 2>/dev/null); do
        running_pid "$name" >/dev/null && die "already running ($name); see: $0 status"
    done
    if (exec 3<>"/dev/tcp/127.0.0.1/$lb_port") 2>/dev/null; then
        die "port $lb_port is taken; choose another with PORT="
    fi
    install_missing
    build_binaries
    mkdir -p "$dir/pids" "$dir/logs"
    # Postgres runs as its own user when we are root: it must reach its folders.
    chmod 0755 "$dir" "$dir/logs"
    rm -f "$dir"/pids/*
    # Whatever fails from here on, stop what was started.
    trap 'if [ "$up_done" != 1 ]; then log "start-up failed; stopping what started"; cmd_down || true; fi' EXIT
    load_secrets
    start_redis
    start_postgres
    export REDIS_URL="redis://127.0.0.1:$redis_port"
    export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/chatter"
    export ALLOWED_ORIGINS=${ALLOWED_ORIGINS:-*}
    local n
    # The first gateway runs the migrations alone; the others then start together.
    start_gateway 1
    wait_ready gateway-1 60 probe "$(port_of gateway-1)" /readyz
    for n in $(seq 2 "$gateways"); do start_gateway "$n"; done
    for n in $(seq "$workers"); do start_worker "$n"; done
    for n in $(seq 2 "$gateways"); do wait_ready "gateway-$n" 60 probe "$(port_of "gateway-$n")" /readyz; done
    for n in $(seq "$workers"); do wait_ready "worker-$n" 60 probe "$(port_of "worker-$n")" /healthz; done
    start_nginx
    up_done=1
    {
        echo "URL=http://127.0.0.1:$lb_port"
        echo "REDIS_URL=$REDIS_URL"
        echo "DATABASE_URL=$DATABASE_URL"
    } >"$dir/cluster.env"

    echo "chatter local cluster: $gateways gateways and $workers workers behind nginx"
    echo "  http://127.0.0.1:$lb_port   (WebSocket ws://127.0.0.1:$lb_port/ws)"
    echo "  state and logs in $dir; stop it with: bash deploy/local-cluster.sh down"
    echo "  mint a token: JWT_SECRET=\$JWT_SECRET $bin_dir/chatter-gateway token --user alice"
    echo "URL=http://127.0.0.1:$lb_port"
    echo "JWT_SECRET=$JWT_SECRET"
    echo "SERVICE_SECRET=$SERVICE_SECRET"
}

cmd_down() {
    [ -d "$dir/pids" ] || {
        log "nothing started from $dir"
        return 0
    }
    local names=() name
    while read -r name; do names+=("$name"); done < <(started_names)
    local gateway_names=() worker_names=()
    for name in "${names[@]}"; do
        case "$name" in
            gateway-*) gateway_names+=("$name") ;;
            worker-*) worker_names+=("$name") ;;
        esac
    done
    # Gateways first: each drains (sockets closed with 4007 over DRAIN_WINDOW_SECS)
    # while nginx still passes their sockets' traffic; then nginx; then the workers,
    # which finish the batch in hand; then Redis (SIGTERM: AOF flushed) and Postgres
    # (SIGINT: fast shutdown).
    local drain=${DRAIN_WINDOW_SECS:-10}
    [ ${#gateway_names[@]} -eq 0 ] || stop_group TERM $((drain + 20)) "${gateway_names[@]}"
    stop_group QUIT 10 nginx
    [ ${#worker_names[@]} -eq 0 ] || stop_group TERM 30 "${worker_names[@]}"
    stop_group TERM 20 redis
    stop_group INT 30 postgres
    rm -f "$dir"/pids/*.port "$dir/cluster.env"
    log "stopped; data, logs and secrets stay in $dir"
}

cmd_status() {
    local names=() name pid running=0 total=0 state
    if [ -d "$dir/pids" ]; then
        while read -r name; do names+=("$name"); done < <(started_names)
    fi
    for name in "${names[@]}"; do
        total=$((total + 1))
        if pid=$(running_pid "$name"); then
            running=$((running + 1))
            state="running  pid $pid"
            case "$name" in
                gateway-* | worker-*)
                    local port path=/readyz
                    port=$(port_of "$name")
                    [[ "$name" == worker-* ]] && path=/healthz
                    if probe "$port" "$path"; then state+="  port $port  $path 200"; else state+="  port $port  $path failing"; fi
                    ;;
            esac
        else
            state="stopped"
        fi
        printf '%-10s %s\n' "$name" "$state"
    done
    if [ $total -eq 0 ] || [ $running -eq 0 ]; then
        echo "nothing running from $dir"
        return 3
    fi
    [ -s "$dir/cluster.env" ] && grep '^URL=' "$dir/cluster.env"
    [ $running -eq $total ] || return 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status   (see the comment at the top of $0)" >&2
        exit 2
        ;;
esac
