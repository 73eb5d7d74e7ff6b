#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and
# helm from their Go modules at pinned versions, into a cache outside the repo keyed by version.
# Prints the directory to use as KUBEBUILDER_ASSETS. Never writes into the repo.
#
# A user who already has envtest binaries may set KUBEBUILDER_ASSETS; if it holds etcd,
# kube-apiserver and kube-controller-manager, those are used and nothing of them is built.
set -euo pipefail
# shellcheck source=lib/build.sh
. "$(dirname "$0")/lib/build.sh"

ETCD_VERSION="${ETCD_VERSION:-3.5.35}"
HELM_VERSION="${HELM_VERSION:-3.19.2}"
ASSETS="$CACHE_ROOT/control-plane/k8s-v${K8S_VERSION}-etcd-v${ETCD_VERSION}"
# "-release": built with the release's version flags (an older cache entry lacks them).
TOOLS="$CACHE_ROOT/tools/helm-v${HELM_VERSION}-release"

log() { echo "setup-control-plane: $*" >&2; }

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
  local out="$1" work client minor
  log "building helm v$HELM_VERSION"
  mkdir -p "$out"
  # As helm's own release build does: the Kubernetes version helm assumes without a cluster
  # (helm template, lint) comes from the client-go it is built with; without these flags it is
  # 1.20, and a chart's kubeVersion constraint (ours: >= 1.29) fails under a plain `helm template`.
  work="$(mktemp -d)"
  go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" > "$work/helm.json"
  client="$(awk '$1=="k8s.io/client-go"{print $2; exit}' "$(sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' "$work/helm.json")")"
  rm -rf "$work"
  minor="${client#v0.}"; minor="${minor%%.*}"
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  flags="$flags -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  flags="$flags -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

command -v go >/dev/null || { log "Go is required to build the control plane (https://go.dev/doc/install)"; exit 1; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS" etcd kube-apiserver; then
  ASSETS="$KUBEBUILDER_ASSETS"
fi
mkdir -p "$ASSETS"
if ! have_all "$ASSETS" kube-apiserver kube-controller-manager kubectl; then
  log "building kube-apiserver, kube-controller-manager, kubectl v$K8S_VERSION (cold: ~15 min on 2 cores)"
  build_kubernetes "$ASSETS" kube-apiserver kube-controller-manager kubectl
fi
have_all "$ASSETS" etcd || build_etcd "$ASSETS"
have_all "$TOOLS" helm || build_helm "$TOOLS"
ln -sf "$TOOLS/helm" "$ASSETS/helm"
echo "$ASSETS"
