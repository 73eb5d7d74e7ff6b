"""pytest fixtures for the local control plane: `control_plane` (session) and `namespace` (function)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_policy_devkit.control_plane import ControlPlane


@pytest.fixture(scope="session")
def control_plane(kubebuilder_assets: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, shared by the whole session.

    Set OPENAI_POLICY_KEEP_CONTROL_PLANE=1 to keep its directory (logs, kubeconfigs) after the run.
    """
    keep = os.environ.get("OPENAI_POLICY_KEEP_CONTROL_PLANE") == "1"
    plane = ControlPlane(kubebuilder_assets, keep_workdir=keep).start()
    try:
        yield plane
    finally:
        plane.stop()
    leftovers = plane.leftover_pids()
    assert not leftovers, f"control plane processes still running after stop(): {leftovers}"


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deletion is requested afterwards, not awaited."""
    name = control_plane.create_namespace(request.node.originalname or request.node.name)
    yield name
    control_plane.delete_namespace(name)
