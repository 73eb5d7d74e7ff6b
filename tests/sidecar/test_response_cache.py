"""Response cache: key, cacheability, entries, stream replay, backends, degradation to misses."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from openai_policy_api.spec import CacheSpec
from openai_policy_sidecar.response_cache import (
    CachedResponse,
    MemoryLRUBackend,
    ResponseCache,
    StoreBackend,
    StreamRecorder,
    cache_key,
    is_cacheable,
    replay_stream,
    response_entry,
)

BASE = {
    "model": "gpt-4o-2024-08-06",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "temperature": 0,
    "max_completion_tokens": 100,
}


def key(**changes) -> str:
    body = copy.deepcopy(BASE)
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return cache_key("chat.completions", body)


# -- key -------------------------------------------------------------------------------------------


def test_key_is_hex_sha256_and_stable():
    k = cache_key("chat.completions", BASE)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == cache_key("chat.completions", json.loads(json.dumps(BASE)))


def test_key_ignores_order_number_form_and_bookkeeping_fields():
    reordered = dict(reversed(list(BASE.items())))
    assert cache_key("chat.completions", reordered) == key()
    assert key(temperature=0.0) == key()
    assert (
        key(user="u-1", metadata={"a": "b"}, store=True, safety_identifier="x", prompt_cache_key="p") == key()
    )
    assert key(stream=False) == key()  # absent means not streamed


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "gpt-4o-mini"),
        ("messages", [{"role": "user", "content": "What is 2+3?"}]),
        ("messages", [{"role": "system", "content": "terse"}, {"role": "user", "content": "What is 2+2?"}]),
        ("temperature", 0.2),
        ("top_p", 0.5),
        ("max_completion_tokens", 101),
        ("max_tokens", 100),
        ("tools", [{"type": "function", "function": {"name": "add", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("seed", 7),
        ("n", 2),
        ("stop", ["\n"]),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("logit_bias", {"50256": -100}),
        ("reasoning_effort", "high"),
        ("stream", True),
        ("stream_options", {"include_usage": True}),
        ("some_future_field", 1),  # unknown fields count: a miss is safe, a wrong hit is not
    ],
)
def test_every_answer_changing_field_changes_the_key(field, value):
    assert key(**{field: value}) != key()


def test_key_uses_pinned_model_and_endpoint():
    body = dict(BASE, model="gpt-4o")
    assert cache_key("chat.completions", body, model="gpt-4o-2024-08-06") == key()
    assert cache_key("completions", BASE) != key()


# -- cacheability ----------------------------------------------------------------------------------


def test_is_cacheable_matrix():
    on = CacheSpec(enabled=True)
    assert not is_cacheable(BASE, CacheSpec())  # disabled by default
    assert is_cacheable(BASE, on)
    assert is_cacheable(dict(BASE, stream=True), on)  # streams replay from cache
    assert not is_cacheable(dict(BASE, temperature=0.7), on)
    assert not is_cacheable({k: v for k, v in BASE.items() if k != "temperature"}, on)  # default is 1
    assert is_cacheable(dict(BASE, temperature=0.7, seed=42), on)
    assert not is_cacheable(dict(BASE, temperature=False), on)  # a bool is not a temperature
    assert is_cacheable(dict(BASE, temperature=0.7), CacheSpec(enabled=True, deterministic_only=False))
    assert is_cacheable({"model": "text-embedding-3-small", "input": "x"}, on, endpoint="embeddings")
    assert is_cacheable({"model": "gpt-4o", "input": "x", "temperature": 0}, on, endpoint="responses")
    assert not is_cacheable(
        {"model": "gpt-4o", "input": "x", "temperature": 0, "background": True}, on, endpoint="responses"
    )
    assert not is_cacheable(BASE, on, endpoint="images")


def test_requests_that_change_or_follow_changing_server_state_are_not_cached():
    on = CacheSpec(enabled=True)
    turn = {"model": "gpt-4o", "input": "x", "temperature": 0}
    # A turn of a conversation appends to it upstream: a hit would leave the conversation behind.
    assert not is_cacheable(dict(turn, conversation="conv_1"), on, endpoint="responses")
    assert not is_cacheable(dict(turn, conversation={"id": "conv_1"}), on, endpoint="responses")
    # A stored prompt without a version is its latest version, which may change.
    assert not is_cacheable(dict(turn, prompt={"id": "pmpt_1"}), on, endpoint="responses")
    assert is_cacheable(dict(turn, prompt={"id": "pmpt_1", "version": "3"}), on, endpoint="responses")
    # A stored response never changes: continuing from one is cacheable like any other input.
    assert is_cacheable(dict(turn, previous_response_id="resp_1"), on, endpoint="responses")
    # The legacy completions endpoint's prompt is text, not a stored prompt.
    assert is_cacheable(
        {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "temperature": 0}, on, endpoint="completions"
    )


# -- entries ---------------------------------------------------------------------------------------

EVENTS = [
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"4"}}]}',
    b"data: [DONE]",
]


def test_entry_round_trip_body_and_stream():
    body = CachedResponse(
        body=b'{"id":"x","choices":[]}',
        model="gpt-4o-2024-08-06",
        usage={"prompt_tokens": 5, "completion_tokens": 1},
        headers={"x-request-id": "r1"},
        stored_at=12.5,
    )
    assert CachedResponse.from_bytes(body.to_bytes()) == body and not body.streamed
    stream = CachedResponse(content_type="text/event-stream", events=list(EVENTS) + [b""], model="m")
    back = CachedResponse.from_bytes(stream.to_bytes())
    assert back == stream and back.streamed
    for broken in (
        b"",
        b"no header",
        b'{"v":2}\n',
        b'{"v":1,"status":200,"contentType":"x","events":[5]}\nabc',
    ):
        with pytest.raises((ValueError, KeyError)):
            CachedResponse.from_bytes(broken)


async def test_replay_yields_identical_sse_bytes():
    entry = CachedResponse(content_type="text/event-stream", events=list(EVENTS))
    replayed = b"".join([chunk async for chunk in replay_stream(entry)])
    assert replayed == b"\n\n".join(EVENTS) + b"\n\n"


def test_stream_recorder_only_keeps_complete_successful_streams():
    recorder = StreamRecorder()
    for event in EVENTS:
        recorder.add(event)
    entry = recorder.finish(completed=True, model="m", usage={"total_tokens": 3})
    assert entry is not None and entry.events == EVENTS and entry.content_type == "text/event-stream"
    assert recorder.finish(completed=False) is None  # cut or stalled stream
    failed = StreamRecorder()
    failed.add(b'event: response.failed\ndata: {"type":"response.failed"}')
    assert failed.finish(completed=True) is None
    small = StreamRecorder(max_bytes=50)
    for event in EVENTS:
        small.add(event)
    assert small.overflowed and small.finish(completed=True) is None


def test_response_entry_only_for_200_json_without_error():
    assert response_entry(200, b'{"id":"x"}') is not None
    assert response_entry(500, b'{"id":"x"}') is None
    assert response_entry(200, b"not json") is None
    assert response_entry(200, b'{"error":{"message":"x"}}') is None
    assert response_entry(200, b"") is None


# -- backends and the cache ------------------------------------------------------------------------


async def test_memory_lru_ttl_and_bounds():
    now = [0.0]
    backend = MemoryLRUBackend(max_entries=2, max_bytes=10, clock=lambda: now[0])
    await backend.set("a", b"1111", 5)
    await backend.set("b", b"2222", 5)
    assert await backend.get("a") == b"1111"  # a is now most recent
    await backend.set("c", b"3333", 5)
    assert await backend.get("b") is None and len(backend) == 2  # LRU evicted b
    await backend.set("d", b"123456", 5)  # 4 + 6 > 10 bytes: evict a
    assert await backend.get("a") is None and backend.size_bytes == 10
    now[0] = 5
    assert await backend.get("c") is None and await backend.get("d") is None  # expired
    await backend.set("huge", b"x" * 11, 5)
    assert await backend.get("huge") is None


async def test_cache_hit_miss_and_counters():
    cache = ResponseCache(MemoryLRUBackend(), wall_clock=lambda: 99.0)
    k = key()
    assert await cache.lookup(k) is None
    entry = response_entry(200, b'{"id":"chatcmpl-1"}', usage={"total_tokens": 9})
    assert await cache.store(k, entry, 60)
    hit = await cache.lookup(k, stream=False)
    assert hit is not None and hit.body == b'{"id":"chatcmpl-1"}' and hit.stored_at == 99.0
    assert await cache.lookup(k, stream=True) is None  # wrong form
    assert (cache.hits, cache.misses, cache.stores, cache.errors) == (1, 2, 1, 0)
    assert not await cache.store(k, None, 60) and not await cache.store(k, entry, 0)


class BrokenBackend:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def get(self, key: str) -> bytes | None:
        if self.delay:
            await asyncio.sleep(self.delay)
            return None
        raise ConnectionError("redis is down")

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        raise ConnectionError("redis is down")


async def test_backend_errors_and_slowness_are_misses_never_failures():
    cache = ResponseCache(BrokenBackend())
    assert await cache.lookup("k") is None
    assert not await cache.store("k", response_entry(200, b"{}"), 60)
    slow = ResponseCache(BrokenBackend(delay=1.0), timeout_seconds=0.02)
    assert await slow.lookup("k") is None and slow.errors == 1
    corrupt = MemoryLRUBackend()
    await corrupt.set("k", b"garbage", 60)
    assert await ResponseCache(corrupt).lookup("k") is None


async def test_store_backend_over_memory_store():
    from openai_policy_store import MemoryStore

    cache = ResponseCache(StoreBackend(MemoryStore(), ("default", "p"), lambda: "sk-test"))
    entry = StreamRecorder()
    for event in EVENTS:
        entry.add(event)
    await cache.store(key(stream=True), entry.finish(completed=True), 60)
    hit = await cache.lookup(key(stream=True), stream=True)
    assert hit is not None and hit.events == EVENTS


async def test_store_backend_over_redis_degrades_when_redis_dies(redis):
    from openai_policy_store import RedisStore

    store = RedisStore(redis.url)
    try:
        cache = ResponseCache(StoreBackend(store, ("default", "p"), lambda: "sk-test"), timeout_seconds=2.0)
        k = key()
        assert await cache.store(k, response_entry(200, b'{"id":"a"}'), 60)
        assert (await cache.lookup(k)).body == b'{"id":"a"}'
        redis.stop()
        assert await cache.lookup(k) is None  # a miss, not an exception
        assert not await cache.store(k, response_entry(200, b'{"id":"a"}'), 60)
        assert cache.errors >= 2
    finally:
        await store.close()
