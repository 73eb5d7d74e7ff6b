"""pytest fixture `redis`: a fresh redis-server per test (tests/support/redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.managed_process import pid_alive
from tests.support.redis_server import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        pid = server.pid
        server.close()
    assert pid is None or not pid_alive(pid), f"redis-server {pid} still running after close()"
