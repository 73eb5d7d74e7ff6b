#!/usr/bin/env bash
# Provisions tiktoken's o200k_base and cl100k_base encodings for offline use.
# The files come from the tiktoken-rs crate, which ships byte-identical copies; the Python
# side checks each against the SHA-256 tiktoken itself expects before it is used.
# Usage: provision-tiktoken.sh PYTHON TARGET_DIR
set -euo pipefail
PYTHON="$1"; TARGET="$2"
CRATE_VERSION="${TIKTOKEN_RS_VERSION:-0.9.1}"
if "$PYTHON" -m openai_policy_sidecar.tokenizer_files verify --dir "$TARGET" >/dev/null 2>&1; then
  exit 0
fi
command -v cargo >/dev/null || { echo "provision-tiktoken: cargo is needed to fetch the tiktoken-rs crate" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "tiktoken-files"
version = "0.0.0"
edition = "2021"
[dependencies]
tiktoken-rs = "=$CRATE_VERSION"
TOML
echo 'fn main() {}' > "$work/src/main.rs"
(cd "$work" && cargo fetch --quiet)
src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"tiktoken-rs-$CRATE_VERSION"/assets | head -n1)"
"$PYTHON" -m openai_policy_sidecar.tokenizer_files provision --from "$src" --to "$TARGET" >/dev/null
"$PYTHON" -m openai_policy_sidecar.tokenizer_files verify --dir "$TARGET"
