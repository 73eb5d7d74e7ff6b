# Shared by the setup scripts (sourced, not run): pinned versions, the cache outside the repo,
# and the one recipe that builds Kubernetes commands from the k8s.io/kubernetes Go module.
K8S_VERSION="${K8S_VERSION:-1.34.4}"
CACHE_ROOT="${OPENAI_POLICY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openai-policy-operator}"

# build_kubernetes OUT CMD...: k8s.io/kubernetes replaces its staging modules with relative
# paths; pin them to the published v0.X.Y tags so the module builds outside its repository, and
# stamp the version the way the release does (kubectl version, the node's kubeletVersion).
build_kubernetes() {
  local out="$1" work gomod
  shift
  work="$(mktemp -d)"
  mkdir -p "$out"
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    go mod init openai-policy-operator/k8s >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
    go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
    gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
    local staging="v0.${K8S_VERSION#1.}"
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r mod; do
      go mod edit -replace="$mod=$mod@$staging"
    done
    local ver="k8s.io/component-base/version"
    local minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
    local ldflags="-s -w -X $ver.gitVersion=v$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    for cmd in "$@"; do
      CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$cmd.partial" "k8s.io/kubernetes/cmd/$cmd"
      mv "$out/$cmd.partial" "$out/$cmd"
    done
  )
}

have_all() {
  local dir="$1"; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}
