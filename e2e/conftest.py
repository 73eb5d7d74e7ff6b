"""The e2e tests use the same shared fixtures as tests/ (control plane, Redis, fake upstream).

tests/conftest.py registers them only for tests/; registering them again here is a no-op when
both directories are collected (pytest loads a plugin module once).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.environments import ClusterEnvironment, cluster_from_environment

pytest_plugins = [
    "openai_policy_devkit.environment",
    "openai_policy_devkit.fake_openai_fixture",
    "openai_policy_devkit.redis_fixture",
    "openai_policy_devkit.control_plane_fixture",
]


@pytest.fixture(scope="module")
def environment() -> Iterator[ClusterEnvironment]:
    """The real cluster the run script prepared (e2e/node/run.sh, e2e/kind/run.sh), or a skip saying why.
    One per module: closing it deletes the namespaces its tests created."""
    found = cluster_from_environment()
    if isinstance(found, str):
        pytest.skip(found)
    try:
        yield found
    finally:
        found.close()
