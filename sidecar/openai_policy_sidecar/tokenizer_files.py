"""Offline tiktoken encodings: provision them from a local copy and verify them at start-up.

tiktoken downloads its BPE files on first use, which must never happen in a pod or a test:
a missing file would be a network call that hangs. We ask tiktoken itself which file and which
SHA-256 each encoding expects, copy verified files into ``TIKTOKEN_CACHE_DIR`` under the name
tiktoken looks for, and refuse to start with a clear message when one is missing or wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENCODINGS = ("o200k_base", "cl100k_base")


class TokenizerFilesError(RuntimeError):
    """An encoding file is missing or does not have the hash tiktoken expects."""


@dataclass(frozen=True)
class EncodingFile:
    encoding: str
    file_name: str  # the name of the file as shipped, e.g. o200k_base.tiktoken
    cache_name: str  # the name tiktoken looks for in TIKTOKEN_CACHE_DIR
    sha256: str  # the hash tiktoken verifies


class _Captured(Exception):
    def __init__(self, blobpath: str, expected_hash: str) -> None:
        super().__init__(blobpath)
        self.blobpath = blobpath
        self.expected_hash = expected_hash


def expected_file(encoding: str) -> EncodingFile:
    """Ask tiktoken's own encoding constructor which file and hash it would load."""
    # By name: tiktoken_ext ships no type information.
    public: Any = importlib.import_module("tiktoken_ext.openai_public")

    constructor = getattr(public, encoding)
    original = public.load_tiktoken_bpe

    def capture(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        raise _Captured(blobpath, expected_hash or "")

    public.load_tiktoken_bpe = capture
    try:
        constructor()
    except _Captured as captured:
        return EncodingFile(
            encoding=encoding,
            file_name=captured.blobpath.rsplit("/", 1)[-1],
            cache_name=hashlib.sha1(captured.blobpath.encode()).hexdigest(),
            sha256=captured.expected_hash,
        )
    finally:
        public.load_tiktoken_bpe = original
    raise TokenizerFilesError(f"tiktoken's {encoding} constructor did not load a BPE file")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provision(source_dir: Path, cache_dir: Path, encodings: tuple[str, ...] = ENCODINGS) -> list[Path]:
    """Copy each encoding from ``source_dir`` into ``cache_dir``, refusing any file with a wrong hash."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for encoding in encodings:
        spec = expected_file(encoding)
        source = source_dir / spec.file_name
        if not source.is_file():
            raise TokenizerFilesError(f"{spec.file_name} not found in {source_dir}")
        actual = _sha256(source)
        if actual != spec.sha256:
            raise TokenizerFilesError(
                f"{source} has SHA-256 {actual}, but tiktoken expects {spec.sha256} for {encoding}"
            )
        target = cache_dir / spec.cache_name
        shutil.copyfile(source, target)
        written.append(target)
    return written


def verify(cache_dir: Path | None = None, encodings: tuple[str, ...] = ENCODINGS) -> Path:
    """Check that every encoding is present in the cache with the right hash; return the cache dir."""
    configured = cache_dir or (
        Path(os.environ["TIKTOKEN_CACHE_DIR"]) if os.environ.get("TIKTOKEN_CACHE_DIR") else None
    )
    if configured is None:
        raise TokenizerFilesError(
            "TIKTOKEN_CACHE_DIR is not set: token counting needs the o200k_base and cl100k_base "
            "encodings offline (run `make tiktoken`, or bake them into the image)"
        )
    for encoding in encodings:
        spec = expected_file(encoding)
        path = configured / spec.cache_name
        if not path.is_file():
            raise TokenizerFilesError(
                f"encoding {encoding} is missing from TIKTOKEN_CACHE_DIR={configured} (expected file {spec.cache_name})"
            )
        actual = _sha256(path)
        if actual != spec.sha256:
            raise TokenizerFilesError(
                f"encoding {encoding} in {path} has SHA-256 {actual}, but tiktoken expects {spec.sha256}"
            )
    return configured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="copy verified encoding files into a tiktoken cache dir")
    prov.add_argument("--from", dest="source", type=Path, required=True)
    prov.add_argument("--to", dest="target", type=Path, required=True)
    check = sub.add_parser("verify", help="check a tiktoken cache dir")
    check.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "provision":
            for path in provision(args.source, args.target):
                print(path)
        else:
            print(verify(args.dir))
    except TokenizerFilesError as error:
        print(f"tiktoken encodings: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
