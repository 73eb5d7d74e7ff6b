#!/usr/bin/env bash
# End-to-end on a real cluster (the "kind" flavour): builds both images, creates a kind cluster,
# loads the images into it, installs the chart, and runs the e2e test module against that
# cluster with real pods. Needs a running Docker engine; where there is none it says so and
# exits non-zero (the local flavour, run by `make test`, needs no Docker).
#
# Usage: e2e/kind/run.sh [pytest args...]
# Environment:
#   KIND_CLUSTER_NAME  cluster name (default openai-policy-e2e)
#   KIND_VERSION       kind to install with `go install` when kind is not on PATH (default v0.30.0)
#   KIND_NODE_IMAGE    node image (default: kind's own default for its version)
#   IMAGE_TAG          tag of the two images built here (default e2e)
#   KEEP_CLUSTER=1     keep the cluster afterwards (default: deleted on exit)
#   E2E_TESTS          what pytest runs, space-separated (default: the e2e/ directory)
# The tests get: KUBECONFIG (the kind cluster), OPENAI_POLICY_E2E_CLUSTER=kind,
# OPENAI_POLICY_E2E_NAMESPACE (the chart's namespace), OPENAI_POLICY_E2E_RELEASE (the release).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER_NAME:-openai-policy-e2e}"
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
TAG="${IMAGE_TAG:-e2e}"
RELEASE=openai-policy-operator
NAMESPACE=openai-policy-system
CACHE="${OPENAI_POLICY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openai-policy-operator}"
PYTHON="${PYTHON:-.venv/bin/python}"

log() { echo "e2e/kind: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- prerequisites: say precisely what is missing, never pretend ------------------------------
command -v docker >/dev/null 2>&1 || die "Docker is not installed. This flavour builds images and runs a kind cluster, which needs a Docker engine; without one, run the local flavour (make test)."
timeout 30 docker info >/dev/null 2>&1 || die "Docker is installed but its daemon is not reachable ('docker info' failed): start the Docker engine (or check DOCKER_HOST and your permissions on the socket) and run this again."
[ -x "$PYTHON" ] || die "$PYTHON not found: run 'make setup' first (it creates .venv)."

tool_dir="$CACHE/tools"
if ! command -v kind >/dev/null 2>&1; then
  if [ ! -x "$tool_dir/kind-$KIND_VERSION/kind" ]; then
    command -v go >/dev/null 2>&1 || die "kind is not installed and Go is not available to build it (install kind $KIND_VERSION)."
    log "installing kind $KIND_VERSION with go install"
    GOBIN="$tool_dir/kind-$KIND_VERSION" go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
  PATH="$tool_dir/kind-$KIND_VERSION:$PATH"
fi
if ! command -v helm >/dev/null 2>&1 || ! command -v kubectl >/dev/null 2>&1; then
  assets="$(scripts/setup-control-plane.sh)"  # pinned helm and kubectl (built once, then cached)
  PATH="$assets:$PATH"
fi

# ---- images ---------------------------------------------------------------------------------
log "building openai-policy-operator:$TAG and openai-policy-sidecar:$TAG"
docker build -f Dockerfile.operator -t "openai-policy-operator:$TAG" .
docker build -f Dockerfile.sidecar -t "openai-policy-sidecar:$TAG" .
docker build -f e2e/app/Dockerfile -t "openai-policy-e2e-app:$TAG" .  # the tests' app: the openai SDK

# ---- cluster --------------------------------------------------------------------------------
work="$(mktemp -d)"
cleanup() {
  status=$?
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (kubeconfig: $work/kubeconfig); delete it with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  node_image=()
  [ -n "${KIND_NODE_IMAGE:-}" ] && node_image=(--image "$KIND_NODE_IMAGE")
  kind create cluster --name "$CLUSTER" "${node_image[@]}" --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" > "$work/kubeconfig"
export KUBECONFIG="$work/kubeconfig"
kind load docker-image --name "$CLUSTER" "openai-policy-operator:$TAG" "openai-policy-sidecar:$TAG" "openai-policy-e2e-app:$TAG"

# ---- chart ----------------------------------------------------------------------------------
log "installing the chart into $NAMESPACE"
helm upgrade --install "$RELEASE" charts/openai-policy-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set "operator.image.tag=$TAG" --set "sidecar.image.tag=$TAG" \
  --set operator.image.pullPolicy=Never --set sidecar.image.pullPolicy=Never \
  --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status deployment --timeout 120s

# ---- tests ----------------------------------------------------------------------------------
log "running the e2e tests against kind cluster $CLUSTER"
read -r -a tests <<< "${E2E_TESTS:-e2e}"
OPENAI_POLICY_E2E_CLUSTER=kind OPENAI_POLICY_E2E_NAMESPACE="$NAMESPACE" OPENAI_POLICY_E2E_RELEASE="$RELEASE" \
  OPENAI_POLICY_E2E_APP_IMAGE="openai-policy-e2e-app:$TAG" \
  "$PYTHON" -m pytest "${tests[@]}" "$@"
