#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, from the project's own pieces: etcd,
# kube-apiserver and kube-controller-manager (scripts/setup-control-plane.sh), kubelet,
# kube-scheduler, kube-proxy and CoreDNS (scripts/setup-node.sh), containerd + runc from Debian,
# and the images of scripts/build-images.sh imported into containerd. Needs root.
#
# Usage: scripts/cluster.sh up | down | status | check-clean | preflight
#   up           start the cluster (one per machine: a second `up` refuses); prints the kubeconfig path
#   down         stop everything `up` started and remove what it set up on the machine
#   check-clean  exit non-zero, listing each leftover (process, bridge, iptables chain, mount, cgroup)
#   preflight    say in one line why a node cannot start here, exit non-zero; silent when it can
#
# The network stays on the machine: one bridge (oaip0) holds the node's address and the pods
# (CNI bridge plugin, no masquerade), a FORWARD rule drops anything leaving that bridge for another
# interface, and Service addresses are virtual (kube-proxy's iptables rules).
# Fixes this kind of machine needs (see docs in e2e/README.md): runc, not crun (hybrid cgroups);
# no process may lower its OOM score (no CAP_SYS_RESOURCE): containerd restrict_oom_score_adj,
# kubelet oomScoreAdj 0, kube-proxy --oom-score-adj=0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/build.sh
. "$root/scripts/lib/build.sh"

STATE="${OPENAI_POLICY_NODE_STATE:-/var/lib/openai-policy-node}"
LOCK="${OPENAI_POLICY_NODE_LOCK:-/run/openai-policy-node.lock}"
IMAGE_STORE="$CACHE_ROOT/node-containerd"  # kept across clusters: a warm start imports nothing new
BRIDGE=oaip0
NODE_NAME=openai-policy-node
NODE_IP=10.250.0.1
POD_CIDR=10.250.0.0/24
SERVICE_CIDR=10.251.0.0/24
SERVICE_API_IP=10.251.0.1
ETCD_PORT=23790
ETCD_PEER_PORT=23800
API_PORT=6443
FORWARD_CHAIN=OAIP-NODE-FORWARD
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- preflight: every reason a node cannot start here, in one line --------------------------------
preflight() {
  [ "$(id -u)" = 0 ] || { echo "not root (a kubelet, containerd and pod networking need root)"; return 1; }
  [ "$(uname -s)" = Linux ] || { echo "not Linux"; return 1; }
  [ -d /sys/fs/cgroup ] || { echo "no cgroup filesystem at /sys/fs/cgroup"; return 1; }
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null \
    || { echo "no br_netfilter (bridged pod traffic cannot reach Service rules)"; return 1; }
  command -v go >/dev/null || { echo "Go is missing (it builds the node's binaries)"; return 1; }
  command -v apt-get >/dev/null || command -v containerd >/dev/null \
    || { echo "containerd is missing and there is no apt-get to install it"; return 1; }
  grep -q overlay /proc/filesystems || modprobe overlay 2>/dev/null \
    || { echo "no overlay filesystem for containerd"; return 1; }
  return 0
}

# ---- certificates and kubeconfigs ---------------------------------------------------------------
cert() {  # NAME SUBJECT USAGE [SANS]
  local name="$1" subject="$2" usage="$3" sans="${4:-}" ext
  case "$usage" in
    ca) ext="basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign,digitalSignature" ;;
    server) ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth" ;;
    client) ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" ;;
  esac
  [ -n "$sans" ] && ext="$ext
subjectAltName=$sans"
  printf '[req]\ndistinguished_name=dn\nprompt=no\n[dn]\n[ext]\n%s\n' "$ext" > "$PKI/$name.cnf"
  local signer=()
  [ "$usage" = ca ] || signer=(-CA "$PKI/ca.crt" -CAkey "$PKI/ca.key")
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/$name.key" \
    -out "$PKI/$name.crt" -subj "$subject" -days 7 -config "$PKI/$name.cnf" -extensions ext "${signer[@]}" 2>/dev/null
  chmod 600 "$PKI/$name.key"
}

kubeconfig() {  # NAME CERT: a kubeconfig for the client certificate CERT
  cat > "$STATE/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $2, namespace: default}
current-context: $NODE_NAME
YAML
  chmod 600 "$STATE/$1.kubeconfig"
}

