#!/usr/bin/env bash
# Builds krew (as the kubectl plugin kubectl-krew) and krew's validate-krew-manifest from their Go
# module at a pinned version, into the cache outside the repo. Prints the directory; the kubectl
# plugin's release tests put it on PATH to validate and install the plugin's krew manifest.
set -euo pipefail
# shellcheck source=lib/build.sh
. "$(dirname "$0")/lib/build.sh"

KREW_VERSION="${KREW_VERSION:-0.4.3}"
DIR="$CACHE_ROOT/tools/krew-v${KREW_VERSION}"

if [ ! -x "$DIR/kubectl-krew" ] || [ ! -x "$DIR/validate-krew-manifest" ]; then
  echo "setup-krew: building krew v$KREW_VERSION" >&2
  mkdir -p "$DIR"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  for cmd in krew validate-krew-manifest; do
    GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/krew/cmd/$cmd@v$KREW_VERSION"
  done
  mv "$work/validate-krew-manifest" "$DIR/validate-krew-manifest"
  mv "$work/krew" "$DIR/kubectl-krew"  # kubectl finds it as `kubectl krew`
fi
echo "$DIR"
