"""Moderation client (scripted HTTP), its cache, fail open/closed, and the stage."""

from __future__ import annotations

import asyncio

import pytest

from openai_policy_api.spec import ModerationSpec
from openai_policy_sidecar.guardrails.moderation import (
    ModerationClient,
    ModerationError,
    check_input_moderation,
    check_output_moderation,
)


class FakeModeration:
    """Flags texts containing 'kill', like openai_policy_devkit.fake_openai."""

    def __init__(self, status: int = 200, fail: BaseException | None = None, delay: float = 0.0) -> None:
        self.status = status
        self.fail = fail
        self.delay = delay
        self.bodies: list[dict] = []

    async def __call__(self, body: dict):
        self.bodies.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        results = [
            {"flagged": "kill" in text, "categories": {"violence": "kill" in text, "hate": False}}
            for text in body["input"]
        ]
        return self.status, {"id": "modr-1", "model": body["model"], "results": results}


async def test_classify_in_order_and_cached_by_content():
    http = FakeModeration()
    client = ModerationClient(http)
    first = await client.classify(["hello", "I will kill it", "hello"])
    assert [r.flagged for r in first] == [False, True, False]
    assert first[1].categories == ("violence",)
    assert http.bodies == [{"model": "omni-moderation-latest", "input": ["hello", "I will kill it"]}]
    again = await client.classify(["I will kill it", "hello"])
    assert [r.flagged for r in again] == [True, False] and len(http.bodies) == 1 and client.cache_hits == 2


async def test_cache_ttl_and_lru_bound():
    now = [0.0]
    http = FakeModeration()
    client = ModerationClient(http, cache_entries=2, cache_ttl_seconds=10, clock=lambda: now[0])
    await client.classify(["a"])
    now[0] = 11
    await client.classify(["a"])
    assert len(http.bodies) == 2  # expired
    await client.classify(["b", "c"])
    await client.classify(["a"])  # evicted by b, c
    assert len(http.bodies) == 4


async def test_concurrent_identical_texts_share_one_call():
    http = FakeModeration(delay=0.02)
    client = ModerationClient(http)
    results = await asyncio.gather(*(client.classify(["same text"]) for _ in range(5)))
    assert len(http.bodies) == 1 and all(r[0].flagged is False for r in results)


async def test_failures_raise_moderation_error():
    for http in (FakeModeration(status=500), FakeModeration(fail=ConnectionError("down"))):
        with pytest.raises(ModerationError):
            await ModerationClient(http).classify(["x"])
    with pytest.raises(ModerationError, match="timed out"):
        await ModerationClient(FakeModeration(delay=1), timeout_seconds=0.02).classify(["x"])

    async def garbage(body):
        return 200, {"results": []}

    with pytest.raises(ModerationError):
        await ModerationClient(garbage).classify(["x"])


async def test_failure_propagates_to_concurrent_waiters_and_is_not_cached():
    http = FakeModeration(status=503, delay=0.02)
    client = ModerationClient(http)
    results = await asyncio.gather(client.classify(["t"]), client.classify(["t"]), return_exceptions=True)
    assert all(isinstance(r, ModerationError) for r in results) and len(http.bodies) == 1
    http.status = 200
    assert (await client.classify(["t"]))[0].flagged is False


def chat(user: str) -> dict:
    return {
        "messages": [{"role": "system", "content": "kill switch docs"}, {"role": "user", "content": user}]
    }


async def test_input_stage_block_flag_and_system_prompt_skipped():
    client = ModerationClient(FakeModeration())
    ok = await check_input_moderation(
        client, "chat.completions", chat("hello"), ModerationSpec(action="block")
    )
    assert ok.checked and not ok.flagged and not ok.blocked
    bad = await check_input_moderation(
        client, "chat.completions", chat("kill them"), ModerationSpec(action="block")
    )
    assert bad.blocked and bad.categories == ["violence"] and bad.paths == ["messages[1].content"]
    exc = bad.exception()
    assert exc.code == "content_flagged" and exc.status == 400
    flag = await check_input_moderation(
        client, "chat.completions", chat("kill them"), ModerationSpec(action="flag")
    )
    assert flag.flagged and not flag.blocked
    off = await check_input_moderation(client, "chat.completions", chat("kill"), ModerationSpec())
    assert not off.checked


async def test_fail_open_and_fail_closed():
    client = ModerationClient(FakeModeration(status=500))
    open_ = await check_input_moderation(client, "responses", {"input": "x"}, ModerationSpec(action="block"))
    assert open_.error and not open_.blocked
    closed = await check_input_moderation(
        client, "responses", {"input": "x"}, ModerationSpec(action="block", on_error="block")
    )
    assert closed.blocked
    exc = closed.exception()
    assert exc.code == "moderation_unavailable" and exc.status == 503


async def test_output_stage():
    client = ModerationClient(FakeModeration())
    response = {"choices": [{"message": {"content": "I will kill the process"}}]}
    spec = ModerationSpec(action="block", input=False, output=True)
    outcome = await check_output_moderation(client, "chat.completions", response, spec)
    assert outcome.blocked and outcome.direction == "output"
    assert not (
        await check_output_moderation(client, "chat.completions", response, ModerationSpec(action="block"))
    ).checked


async def test_against_fake_openai(fake_openai):
    """The client speaks the real wire format (openai_policy_devkit.fake_openai flags 'kill')."""
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def post(body: dict):
            async with session.post(
                f"{fake_openai.base_url}/moderations", json=body, headers={"Authorization": "Bearer sk-test"}
            ) as response:
                return response.status, await response.json()

        client = ModerationClient(post)
        results = await client.classify(["kill the lights", "hello"])
    assert [r.flagged for r in results] == [True, False]
    assert fake_openai.requests[-1].json["input"] == ["kill the lights", "hello"]


def test_every_refusal_carries_what_the_proxy_needs():
    """code, status, error_type, retryable (+ retry_after when retryable) on every stage exception."""
    from openai_policy_sidecar.guardrails.moderation import ContentFlagged, ModerationUnavailable
    from openai_policy_sidecar.guardrails.pii import PiiDetected
    from openai_policy_sidecar.guardrails.prompt_injection import PromptInjectionDetected
    from openai_policy_sidecar.resilience import CircuitOpen, DeadlineExceeded, QueueFull, StreamIdleTimeout

    refusals = [
        PiiDetected({"email": 1}, ["input"]),
        PromptInjectionDetected([]),
        ContentFlagged("input", [], []),
        ModerationUnavailable("down"),
        CircuitOpen("u", 3),
        QueueFull("depth", 2, 1, 1),
        DeadlineExceeded(30),
        StreamIdleTimeout(30, 2),
    ]
    for exc in refusals:
        assert isinstance(exc.code, str) and exc.status in (400, 503, 504) and str(exc)
        assert exc.error_type in ("invalid_request_error", "server_error")
        assert exc.retryable is (exc.status >= 500)
        if exc.status == 503:
            assert exc.retry_after > 0
