"""The Store protocol, run identically against MemoryStore and RedisStore (the ``store`` fixture)."""

import asyncio
import json

import pytest

from openai_policy_store import MemoryStore, RedisStore, Store, StoreUnavailable, UsageWriter, keyspace

REF = ("team-a", "chatbot")


async def test_implements_the_protocol(store):
    assert isinstance(store, Store)
    assert await store.ping() is True


async def test_usage_counters_accumulate(store):
    writer = UsageWriter(store, REF)
    writer.add({"requests": 1, "tokens_input": 100, "cost_micros": 2500, "refused:budget_exceeded": 0})
    writer.add({"requests": 1, "tokens_input": 50, "refused:rate_limit_exceeded": 1})
    assert writer.pending == {
        "requests": 2,
        "tokens_input": 150,
        "cost_micros": 2500,
        "refused:rate_limit_exceeded": 1,
    }
    await writer.flush()
    assert writer.pending == {}
    await writer.flush()  # nothing buffered: no write
    writer.add({"requests": 3})
    await writer.flush()
    assert await store.read_usage(REF) == {
        "requests": 5,
        "tokens_input": 150,
        "cost_micros": 2500,
        "refused:rate_limit_exceeded": 1,
    }
    assert await store.read_usage(("team-a", "other")) == {}


async def test_heartbeats(store):
    writer = UsageWriter(store, REF)
    await writer.heartbeat(
        "pod-1", {"generation": 3, "keyLoaded": True, "lastError": None, "mode": "enforce"}
    )
    await writer.heartbeat("pod-2", {"generation": 2, "keyLoaded": False, "time": 123.0})
    beats = await store.read_heartbeats(REF)
    assert set(beats) == {"pod-1", "pod-2"}
    assert beats["pod-1"]["pod"] == "pod-1" and beats["pod-1"]["generation"] == 3
    assert isinstance(beats["pod-1"]["time"], float)
    assert beats["pod-2"]["time"] == 123.0
    await store.remove_heartbeats(REF, ["pod-2", "pod-unknown"])
    assert set(await store.read_heartbeats(REF)) == {"pod-1"}


async def test_policy_publication(store):
    assert await store.get_policy_document(REF) is None
    updates = store.policy_updates(REF)
    first = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.2)  # subscribed, nothing stored yet
    assert not first.done()
    document = {"apiVersion": "openaipolicy.dev/v1alpha1", "metadata": {"name": "chatbot", "generation": 4}}
    await store.publish_policy_document(REF, document)
    assert await asyncio.wait_for(first, 5) == 4
    assert await store.get_policy_document(REF) == document
    await store.publish_policy_document(REF, {**document, "metadata": {"generation": 5}})
    assert await asyncio.wait_for(anext(updates), 5) == 5
    await updates.aclose()
    # a late subscriber learns the current generation at once
    late = store.policy_updates(REF)
    assert await asyncio.wait_for(anext(late), 5) == 5
    await late.aclose()


async def test_publish_requires_a_generation(store):
    with pytest.raises(ValueError):
        await store.publish_policy_document(REF, {"metadata": {"name": "x"}})


async def test_cache_roundtrip_and_ttl(store):
    assert await store.cache_get(REF, "abc") is None
    payload = b'{"id": "chatcmpl-1"}\x00\xff'
    await store.cache_set(REF, "abc", payload, 0.3)
    assert await store.cache_get(REF, "abc") == payload
    assert await store.cache_get(("team-a", "other"), "abc") is None
    await asyncio.sleep(0.45)
    assert await store.cache_get(REF, "abc") is None


async def test_read_spend_reports_current_buckets(store):
    spend = await store.read_spend(REF)
    assert set(spend) == {"hour", "day", "week", "month"}
    assert all(s.spent_micros == 0 and s.reserved_micros == 0 for s in spend.values())


class _Broken(MemoryStore):
    async def incr_usage(self, ref, counters):
        raise StoreUnavailable("down")


async def test_failed_flush_keeps_counts():
    store = _Broken()
    writer = UsageWriter(store, REF)
    writer.add({"requests": 2, "errors": 1})
    with pytest.raises(StoreUnavailable):
        await writer.flush()
    writer.add({"requests": 1})
    assert writer.pending == {"requests": 3, "errors": 1}


async def test_redis_heartbeats_survive_a_corrupt_entry(redis):
    store = RedisStore(redis.url)
    try:
        await store.write_heartbeat(REF, "good", {"pod": "good"})
        redis.client().hset(keyspace.heartbeats_key(*REF), "bad", "{not json")
        assert await store.read_heartbeats(REF) == {"good": {"pod": "good"}}
        assert json.loads(redis.client().hget(keyspace.heartbeats_key(*REF), "good")) == {"pod": "good"}
    finally:
        await store.close()
