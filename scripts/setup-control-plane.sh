#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and
# helm from their Go modules at pinned versions, into a cache outside the repo keyed by version.
# Prints the directory to use as KUBEBUILDER_ASSETS. Never writes into the repo.
#
# A user who already has envtest binaries may set KUBEBUILDER_ASSETS; if it holds etcd,
# kube-apiserver and kube-controller-manager, those are used and nothing of them is built.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.5.35}"
HELM_VERSION="${HELM_VERSION:-3.19.2}"
CACHE_ROOT="${OPENAI_POLICY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openai-policy-operator}"
ASSETS="$CACHE_ROOT/control-plane/k8s-v${K8S_VERSION}-etcd-v${ETCD_VERSION}"
TOOLS="$CACHE_ROOT/tools/helm-v${HELM_VERSION}"

log() { echo "setup-control-plane: $*" >&2; }

have_all() {
  local dir="$1"; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

build_kubernetes() {
  local out="$1" work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building kube-apiserver, kube-controller-manager, kubectl v$K8S_VERSION (cold: ~15 min on 2 cores)"
  (
    cd "$work"
    go mod init openai-policy-operator/controlplane >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
    # k8s.io/kubernetes replaces its staging modules with relative paths; pin them to the
    # published v0.X.Y tags instead so that the module builds outside its own repository.
    go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
    local gomod
    gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
    local staging="v0.${K8S_VERSION#1.}"
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r mod; do
      go mod edit -replace="$mod=$mod@$staging"
    done
    local ver="k8s.io/component-base/version"
    local minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
    local ldflags="-s -w -X $ver.gitVersion=v$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    for cmd in kube-apiserver kube-controller-manager kubectl; do
      CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
  )
}

build_etcd() {
  local out="$1" work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building etcd v$ETCD_VERSION"
  (
    cd "$work"
    go mod init openai-policy-operator/etcd >/dev/null 2>&1
    # etcd's server module points its sibling modules at ../ paths; pin them to the release.
    for mod in api/v3 client/pkg/v3 client/v3 pkg/v3 raft/v3 server/v3; do
      go mod edit -require="go.etcd.io/etcd/$mod@v$ETCD_VERSION"
    done
    # The v2 client module is versioned v2.3XX.Y for etcd 3.X.Y (e.g. v2.305.25 for 3.5.25).
    local minor="${ETCD_VERSION#3.}" patch="${ETCD_VERSION##*.}"
    minor="${minor%%.*}"
    go mod edit -require="go.etcd.io/etcd/client/v2@v2.3$(printf '%02d' "$minor").$patch"
    CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
}

build_helm() {
  local out="$1"
  log "building helm v$HELM_VERSION"
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

command -v go >/dev/null || { log "Go is required to build the control plane (https://go.dev/doc/install)"; exit 1; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS" etcd kube-apiserver; then
  ASSETS="$KUBEBUILDER_ASSETS"
fi
mkdir -p "$ASSETS"
have_all "$ASSETS" kube-apiserver kube-controller-manager kubectl || build_kubernetes "$ASSETS"
have_all "$ASSETS" etcd || build_etcd "$ASSETS"
have_all "$TOOLS" helm || build_helm "$TOOLS"
ln -sf "$TOOLS/helm" "$ASSETS/helm"
echo "$ASSETS"
