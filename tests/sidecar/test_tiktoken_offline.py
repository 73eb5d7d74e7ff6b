"""tiktoken must count tokens with no network, from files whose hashes tiktoken itself checks."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest

from openai_policy_sidecar import tokenizer_files
from openai_policy_sidecar.tokenizer_files import TokenizerFilesError


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket to a non-loopback address fails the test loudly."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access attempted: {address!r}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def test_counts_gpt4o_tokens_offline(tiktoken_cache_dir: Path, no_network: None) -> None:
    import tiktoken

    encoding = tiktoken.encoding_for_model("gpt-4o")
    assert encoding.name == "o200k_base"
    tokens = encoding.encode("Hello, world! Budgets are counted in micro-dollars.")
    assert encoding.decode(tokens) == "Hello, world! Budgets are counted in micro-dollars."
    assert 8 <= len(tokens) <= 16
    assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_cache_holds_files_with_the_hashes_tiktoken_expects(tiktoken_cache_dir: Path) -> None:
    for name in tokenizer_files.ENCODINGS:
        spec = tokenizer_files.expected_file(name)
        path = tiktoken_cache_dir / spec.cache_name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert tokenizer_files.verify(tiktoken_cache_dir) == tiktoken_cache_dir


def test_wrong_file_is_a_clear_error(tiktoken_cache_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiktoken_cache_dir, tmp_path / "cache")
    spec = tokenizer_files.expected_file("o200k_base")
    (tmp_path / "cache" / spec.cache_name).write_bytes(b"not the o200k_base ranks\n")
    with pytest.raises(TokenizerFilesError, match=r"o200k_base .* has SHA-256 .* tiktoken expects"):
        tokenizer_files.verify(tmp_path / "cache")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFilesError, match="o200k_base is missing"):
        tokenizer_files.verify(tmp_path)


def test_provision_refuses_a_tampered_source(tiktoken_cache_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in tokenizer_files.ENCODINGS:
        spec = tokenizer_files.expected_file(name)
        shutil.copyfile(tiktoken_cache_dir / spec.cache_name, source / spec.file_name)
    assert len(tokenizer_files.provision(source, tmp_path / "ok")) == 2
    with (source / "cl100k_base.tiktoken").open("ab") as handle:
        handle.write(b"extra\n")
    with pytest.raises(TokenizerFilesError, match="cl100k_base"):
        tokenizer_files.provision(source, tmp_path / "bad")
