"""Fixtures of the operator tests that need a control plane (the kubectl plugin's included): the CRD,
a Redis and one operator process per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from openai_policy_devkit.redis_server import RedisServer
from tests.operator.cluster import CRD, running_operator, wait_established


@pytest.fixture(scope="module")
def crd(control_plane):
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(control_plane, "openaipolicies.openaipolicy.dev")


@pytest.fixture(scope="module")
def op_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def operator(control_plane, crd, op_redis, tmp_path_factory) -> Iterator[dict[str, Any]]:
    with running_operator(control_plane, op_redis.url, tmp_path_factory.mktemp("operator")) as info:
        yield {**info, "redis": op_redis}
