"""Redis-specific guarantees: cluster-safe keys, expiry, prompt failure, restarts, big numbers."""

import asyncio
import time
from datetime import UTC, datetime

import pytest
from redis.crc import key_slot

from openai_policy_api import BudgetSpec, RateLimitSpec
from openai_policy_store import (
    BudgetLedger,
    RateLimiter,
    RedisStore,
    StoreUnavailable,
    UsageWriter,
    keyspace,
)
from openai_policy_store.windows import KEY_GRACE_SECONDS, bucket_end

REF = ("team-a", "chatbot")


def budget(**limits: float) -> BudgetSpec:
    return BudgetSpec.model_validate({"limits": [{"window": w, "usd": usd} for w, usd in limits.items()]})


@pytest.fixture
async def store(redis):
    made = RedisStore(redis.url, socket_timeout=0.3, connect_timeout=0.3)
    try:
        yield made
    finally:
        await made.close()


async def test_every_key_of_a_policy_is_in_one_cluster_slot(redis, store):
    ledger = BudgetLedger(store, REF, budget(hour=1, day=2, month=3))
    await ledger.reserve(10)
    await RateLimiter(
        store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 5, "perUser": {}})
    ).check("u", 1)
    writer = UsageWriter(store, REF)
    writer.add({"requests": 1})
    await writer.flush()
    await writer.heartbeat("pod", {})
    await store.publish_policy_document(REF, {"metadata": {"generation": 1}})
    await store.cache_set(REF, "d" * 64, b"x", 60)
    keys = [k.decode() for k in redis.client().keys("*")]
    assert len(keys) >= 11  # 3 reserved, 2 reservation index, 2 rate, usage, beats, policy, cache
    assert all("{team-a/chatbot}" in key for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_keys_expire_after_their_window(redis, store):
    now = datetime.now(UTC)
    ledger = BudgetLedger(store, REF, budget(hour=1))
    await ledger.settle(await ledger.reserve(10, now=now), 10)
    client = redis.client()
    for window in ("hour", "day", "month"):
        bucket = keyspace.window_bucket(window, now)
        ttl = client.ttl(keyspace.spend_key(*REF, window, bucket))
        expected = bucket_end(window, now).timestamp() - time.time() + KEY_GRACE_SECONDS[window]
        assert expected - 5 <= ttl <= expected + 1, window
        assert client.ttl(keyspace.reserved_key(*REF, window, bucket)) > KEY_GRACE_SECONDS[window] - 5
    await RateLimiter(store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 5})).check(None, 0)
    (rate_key,) = client.keys("*ratelimit*")
    assert 0 < client.ttl(rate_key) <= 120


async def test_past_buckets_get_a_grace_ttl_not_an_instant_expiry(redis, store):
    old = datetime(2020, 1, 1, 12, tzinfo=UTC)
    ledger = BudgetLedger(store, REF, budget(hour=1))
    await ledger.settle(await ledger.reserve(10, now=old), 10)
    assert (await store.read_spend(REF, now=old))["hour"].spent_micros == 10
    assert redis.client().ttl(keyspace.spend_key(*REF, "hour", "2020-01-01T12")) > 0


async def test_large_amounts_stay_exact(store, redis):
    ledger = BudgetLedger(
        store, REF, budget(month=1_000_000_000)
    )  # the largest limit a policy allows: 1e15 micros
    reservation = await ledger.reserve(987_654_321_012_345)
    await ledger.settle(reservation, 987_654_321_012_346)
    bucket = keyspace.window_bucket("month")
    assert redis.client().get(keyspace.spend_key(*REF, "month", bucket)) == b"987654321012346"
    assert (await store.read_spend(REF))["month"].spent_micros == 987_654_321_012_346


async def test_redis_down_fails_promptly_for_every_operation(redis, store):
    assert await store.ping()
    redis.stop()
    ledger = BudgetLedger(store, REF, budget(hour=1))
    started = time.monotonic()
    assert await store.ping() is False
    operations = [
        ledger.reserve(1),
        store.read_usage(REF),
        store.read_heartbeats(REF),
        store.read_spend(REF),
        store.incr_usage(REF, {"requests": 1}),
        store.write_heartbeat(REF, "pod", {}),
        store.get_policy_document(REF),
        store.publish_policy_document(REF, {"metadata": {"generation": 2}}),
        store.cache_get(REF, "d"),
        store.cache_set(REF, "d", b"x", 1),
        RateLimiter(store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 1})).check(None, 0),
    ]
    for operation in operations:
        with pytest.raises(StoreUnavailable):
            await operation
    assert time.monotonic() - started < 3


async def test_a_server_that_never_answers_times_out():
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)  # accept, read, never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(
        f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, connect_timeout=0.2, operation_timeout=1
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await BudgetLedger(store, REF, budget(hour=1)).reserve(1)
        assert time.monotonic() - started < 1.5
    finally:
        await store.close()
        server.close()


async def test_recovers_after_a_restart(redis, store):
    ledger = BudgetLedger(store, REF, budget(hour=1))
    await ledger.settle(await ledger.reserve(5), 5)
    redis.restart()  # scripts and data are gone; the store reloads its scripts
    reservation = await ledger.reserve(7)
    await ledger.settle(reservation, 7)
    # The 5 settled before the restart come back with the next reservation (the ledger's floor).
    assert (await store.read_spend(REF))["hour"].spent_micros == 12


async def test_policy_updates_survive_a_restart(redis, store):
    updates = store.policy_updates(REF, reconnect_delay=0.1, max_reconnect_delay=0.2)
    await store.publish_policy_document(REF, {"metadata": {"generation": 1}})
    assert await asyncio.wait_for(anext(updates), 5) == 1
    redis.restart()
    next_update = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.3)
    await store.publish_policy_document(REF, {"metadata": {"generation": 2}})
    assert await asyncio.wait_for(next_update, 10) == 2
    await updates.aclose()


async def test_more_calls_than_connections_wait_for_one_instead_of_failing(redis):
    store = RedisStore(redis.url, max_connections=2)
    try:
        ledger = BudgetLedger(store, REF, budget(hour=1))
        reservations = await asyncio.gather(*(ledger.reserve(1_000) for _ in range(40)))
        await asyncio.gather(*(ledger.settle(r, 500) for r in reservations))
        usage = {u.window: u for u in await ledger.usage()}["hour"]
        assert (usage.spent_micros, usage.reserved_micros) == (20_000, 0)
        assert len(store._client.connection_pool._in_use_connections) == 0
        assert len(store._client.connection_pool._available_connections) <= 2
    finally:
        await store.close()
