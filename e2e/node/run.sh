#!/usr/bin/env bash
# Runs a command (make test: the whole pytest suite) with the e2e tests on real pods: builds the
# images, brings up the real one-node cluster (scripts/cluster.sh), installs the chart with
# `helm install --wait` exactly as a user would, runs the command with the cluster's
# environment, then tears the node down and fails if anything of it is left on the machine.
# Where a real node cannot start here (not root, no cgroups...), it says why in one line and
# runs the command without it: the e2e tests then skip, saying the same.
#
# Usage: e2e/node/run.sh COMMAND [ARGS...]
# Environment: KEEP_CLUSTER=1 keeps the node up afterwards (scripts/cluster.sh down removes it);
#   OPENAI_POLICY_E2E_NODE=0 runs without the node.
# The command gets: KUBECONFIG, OPENAI_POLICY_E2E_CLUSTER=node, OPENAI_POLICY_E2E_NAMESPACE,
#   OPENAI_POLICY_E2E_RELEASE, OPENAI_POLICY_E2E_APP_IMAGE (as e2e/kind/run.sh gives them), or
#   OPENAI_POLICY_E2E_SKIP (why not).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
RELEASE=openai-policy-operator
NAMESPACE=openai-policy-system
TAG="${IMAGE_TAG:-e2e}"
log() { echo "e2e/node: $*" >&2; }

without_node() {  # REASON COMMAND...: one line saying why, then the command without the node
  local why="$1"; shift
  log "e2e on a real node: skipped: $why"
  OPENAI_POLICY_E2E_SKIP="no real node: $why" exec "$@"
}

[ "${OPENAI_POLICY_E2E_NODE:-1}" = 0 ] && without_node "OPENAI_POLICY_E2E_NODE=0" "$@"
why="$(scripts/cluster.sh preflight 2>&1)" || without_node "$why" "$@"
# One real-node run per machine: a second one waits for the first to finish.
exec 8>/run/openai-policy-node.run.lock
flock -w 1800 8 || { log "another real-node run holds /run/openai-policy-node.run.lock"; exit 1; }

assets="$(scripts/setup-control-plane.sh)"
PATH="$assets:$PATH"
started=$SECONDS
teardown() {
  status=$?
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping the node up (KUBECONFIG=$KUBECONFIG); remove it with: scripts/cluster.sh down"
    exit "$status"
  fi
  local t=$SECONDS
  scripts/cluster.sh down 8>&- || status=1
  scripts/cluster.sh check-clean || { log "the node left things behind (listed above)"; status=1; }
  log "node down in $((SECONDS - t)) s"
  exit "$status"
}
trap teardown EXIT
KUBECONFIG="$(scripts/cluster.sh up 8>&-)"
export KUBECONFIG
log "node up in $((SECONDS - started)) s (images built and imported)"

t=$SECONDS
helm install "$RELEASE" charts/openai-policy-operator --namespace "$NAMESPACE" --create-namespace \
  --set "operator.image.tag=$TAG" --set "sidecar.image.tag=$TAG" \
  --set operator.image.pullPolicy=Never --set sidecar.image.pullPolicy=Never \
  --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status deployment --timeout 120s
log "chart installed (helm install --wait) in $((SECONDS - t)) s"

t=$SECONDS
set +e
OPENAI_POLICY_E2E_CLUSTER=node OPENAI_POLICY_E2E_NAMESPACE="$NAMESPACE" OPENAI_POLICY_E2E_RELEASE="$RELEASE" \
  OPENAI_POLICY_E2E_APP_IMAGE="openai-policy-e2e-app:$TAG" "$@"
code=$?
set -e
log "command finished in $((SECONDS - t)) s with status $code"
exit "$code"
