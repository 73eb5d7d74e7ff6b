#!/usr/bin/env bash
# Builds the images a real node runs, daemonless with buildah, without network beyond the
# package registries: the operator and sidecar images from the Dockerfiles, exactly as a user
# builds them, with Python packages from a wheelhouse built on the host from constraints.txt
# (the build itself runs with --network=none). Also the e2e tests' app image (e2e/app/Dockerfile). Images a cluster would pull from a container
# registry that cannot be reached here (the Dockerfiles' python base, pause, redis) are built as
# stand-ins with the same tags from Debian packages, and the script says so when it does.
# Each image ends as an OCI archive under the cache, ready for `ctr images import`.
#
# Usage: scripts/build-images.sh [TAG]    (default tag: e2e). Prints the archive directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/build.sh
. "$root/scripts/lib/build.sh"

TAG="${1:-${IMAGE_TAG:-e2e}}"
OUT="$CACHE_ROOT/images"
BASE="$(awk '/^FROM /{print $2; exit}' "$root/Dockerfile.operator")"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
REDIS_IMAGE="redis:$(awk '/^redis:/{r=1} r && /^    tag:/{print $2; exit}' "$root/charts/openai-policy-operator/values.yaml")"
PY="${PYTHON:-$root/.venv/bin/python}"
# Beyond the project's two extras: the e2e app's SDK, pip itself and the build backend.
WHEELS=(openai pip setuptools)
# crun (buildah's default) fails on hybrid cgroups; runc works everywhere.
[ -x /usr/sbin/runc ] && export BUILDAH_RUNTIME=/usr/sbin/runc
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-oci}"

