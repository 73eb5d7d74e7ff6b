#!/usr/bin/env bash
# Builds what a real one-node cluster needs beyond the control plane, at pinned versions, into
# a cache outside the repo keyed by version: kubelet, kube-scheduler and kube-proxy (the same
# Go module recipe as the control plane), crictl and CoreDNS from their Go modules. As root it
# also installs the Debian packages the node runs on (containerd, runc, buildah, CNI plugins...).
# Prints the directory holding the binaries. Never writes into the repo.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/build.sh
. "$here/lib/build.sh"

CRICTL_VERSION="${CRICTL_VERSION:-1.34.0}"
COREDNS_VERSION="${COREDNS_VERSION:-1.12.4}"
NODE_BIN="$CACHE_ROOT/node/k8s-v${K8S_VERSION}-crictl-v${CRICTL_VERSION}-coredns-v${COREDNS_VERSION}"
DEBIAN_PACKAGES=(containerd runc buildah containernetworking-plugins debootstrap conntrack iptables socat)
# Where Debian puts what the node runs; checked before any apt-get.
NEEDED_FILES=(/usr/bin/containerd /usr/sbin/runc /usr/bin/buildah /usr/lib/cni/bridge /usr/lib/cni/host-local
  /usr/lib/cni/loopback /usr/lib/cni/portmap /usr/sbin/debootstrap /usr/sbin/conntrack /usr/sbin/iptables /usr/bin/socat)

log() { echo "setup-node: $*" >&2; }

install_packages() {
  local missing=0 f
  for f in "${NEEDED_FILES[@]}"; do [ -e "$f" ] || missing=1; done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || { log "Debian packages missing (${DEBIAN_PACKAGES[*]}): installing them needs root"; exit 1; }
  log "installing Debian packages: ${DEBIAN_PACKAGES[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${DEBIAN_PACKAGES[@]}" >/dev/null
}

build_go_tool() {  # OUT NAME PACKAGE@VERSION
  local out="$1" name="$2" pkg="$3"
  log "building $name ($pkg)"
  local tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$pkg"
  mv "$tmp/$name" "$out/$name"
  rmdir "$tmp"
}

[ "${1:-}" = "--no-packages" ] || install_packages
command -v go >/dev/null || { log "Go is required to build the node (https://go.dev/doc/install)"; exit 1; }
mkdir -p "$NODE_BIN"
if ! have_all "$NODE_BIN" kubelet kube-scheduler kube-proxy; then
  log "building kubelet, kube-scheduler, kube-proxy v$K8S_VERSION (warm Go caches: ~1.5 min; cold: ~10 min on 2 cores)"
  build_kubernetes "$NODE_BIN" kubelet kube-scheduler kube-proxy
fi
have_all "$NODE_BIN" crictl || build_go_tool "$NODE_BIN" crictl "sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
have_all "$NODE_BIN" coredns || build_go_tool "$NODE_BIN" coredns "github.com/coredns/coredns@v$COREDNS_VERSION"
echo "$NODE_BIN"