make_pki() {
  PKI="$STATE/pki"; mkdir -p "$PKI"
  cert ca "/CN=openai-policy-node-ca" ca
  cert apiserver "/CN=kube-apiserver" server "IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_API_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert kubelet-serving "/CN=$NODE_NAME" server "IP:$NODE_IP,DNS:$NODE_NAME"
  cert admin "/O=system:masters/CN=kubernetes-admin" client
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
  cert controller-manager "/CN=system:kube-controller-manager" client
  cert scheduler "/CN=system:kube-scheduler" client
  cert kube-proxy "/CN=system:kube-proxy" client
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
  cert coredns "/CN=openai-policy-node:coredns" client
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI/sa.key"
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kube-proxy kube-proxy
  kubeconfig kubelet kubelet
  kubeconfig coredns coredns
}

# ---- processes, by recorded pid ---------------------------------------------------------------
spawn() {  # NAME ARGV...: a new session, output to logs/NAME.log, pid to pids/NAME
  local name="$1"; shift
  # 9>&-: the daemons must not inherit the lock's descriptor (they would hold it forever).
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$STATE/pids/$name"
}

alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }

wait_until() {  # SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out after ${limit}s waiting for $what; its log:"; tail -n 30 "$STATE/logs/$LAST.log" >&2 || true; return 1; }
    sleep 0.5
  done
}

kctl() { "$ASSETS/kubectl" --kubeconfig "$STATE/admin.kubeconfig" --request-timeout=20s "$@"; }

# ---- network --------------------------------------------------------------------------------
network_up() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  cat /proc/sys/net/ipv4/ip_forward > "$STATE/ip_forward.before"
  cat /proc/sys/net/bridge/bridge-nf-call-iptables > "$STATE/bridge-nf.before"
  echo 1 > /proc/sys/net/ipv4/ip_forward
  echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  # Pod traffic never leaves the machine: drop whatever would be forwarded off the pod bridge.
  iptables -N "$FORWARD_CHAIN"
  iptables -A "$FORWARD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -A "$FORWARD_CHAIN" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP
  iptables -I FORWARD 1 -j "$FORWARD_CHAIN"
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat > "$STATE/cni/net.d/10-oaip.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "oaip", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
}

# ---- up -------------------------------------------------------------------------------------
write_configs() {
  mkdir -p "$IMAGE_STORE" "$STATE/containerd" "$STATE/kubelet" "$STATE/pod-logs"
  cat > "$STATE/containerd/config.toml" <<TOML
version = 2
root = "$IMAGE_STORE"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
TOML
  cat > "$STATE/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-serving.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving.key"
containerRuntimeEndpoint: "unix://$STATE/containerd/containerd.sock"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
clusterDNS: ["$NODE_IP"]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: "$STATE/pod-logs"
syncFrequency: 10s
serializeImagePulls: false
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  printf '.:53 {\n  bind %s\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {\n    kubeconfig %s\n    pods insecure\n  }\n  cache 5\n}\n' \
    "$NODE_IP" "$STATE/coredns.kubeconfig" > "$STATE/Corefile"
}

