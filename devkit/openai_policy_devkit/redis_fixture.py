"""pytest fixtures `redis` and `secured_redis`: a fresh redis-server per test (devkit/openai_policy_devkit/redis_server.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from openai_policy_devkit.managed_process import pid_alive
from openai_policy_devkit.redis_server import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        pid = server.pid
        server.close()
    assert pid is None or not pid_alive(pid), f"redis-server {pid} still running after close()"


@pytest.fixture
def secured_redis() -> Iterator[RedisServer]:
    """A redis-server as the chart runs it: the default user needs a password, and an AOF
    (``appendfsync everysec``) survives a restart. The password is ``server.password``."""
    server = RedisServer(password=secrets.token_urlsafe(24), appendonly=True).start()
    try:
        yield server
    finally:
        pid = server.pid
        server.close()
    assert pid is None or not pid_alive(pid), f"redis-server {pid} still running after close()"
