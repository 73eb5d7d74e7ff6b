#!/usr/bin/env bash
# The one way Python dependencies are installed: the Dockerfiles run it to build the images and
# CI runs it to build the test venv, so the images contain exactly what the tests ran against
# (every version pinned by constraints.txt).
#
# Usage: scripts/install-python-deps.sh VENV_DIR [--extra NAME]... [--dev] [--editable]
#   --extra NAME  also install the project's extra NAME (repeatable): sidecar, operator, test, dev
#                 (Dockerfile.sidecar installs [sidecar], Dockerfile.operator [operator])
#   --dev         the same as --extra dev: tests, both programs and the linters
#   --editable    install the project in editable mode (a working tree, not an image)
# Without an extra only the base is installed: what the api and store packages need.
# Environment: PYTHON, the interpreter that creates VENV_DIR when it does not exist (python3).
set -euo pipefail
usage() { echo "usage: $0 VENV_DIR [--extra sidecar|operator|test|dev]... [--dev] [--editable]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -*) usage ;; esac
venv="$1"; shift
extras=(); editable=()
while [ $# -gt 0 ]; do
  case "$1" in
    --extra)
      [ $# -ge 2 ] || usage
      case "$2" in sidecar|operator|test|dev) extras+=("$2") ;; *) usage ;; esac
      shift 2 ;;
    --dev) extras+=(dev); shift ;;
    --editable) editable=(-e); shift ;;
    *) usage ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
spec="$root"
if [ ${#extras[@]} -gt 0 ]; then
  spec="$root[$(IFS=,; echo "${extras[*]}")]"
fi

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet --upgrade pip
# -c: every package, direct or transitive, at the version CI tested; a package missing from
# constraints.txt would still install unpinned, so constraints.txt must list every one.
"$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" "${editable[@]}" "$spec"