import_images() {  # this build's images; older ones go, so the kept store does not grow
  local archive ctr=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io)
  for archive in "$IMAGES"/*.oci.tar; do
    "${ctr[@]}" images import "$archive" | awk '$1=="unpacking"{print $2}'
  done > "$STATE/images.current"
  # Every ref (names, and the CRI's sha256: ids) whose image is not one of this build's.
  "${ctr[@]}" images ls | awk 'NR==FNR{keep[$1]=1; next} FNR>1 && ($1 in keep){digest[$3]=1; next} FNR>1{refs[$1]=$3}
    END{for (r in refs) if (!(refs[r] in digest)) print r}' "$STATE/images.current" - | xargs -r "${ctr[@]}" images rm >/dev/null
}

up() {
  local why
  why="$(preflight)" || die "a real node cannot start here: $why"
  if [ -d "$STATE/pids" ] && ls "$STATE/pids" | grep -q .; then
    die "a cluster is already up (state in $STATE): run scripts/cluster.sh down first"
  fi
  local started=$SECONDS
  ASSETS="$("$root/scripts/setup-control-plane.sh")"
  NODE_BIN="$("$root/scripts/setup-node.sh")"
  IMAGES="$("$root/scripts/build-images.sh")"
  log "binaries and images ready in $((SECONDS - started)) s; starting the node"
  rm -rf "$STATE"; mkdir -p "$STATE/pids" "$STATE/logs"
  trap 'log "start failed: tearing down"; down_now' ERR
  make_pki
  write_configs
  network_up

  LAST=containerd; spawn containerd containerd --config "$STATE/containerd/config.toml"
  wait_until 30 containerd ctr --address "$STATE/containerd/containerd.sock" version
  import_images &
  local importing=$!

  LAST=etcd; spawn etcd "$ASSETS/etcd" --name=node --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level=warn
  LAST=kube-apiserver; spawn kube-apiserver "$ASSETS/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address="$NODE_IP" --advertise-address="$NODE_IP" \
    --secure-port="$API_PORT" --cert-dir="$STATE/apiserver-certs" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --enable-aggregator-routing=true --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true --profiling=false
  wait_until 90 kube-apiserver kctl get --raw /readyz
  kctl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "openai-policy-node:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "openai-policy-node:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "openai-policy-node:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "openai-policy-node:coredns"}]
YAML
  LAST=kube-controller-manager; spawn kube-controller-manager "$ASSETS/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --cert-dir="$STATE/controller-manager-certs" --profiling=false
  LAST=kube-scheduler; spawn kube-scheduler "$NODE_BIN/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false \
    --cert-dir="$STATE/scheduler-certs"
  wait "$importing"
  LAST=kubelet; spawn kubelet "$NODE_BIN/kubelet" --config="$STATE/kubelet/config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
    --root-dir="$STATE/kubelet/root" --cert-dir="$STATE/kubelet/pki" --v=1
  LAST=kube-proxy; spawn kube-proxy "$NODE_BIN/kube-proxy" --kubeconfig="$STATE/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables --oom-score-adj=0 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --nodeport-addresses="$NODE_IP/32" --iptables-localhost-nodeports=false
  LAST=coredns; spawn coredns "$NODE_BIN/coredns" -conf "$STATE/Corefile"
  LAST=kubelet; wait_until 120 "the node to be Ready" \
    sh -c "'$ASSETS/kubectl' --kubeconfig '$STATE/admin.kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # A volume for the chart's Redis (its append-only file): the claim binds this hostPath PV.
  mkdir -p "$STATE/volumes/redis"; chmod 0777 "$STATE/volumes/redis"
  kctl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: openai-policy-node-redis}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$STATE/volumes/redis", type: Directory}
YAML
  trap - ERR
  log "node $NODE_NAME Ready in $((SECONDS - started)) s; kubeconfig: $STATE/admin.kubeconfig"
  echo "$STATE/admin.kubeconfig"
}

# ---- down -----------------------------------------------------------------------------------
our_shims() {  # containerd shims of this cluster (they outlive containerd; found by their -address)
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $STATE/containerd/containerd.sock" && echo "${p#/proc/}"
  done
  return 0
}

stop_pid() {  # PID: TERM, then KILL after 10 s
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
  local name=$1
  [ -f "$STATE/pids/$name" ] || return 0
  stop_pid "$(cat "$STATE/pids/$name")"
  rm -f "$STATE/pids/$name"
}

our_mounts() {  # deepest first
  findmnt -rn -o TARGET | { grep -E "^($STATE|$IMAGE_STORE)/" || true; } | sort -r
}

our_chains() {  # "COMMAND TABLE CHAIN" for each chain of the node: KUBE-* (kubelet, kube-proxy), CNI-*, ours
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S 2>/dev/null | awk -v c="$cmd" -v t="$table" -v f="$FORWARD_CHAIN" \
        '$1=="-N" && ($2 ~ /^(KUBE-|CNI-)/ || $2==f) {print c, t, $2}'
    done
  done
}

remove_chains() {  # every chain of our_chains, after the rules elsewhere that jump to them
  local cmd table chain rule
  iptables -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null || true
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S 2>/dev/null | { grep -E '^-A .* -j (KUBE-|CNI-)' || true; } | { grep -vE '^-A (KUBE-|CNI-)' || true; } \
        | sed 's/^-A /-D /' | while read -r rule; do eval "$cmd -t $table $rule" 2>/dev/null || true; done
    done
  done
  while read -r cmd table chain; do [ -n "$chain" ] && "$cmd" -t "$table" -F "$chain" 2>/dev/null; done <<< "$(our_chains)"
  while read -r cmd table chain; do [ -n "$chain" ] && "$cmd" -t "$table" -X "$chain" 2>/dev/null; done <<< "$(our_chains)"
  return 0
}

remove_cgroups() {  # the kubepods hierarchy the kubelet made, deepest first (empty once pods are gone)
  local dir
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

down_now() {
  trap - ERR
  [ -d "$STATE" ] || return 0
  NODE_BIN="${NODE_BIN:-$("$root/scripts/setup-node.sh" --no-packages 2>/dev/null || true)}"
  stop_component kubelet
  if [ -S "$STATE/containerd/containerd.sock" ] && [ -x "$NODE_BIN/crictl" ]; then
    local crictl=("$NODE_BIN/crictl" --runtime-endpoint "unix://$STATE/containerd/containerd.sock" --timeout 30s)
    "${crictl[@]}" stopp $("${crictl[@]}" pods -q 2>/dev/null) >/dev/null 2>&1 || true
    "${crictl[@]}" rmp -fa >/dev/null 2>&1 || true
  fi
  local name
  for name in coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do
    stop_component "$name"
  done
  for name in $(our_shims); do stop_pid "$name"; done
  [ -x "$NODE_BIN/kube-proxy" ] && "$NODE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  remove_chains
  # Mounts: Secret/ConfigMap tmpfs volumes, pod network namespaces, container rootfs, deepest first.
  local target
  for target in $(our_mounts); do umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  [ -f "$STATE/ip_forward.before" ] && cat "$STATE/ip_forward.before" > /proc/sys/net/ipv4/ip_forward
  [ -f "$STATE/bridge-nf.before" ] && cat "$STATE/bridge-nf.before" > /proc/sys/net/bridge/bridge-nf-call-iptables
  remove_cgroups
  rm -rf "$STATE"
}

# ---- check-clean ----------------------------------------------------------------------------
check_clean() {
  local left=()
  [ -d "$STATE" ] && left+=("state directory $STATE")
  [ -n "$(our_shims)" ] && left+=("containerd shims: $(our_shims | tr '\n' ' ')")
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qE -- "$STATE/|$STATE\$|openai-policy-node\.lock"; then
      left+=("process ${p#/proc/}: $({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | cut -c1-120)")
    fi
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  ip -o link show type veth 2>/dev/null | grep -qF "master $BRIDGE" && left+=("veth on $BRIDGE")
  local line
  while read -r line; do [ -n "$line" ] && left+=("chain: $line"); done <<< "$(our_chains)"
  while read -r line; do [ -n "$line" ] && left+=("mount: $line"); done <<< "$(our_mounts)"
  for p in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do [ -d "$p" ] && left+=("cgroup $p"); done
  if [ ${#left[@]} -gt 0 ]; then
    printf 'left behind: %s\n' "${left[@]}" >&2
    return 1
  fi
  log "clean: no process, bridge, iptables chain, mount or cgroup of the node is left"
}

status() {
  local name
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then echo "$name running (pid $(cat "$STATE/pids/$name"))"; else echo "$name not running"; fi
  done
}

with_lock() {  # one cluster operation on this machine at a time
  mkdir -p "$(dirname "$LOCK")"
  exec 9>"$LOCK"
  flock -w "${OPENAI_POLICY_NODE_LOCK_WAIT:-600}" 9 || die "another cluster operation holds $LOCK"
  "$@"
}

case "${1:-}" in
  up) with_lock up ;;
  down) with_lock down_now; log "down" ;;
  status) status ;;
  check-clean) check_clean ;;
  preflight) preflight >&2 ;;
  *) echo "usage: $0 up|down|status|check-clean|preflight" >&2; exit 2 ;;
esac
