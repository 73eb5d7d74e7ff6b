"""The `helm` fixture of the delivery tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.delivery.chart_render import Helm


@pytest.fixture(scope="session")
def helm(kubebuilder_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = kubebuilder_assets / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: run scripts/setup-control-plane.sh")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))
