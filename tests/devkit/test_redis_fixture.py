"""The `redis` fixture runs a real redis-server that tests can stop and restart.

(The fixture's name shadows the `redis` package inside these tests, hence the from-imports.)"""

from __future__ import annotations

import pytest
from redis.asyncio import from_url as async_redis_from_url
from redis.exceptions import ConnectionError as RedisConnectionError

from openai_policy_devkit.managed_process import pid_alive
from openai_policy_devkit.redis_server import RedisServer


def test_answers_ping_on_loopback(redis: RedisServer) -> None:
    client = redis.client()
    assert client.ping() is True
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    # No persistence configured: a restart is a clean slate, as the fault tests expect.
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}


def test_survives_a_restart_on_the_same_port(redis: RedisServer) -> None:
    client = redis.client()
    client.set("before", "1")
    port, old_pid = redis.port, redis.pid

    redis.restart()

    assert redis.port == port and redis.pid != old_pid
    assert old_pid is not None and not pid_alive(old_pid)
    # The same client reconnects by itself; the data is gone (no persistence).
    assert client.ping() is True
    assert client.get("before") is None
    client.set("after", "2")
    assert redis.client().get("after") == b"2"


def test_stopped_server_refuses_until_started_again(redis: RedisServer) -> None:
    client = redis.client()
    client.ping()
    redis.stop()
    assert not redis.running
    with pytest.raises(RedisConnectionError):
        client.ping()
    redis.start()
    assert client.ping() is True


async def test_async_clients_use_the_url(redis: RedisServer) -> None:
    client = async_redis_from_url(redis.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


def test_close_leaves_no_process() -> None:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None and pid_alive(pid)
        workdir = server.workdir
    assert not pid_alive(pid)
    assert not workdir.exists()
