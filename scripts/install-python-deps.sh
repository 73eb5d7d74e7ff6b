#!/usr/bin/env bash
# The one way Python dependencies are installed: the Dockerfiles run it to build the images and
# CI runs it to build the test venv, so the images contain exactly what the tests ran against
# (every version pinned by constraints.txt).
#
# Usage: scripts/install-python-deps.sh VENV_DIR [--dev] [--editable]
#   --dev       also install the dev extra (pytest, ruff, linters)
#   --editable  install the project in editable mode (a working tree, not an image)
# Environment: PYTHON, the interpreter that creates VENV_DIR when it does not exist (python3).
set -euo pipefail
usage() { echo "usage: $0 VENV_DIR [--dev] [--editable]" >&2; exit 2; }
[ $# -ge 1 ] || usage
venv="$1"; shift
extra=""; editable=()
for arg in "$@"; do
  case "$arg" in
    --dev) extra="[dev]" ;;
    --editable) editable=(-e) ;;
    *) usage ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet --upgrade pip
# -c: every package, direct or transitive, at the version CI tested; a package missing from
# constraints.txt would still install unpinned, so constraints.txt must list every one.
"$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" "${editable[@]}" "$root$extra"
