"""The stages from the cache on, each called directly (no server; fake upstream replies): cache,
queue, forward, reply, stream_relay, settle, record."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from openai_policy_api import load_policy
from openai_policy_api.spec import CircuitBreakerSpec, QueueSpec
from openai_policy_devkit.sidecar import policy_document
from openai_policy_sidecar import refusals
from openai_policy_sidecar.context import RequestContext
from openai_policy_sidecar.guardrails import ModerationClient
from openai_policy_sidecar.metrics import Metrics
from openai_policy_sidecar.pipeline import cache, forward, queue, record, reply, settle, stream_relay
from openai_policy_sidecar.pipeline.forward import UpstreamCall
from openai_policy_sidecar.pipeline.parse import parse
from openai_policy_sidecar.policy_source import KeySource
from openai_policy_sidecar.rate_headers import LastSeen
from openai_policy_sidecar.reported_usage import Usage
from openai_policy_sidecar.resilience import (
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpen,
    Deadline,
    UpstreamQueue,
)
from openai_policy_sidecar.response_cache import CachedResponse, MemoryLRUBackend, ResponseCache
from openai_policy_sidecar.snapshot import PolicySnapshot, build_snapshot
from openai_policy_store import MemoryStore, UsageCounts

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
ANSWER = {
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"message": {"role": "assistant", "content": "hello"}}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
}


def snapshot_of(**spec: Any) -> PolicySnapshot:
    return build_snapshot(load_policy(policy_document(spec)), MemoryStore(), "file")


def never_moderated() -> ModerationClient:
    async def post(payload: dict[str, Any]) -> tuple[int, Any]:
        raise AssertionError("no moderation call expected")

    return ModerationClient(post)


class FakeContent:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class FakeResponse:
    """What the stages read of an ``aiohttp.ClientResponse``."""

    def __init__(
        self, status: int = 200, body: bytes = b"", content_type: str = "application/json", **headers: str
    ) -> None:
        self.status = status
        self.headers = CIMultiDict({"Content-Type": content_type, **headers})
        self._body = body
        self.content = FakeContent([body[i : i + 7] for i in range(0, len(body), 7)])
        self.content_length: int | None = None  # as a chunked reply
        self.released = False
        self.closed = False

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class FakeUpstream:
    """Answers each call with the next reply or exception, and remembers what it was sent."""

    def __init__(self, *replies: FakeResponse | Exception) -> None:
        self.replies = list(replies)
        self.sent: list[tuple[str, str, bytes]] = []
        self.rate_view = LastSeen()

    async def request(self, method: str, url: str, headers: Any, body: bytes, timeout: Any) -> FakeResponse:
        self.sent.append((method, url, body))
        next_reply = self.replies.pop(0)
        if isinstance(next_reply, Exception):
            raise next_reply
        return next_reply


def upstream_call(response: FakeResponse, breaker: CircuitBreaker | None = None) -> UpstreamCall:
    return UpstreamCall(
        response,
        breaker or CircuitBreaker(CircuitBreakerSpec()),
        None,
        Deadline.after(5),
        time.perf_counter(),
        5.0,
    )


def metered_ctx(**cost: int) -> RequestContext:
    ctx = RequestContext(dry_run=False)
    ctx.request.endpoint, ctx.model.sent = "chat.completions", "gpt-4o-mini"
    ctx.budget.worst_micros = cost.get("worst", 10_000)
    return ctx


# -- cache ---------------------------------------------------------------------------------------


async def test_cache_lookup_serve_and_store_after_reply():
    response_cache = ResponseCache(MemoryLRUBackend())
    snapshot = snapshot_of()
    ctx = metered_ctx()
    assert await cache.lookup(ctx, response_cache) is None and ctx.cache.state is None  # no key
    ctx.cache.key = "k" * 64
    assert await cache.lookup(ctx, response_cache) is None and ctx.cache.state == "miss"
    entry = CachedResponse(
        body=json.dumps(ANSWER).encode(),
        model="gpt-4o-mini",
        usage={"input_tokens": 1000, "output_tokens": 200},
    )
    ctx.cache.entry = entry
    await cache.store_after_reply(ctx, response_cache, 60)
    assert ctx.cache.entry is None

    hit = metered_ctx()
    hit.cache.key = ctx.cache.key
    found = await cache.lookup(hit, response_cache)
    assert found is not None and hit.cache.state == "hit"
    out = await cache.serve(make_mocked_request("POST", "/v1/chat/completions"), hit, snapshot.prices, found)
    assert out.status == 200 and out.headers[reply.CACHE_HEADER] == "hit"
    assert hit.outcome.decision == "cache_hit"
    assert hit.cache.saved_micros == snapshot.prices.cost_micros("gpt-4o-mini", 1000, 0, 200) > 0


def test_saved_micros_of_an_entry_without_usage_or_price_is_zero():
    prices = snapshot_of().prices
    assert cache.saved_micros(prices, "gpt-4o-mini", None) == 0
    assert cache.saved_micros(prices, "my-own-model", {"input_tokens": 5}) == 0


# -- queue ---------------------------------------------------------------------------------------


async def test_wait_for_slot_takes_a_free_slot_at_once():
    upstream_queue = UpstreamQueue(QueueSpec(max_concurrent=1))
    assert await queue.wait_for_slot(upstream_queue, lambda: False, Metrics())
    assert upstream_queue.in_flight == 1


async def test_a_full_queue_refuses_with_queue_full():
    upstream_queue = UpstreamQueue(QueueSpec(max_concurrent=1, max_depth=0))
    assert upstream_queue.try_acquire()
    with pytest.raises(refusals.Refusal) as refused:
        await queue.wait_for_slot(upstream_queue, lambda: False, Metrics())
    assert (refused.value.code, refused.value.status) == ("queue_full", 503)


async def test_a_caller_that_left_leaves_the_queue_without_a_slot():
    upstream_queue = UpstreamQueue(QueueSpec(max_concurrent=1, max_depth=5))
    assert upstream_queue.try_acquire()
    gone = asyncio.Event()
    waiting = asyncio.create_task(queue.wait_for_slot(upstream_queue, gone.is_set, Metrics()))
    await asyncio.sleep(0.01)
    assert upstream_queue.depth == 1
    gone.set()
    assert await waiting is False
    assert upstream_queue.depth == 0
    upstream_queue.release()
    assert upstream_queue.in_flight == 0  # nothing was handed to the caller that left


# -- forward -------------------------------------------------------------------------------------


def test_require_key():
    keys = KeySource(None, "sk-x")
    keys.load()
    assert forward.require_key(keys) == "sk-x"
    with pytest.raises(refusals.Refusal) as refused:
        forward.require_key(KeySource(None, None))  # nothing loaded
    assert refused.value.code == "api_key_missing"


def forward_spec(**spec: Any) -> Any:
    retries = {"maxAttempts": 3, "baseDelaySeconds": 0.001, "maxDelaySeconds": 0.002}
    return load_policy(policy_document({"retries": retries, **spec})).spec


async def test_forward_retries_and_records_each_reason():
    upstream = FakeUpstream(
        FakeResponse(500), FakeResponse(200, json.dumps(ANSWER).encode(), **{"x-request-id": "r1"})
    )
    spec = forward_spec()
    ctx = metered_ctx()
    parsed = parse("POST", "/v1/chat/completions", "", {}, CHAT)
    call = await forward.call_upstream(
        ctx,
        spec,
        parsed,
        [("Authorization", "Bearer placeholder")],
        CHAT,
        "sk-real",
        upstream,
        CircuitBreakers(spec.circuit_breaker),
        Metrics(),
    )
    assert call.response.status == 200
    assert (ctx.upstream.attempts, ctx.retries, ctx.upstream.retry_reasons) == (2, 1, ["500"])
    assert (ctx.upstream.request_id, ctx.outcome.status) == ("r1", 200)
    assert [url for _, url, _ in upstream.sent] == ["https://api.openai.com/v1/chat/completions"] * 2


async def test_an_unreachable_upstream_is_refused_after_the_retries():
    error = aiohttp.ClientConnectionError("refused")
    upstream = FakeUpstream(error, error, error)
    spec = forward_spec()
    ctx = metered_ctx()
    parsed = parse("POST", "/v1/chat/completions", "", {}, CHAT)
    with pytest.raises(refusals.Refusal) as refused:
        await forward.call_upstream(
            ctx,
            spec,
            parsed,
            [],
            CHAT,
            "sk",
            upstream,
            CircuitBreakers(spec.circuit_breaker),
            Metrics(),
        )
    assert refused.value.code == "upstream_unreachable" and ctx.upstream.error == "upstream_unreachable"
    assert ctx.upstream.attempts == 3


async def test_an_open_circuit_is_raised_as_is_for_the_cache_to_answer_first():
    spec = forward_spec(circuitBreaker={"failureThreshold": 1, "recoverySeconds": 60})
    breakers = CircuitBreakers(spec.circuit_breaker)
    breaker = breakers.get(spec.upstream.base_url)
    breaker.on_failure(breaker.before_call())
    ctx = metered_ctx()
    parsed = parse("POST", "/v1/chat/completions", "", {}, CHAT)
    with pytest.raises(CircuitOpen) as circuit:
        await forward.call_upstream(ctx, spec, parsed, [], CHAT, "sk", FakeUpstream(), breakers, Metrics())
    assert ctx.upstream.error is None
    refusal = forward.circuit_refusal(ctx, circuit.value)
    assert refusal.code == "circuit_open" and ctx.upstream.error == "circuit_open"


# -- reply ---------------------------------------------------------------------------------------


async def test_plain_reply_meters_and_keeps_the_answer_for_the_cache():
    snapshot = snapshot_of()
    ctx = metered_ctx()
    ctx.cache.key, ctx.cache.state = "k", "miss"
    response = FakeResponse(200, json.dumps(ANSWER).encode())
    out = await reply.plain_reply(
        ctx, upstream_call(response), snapshot.spec, snapshot.prices, never_moderated(), [], metered=True
    )
    assert out.status == 200 and out.headers[reply.REQUEST_ID_HEADER] == ctx.request_id
    assert out.headers[reply.CACHE_HEADER] == "miss"
    assert ctx.upstream.usage == Usage(1000, 0, 200) and ctx.model.reported == "gpt-4o-mini-2024-07-18"
    assert ctx.budget.cost_micros == snapshot.prices.cost_micros("gpt-4o-mini", 1000, 0, 200)
    assert ctx.cache.entry is not None and ctx.cache.entry.usage == {
        "input_tokens": 1000,
        "cached_tokens": 0,
        "output_tokens": 200,
    }


async def test_an_error_body_never_carries_the_key():
    snapshot = snapshot_of()
    ctx = metered_ctx()
    body = b'{"error": {"message": "Incorrect API key provided: sk-real-123"}}'
    out = await reply.plain_reply(
        ctx,
        upstream_call(FakeResponse(401, body)),
        snapshot.spec,
        snapshot.prices,
        never_moderated(),
        ["sk-real-123"],
        metered=True,
    )
    assert out.status == 401 and b"sk-real-123" not in out.body and b"[REDACTED]" in out.body
    assert ctx.budget.cost_micros is None  # nothing metered on an error


def test_refusal_reply_records_the_outcome():
    ctx = RequestContext(dry_run=False)
    ctx.upstream.attempts = 2
    out = reply.refusal_reply(ctx, refusals.upstream_timeout(5))
    assert (ctx.outcome.status, ctx.outcome.decision) == (504, "refused:upstream_timeout")
    assert out.headers["x-should-retry"] == "false"  # we retried already
    assert out.headers[reply.REQUEST_ID_HEADER] == ctx.request_id


# -- stream_relay --------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events
    )


async def test_relay_strips_the_usage_it_asked_for_and_meters_it():
    snapshot = snapshot_of()
    ctx = metered_ctx()
    body: dict[str, Any] = {"stream": True}
    stream_relay.ask_for_usage(ctx, "chat.completions", body)
    assert body["stream_options"] == {"include_usage": True} and ctx.upstream.strip_usage
    stream = sse(
        {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "hi"}}], "usage": None},
        {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3}},
        "[DONE]",
    )
    response = FakeResponse(200, stream, content_type="text/event-stream")
    assert stream_relay.is_event_stream(response)
    request = make_mocked_request("POST", "/v1/chat/completions")
    out = await stream_relay.relay(request, ctx, upstream_call(response), snapshot.prices, 5.0)
    written = b"".join(c.args[0] for c in request.writer.write.call_args_list)
    assert b'"usage"' not in written and b"[DONE]" in written
    assert out.status == 200 and ctx.upstream.usage == Usage(10, 0, 3)
    assert ctx.budget.cost_micros == snapshot.prices.cost_micros("gpt-4o-mini", 10, 0, 3)


def test_only_a_successful_event_stream_is_relayed():
    assert not stream_relay.is_event_stream(FakeResponse(200))
    assert not stream_relay.is_event_stream(FakeResponse(500, content_type="text/event-stream"))


# -- settle --------------------------------------------------------------------------------------


def test_meter_usage_charges_the_worst_case_when_usage_is_missing():
    prices = snapshot_of().prices
    ctx = metered_ctx(worst=7777)
    settle.meter_usage(ctx, prices, None, "gpt-4o-mini")
    assert (ctx.budget.cost_micros, ctx.outcome.decision) == (7777, "forwarded:usage_missing")


def test_meter_usage_notices_drift():
    prices = snapshot_of().prices
    ctx = metered_ctx()
    ctx.model.sent = "gpt-4o-2024-08-06"
    settle.meter_usage(ctx, prices, Usage(1, 0, 1), "gpt-4o-2024-11-20")
    assert ctx.model.drift and ctx.model.reported == "gpt-4o-2024-11-20"


async def test_finish_budget_settles_exactly_once_and_releases_what_was_not_billed():
    snapshot = snapshot_of(budget={"limits": [{"window": "day", "usd": 1}]})
    ledger = snapshot.ledger

    async def day() -> tuple[int, int]:
        [window] = [w for w in await ledger.usage() if w.window == "day"]
        return window.spent_micros, window.reserved_micros

    billed = RequestContext(dry_run=False)
    billed.budget.ledger, billed.budget.reservation = ledger, await ledger.reserve(5000)
    billed.budget.cost_micros = 1234
    await settle.finish_budget(billed, Metrics())
    await settle.finish_budget(billed, Metrics())
    assert billed.budget.settled and await day() == (1234, 0)

    unbilled = RequestContext(dry_run=False)
    unbilled.budget.ledger, unbilled.budget.reservation = ledger, await ledger.reserve(5000)
    await settle.finish_budget(unbilled, Metrics())
    assert await day() == (1234, 0)


# -- record --------------------------------------------------------------------------------------


def test_usage_counters_are_the_stores_usage_counts():
    ctx = metered_ctx()
    ctx.upstream.usage, ctx.budget.cost_micros, ctx.upstream.attempts = Usage(10, 2, 3), 99, 3
    ctx.outcome.status, ctx.cache.state, ctx.cache.saved_micros = 200, "hit", 40
    ctx.outcome.dry_run_refusals += ["pii_detected", "pii_detected"]
    counts = record.usage_counters(ctx)
    assert isinstance(counts, UsageCounts)
    assert counts.to_fields() == {
        "requests": 1,
        "tokens_input": 10,
        "tokens_output": 3,
        "tokens_cached": 2,
        "cost_micros": 99,
        "cache_hits": 1,
        "saved_micros": 40,
        "retries": 2,
        "dryrun_refused:pii_detected": 2,
    }
    refused = RequestContext(dry_run=False)
    refused.refuse(refusals.upstream_timeout(5))
    refused.upstream.error = "upstream_timeout"
    assert record.usage_counters(refused).to_fields() == {
        "requests": 1,
        "refused:upstream_timeout": 1,
        "errors": 1,
    }


def test_reason_model_label_and_access_line():
    snapshot = snapshot_of()
    ctx = RequestContext(dry_run=True)
    ctx.request.method, ctx.request.path = "POST", "/v1/chat/completions"
    ctx.model.sent = "made-up"
    ctx.enforce(refusals.model_not_allowed("made-up"))
    ctx.outcome.status = 200
    assert record.reason_of(ctx) == "ok" and record.model_label(ctx) == "other"
    fields = record.access_fields(ctx, snapshot, 0.001, {"workload": "w"})
    assert fields["decision"] == "dryrun:would_refuse:model_not_allowed"
    assert (fields["policy"], fields["model"], fields["workload"]) == ("default/demo", "made-up", "w")
    left = RequestContext(dry_run=False)
    left.outcome.status = 499
    assert record.reason_of(left) == "client_disconnected"


def test_record_adds_the_counters_to_the_usage_writer():
    snapshot = snapshot_of()
    ctx = metered_ctx()
    ctx.outcome.status = 200
    record.record(ctx, snapshot, Metrics())
    assert snapshot.usage_writer.pending == {"requests": 1}
