"""The parametrized ``store`` fixture every state test runs against."""

import pytest

from openai_policy_store import MemoryStore, RedisStore, Store


@pytest.fixture(params=["memory", "redis"], name="store")
async def store_fixture(request):
    """Each test using ``store`` runs twice: on a MemoryStore and on a RedisStore."""
    if request.param == "memory":
        made: Store = MemoryStore()
    else:
        server = request.getfixturevalue("redis")
        made = RedisStore(server.url)
    try:
        yield made
    finally:
        await made.close()
