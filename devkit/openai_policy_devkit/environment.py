"""Paths that `make test` provisions outside the repo, handed to tests as fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _required_dir(variable: str, how: str) -> Path:
    value = os.environ.get(variable)
    if not value or not Path(value).is_dir():
        raise pytest.UsageError(f"{variable} is not set to a directory: {how}")
    return Path(value)


@pytest.fixture(scope="session")
def tiktoken_cache_dir() -> Path:
    """The offline tiktoken encodings (`make tiktoken` provisions them)."""
    return _required_dir(
        "TIKTOKEN_CACHE_DIR", "run `make test`, or `make tiktoken` and export TIKTOKEN_CACHE_DIR"
    )


@pytest.fixture(scope="session")
def kubebuilder_assets() -> Path:
    """etcd, kube-apiserver, kube-controller-manager, kubectl and helm (scripts/setup-control-plane.sh)."""
    return _required_dir(
        "KUBEBUILDER_ASSETS",
        "run `make test`, or export KUBEBUILDER_ASSETS=$(scripts/setup-control-plane.sh)",
    )
