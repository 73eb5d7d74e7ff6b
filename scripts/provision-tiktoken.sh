#!/usr/bin/env bash
# Provisions tiktoken's o200k_base and cl100k_base encodings for offline use, from the project's
# own copy (docker/tiktoken, the same files the sidecar image is built from): no download and no
# Rust toolchain. The Python side accepts each file only with the SHA-256 tiktoken itself expects.
# Usage: provision-tiktoken.sh PYTHON TARGET_DIR
set -euo pipefail
PYTHON="$1"; TARGET="$2"
SOURCE="$(cd "$(dirname "$0")/.." && pwd)/docker/tiktoken"
if "$PYTHON" -m openai_policy_sidecar.tokenizer_files verify --dir "$TARGET" >/dev/null 2>&1; then
  exit 0
fi
"$PYTHON" -m openai_policy_sidecar.tokenizer_files provision --from "$SOURCE" --to "$TARGET" >/dev/null
"$PYTHON" -m openai_policy_sidecar.tokenizer_files verify --dir "$TARGET"