log() { echo "build-images: $*" >&2; }
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
full() { case "$1" in */*) echo "$1" ;; *) echo "docker.io/library/$1" ;; esac; }

# The Debian mirror apt already uses on this machine (never a host name of our own).
debian_mirror() {
  local uri
  uri="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$uri" ] || uri="$(awk '$1=="deb"{print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [ -n "$uri" ] || { log "no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
  echo "$uri"
}

# rootfs_image TAG PACKAGES CONFIG...: debootstrap a minimal Debian with PACKAGES, commit it as TAG.
rootfs_image() {
  local tag="$1" packages="$2"; shift 2
  local rootfs ctr
  rootfs="$(mktemp -d)"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$(debian_mirror)" >/dev/null
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  ctr="$(buildah from scratch)"
  buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
  rm -rf "$rootfs"
  buildah config --label org.opencontainers.image.description="stand-in for $tag built locally from Debian packages" "$@" "$ctr"
  buildah commit --quiet --rm "$ctr" "$(full "$tag")" >/dev/null
}

stand_in() {  # TAG BUILDER: pull the real image when a registry answers, else build the stand-in
  local tag="$1" builder="$2"
  have_image "$(full "$tag")" && return 0
  if timeout 20 buildah pull --quiet "$(full "$tag")" >/dev/null 2>&1; then return 0; fi
  log "$tag cannot be pulled (no container registry reachable): building a STAND-IN with that tag from Debian packages; it is for this machine only, real users pull the real image"
  "$builder" "$tag"
}

python_base() {
  rootfs_image "$1" python3,python3-venv,ca-certificates \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env LANG=C.UTF-8 --cmd python3
  local ctr
  ctr="$(buildah from --pull=never "$(full "$1")")"
  # The official image's interpreter lives in /usr/local/bin; so do its python/python3 names.
  buildah run --network=none "$ctr" -- sh -c 'ln -s /usr/bin/python3 /usr/local/bin/python3 && ln -s /usr/bin/python3 /usr/local/bin/python'
  buildah commit --quiet --rm "$ctr" "$(full "$1")" >/dev/null
}

redis_image() {
  # The official image's redis-server and redis-cli with sh, run by the chart as uid 999.
  rootfs_image "$1" redis-server,redis-tools --cmd redis-server --port 6379
}

pause_image() {
  local work ctr
  work="$(mktemp -d)"
  cp "$root/scripts/node/pause.go" "$work/main.go"
  (cd "$work" && go mod init pause >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o pause .)
  ctr="$(buildah from scratch)"
  buildah copy --quiet "$ctr" "$work/pause" /pause >/dev/null
  rm -rf "$work"
  buildah config --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.description="stand-in for $1 built locally" "$ctr"
  buildah commit --quiet --rm "$ctr" "$(full "$1")" >/dev/null
}

download() {  # DIR PYTHON_VERSION REQUIREMENT...: wheels for the image's interpreter and platform
  local dir="$1" version="$2"; shift 2
  "$PY" -m pip download --quiet --disable-pip-version-check -d "$dir" -c "$root/constraints.txt" \
    --python-version "$version" --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform linux_x86_64 --platform any "$@" >&2
}

# The wheelhouse: every package of constraints.txt the images install, for the interpreter the
# base image has, plus pip and the build backend; keyed by what decides it.
wheelhouse() {
  local key dir version ctr
  # The base's own interpreter version decides the environment markers (e.g. redis needs
  # async-timeout below 3.11.3, which Debian's 3.11.2 in the stand-in is).
  ctr="$(buildah from --pull=never "$(full "$BASE")")"
  version="$(buildah run --network=none "$ctr" -- python3 -c 'import platform; print(platform.python_version())')"
  buildah rm "$ctr" >/dev/null
  key="$( (cat "$root/constraints.txt" "$root/pyproject.toml"; echo "$version ${WHEELS[*]}") | sha256sum | cut -c1-16)"
  dir="$CACHE_ROOT/wheelhouse/$key"
  if [ ! -f "$dir/.complete" ]; then
    log "building the wheelhouse from constraints.txt into $dir"
    rm -rf "$dir"; mkdir -p "$dir"
    local pins
    pins="$(mktemp)"
    grep -iE '^(pip|setuptools|wheel)==' "$root/constraints.txt" > "$pins" || true
    download "$dir" "$version" "$root[operator,sidecar]" "${WHEELS[@]}" -r "$pins"
    rm -f "$pins" "$dir"/openai_policy_operator-*
    local missing
    while missing="$("$PY" "$root/scripts/node/wheelhouse_missing.py" "$dir" "$version")" && [ -n "$missing" ]; do
      # shellcheck disable=SC2086  # one requirement per word
      download "$dir" "$version" $missing
    done
    touch "$dir/.complete"
  fi
  echo "$dir"
}

project_image() {  # DOCKERFILE NAME WHEELHOUSE
  local started=$SECONDS
  buildah bud --quiet --layers --pull=never --network=none -f "$root/$1" \
    -v "$3:/wheelhouse:ro" --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_INDEX=1 \
    -t "$(full "$2:$TAG")" "$root" >/dev/null
  log "$2:$TAG built in $((SECONDS - started)) s, $(buildah images --format '{{.Size}}' "$(full "$2:$TAG")")"
}

export_archive() {  # IMAGE: an OCI archive named by the image's id (rewritten only when it changes)
  local ref id file
  ref="$(full "$1")"
  id="$(buildah inspect --type image --format '{{.FromImageID}}' "$ref")"
  file="$OUT/$(echo "$1" | tr '/:' '__')-${id:0:16}.oci.tar"
  if [ ! -f "$file" ]; then
    rm -f "$OUT/$(echo "$1" | tr '/:' '__')"-*.oci.tar
    buildah push --quiet "$ref" "oci-archive:$file.partial:$ref" >/dev/null
    mv "$file.partial" "$file"
  fi
}

command -v buildah >/dev/null || { log "buildah is missing: run scripts/setup-node.sh (as root)"; exit 1; }
mkdir -p "$OUT"
stand_in "$BASE" python_base
stand_in "$PAUSE_IMAGE" pause_image
stand_in "$REDIS_IMAGE" redis_image
wheels="$(wheelhouse)"
project_image Dockerfile.operator openai-policy-operator "$wheels"
project_image Dockerfile.sidecar openai-policy-sidecar "$wheels"
project_image e2e/app/Dockerfile openai-policy-e2e-app "$wheels"  # the e2e tests' app: the openai SDK
for image in "$PAUSE_IMAGE" "$REDIS_IMAGE" "openai-policy-operator:$TAG" "openai-policy-sidecar:$TAG" "openai-policy-e2e-app:$TAG"; do
  export_archive "$image"
done
# Earlier builds' images and layers (a code change rebuilds from the COPY on, so a kept layer
# cache saves little while each rebuild would leave ~0.5 GB behind).
buildah rmi --prune >/dev/null 2>&1 || true
echo "$OUT"
