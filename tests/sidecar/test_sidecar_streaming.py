"""Streams through the sidecar: byte-for-byte what the upstream would have sent, event by event."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

from openai_policy_devkit.sidecar import (
    async_client,
    quiesce,
    running_sidecar,
    settled_usage,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.tokens import count_input_tokens

HELLO = [{"role": "user", "content": "stream me something"}]
VOLATILE = ("id", "created", "created_at", "completed_at", "item_id", "response_id", "obfuscation")


def normalise(raw: bytes) -> list[object]:
    """The events of an SSE body with per-request random fields (ids, timestamps) blanked."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = []
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                lines.append(("data", _blank(json.loads(line[6:]))))
            else:
                lines.append(("line", line))
        events.append(lines)
    return events


def _blank(value: object) -> object:
    if isinstance(value, dict):
        return {k: ("<v>" if k in VOLATILE else _blank(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value


async def raw_stream(client: openai.AsyncOpenAI, kind: str, **extra: object) -> bytes:
    if kind == "chat":
        call = client.chat.completions.with_streaming_response.create(
            model="gpt-4o-2024-08-06", messages=HELLO, stream=True, max_completion_tokens=30, **extra
        )
    else:
        call = client.responses.with_streaming_response.create(
            model="gpt-4o-2024-08-06", input="stream me something", stream=True, max_output_tokens=30, **extra
        )
    async with call as response:
        return b"".join([chunk async for chunk in response.iter_bytes()])


async def _compare(tmp_path, fake_openai, kind: str, **extra: object) -> tuple[bytes, bytes]:
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, requests={"maxOutputTokens": 30}, budget={"limits": [{"window": "day", "usd": 5}]}
        ),
    )
    direct = async_client(base_url=fake_openai.base_url, api_key="sk-direct")
    expected = await raw_stream(direct, kind, **extra)
    async with running_sidecar(policy) as sidecar:
        got = await raw_stream(async_client(base_url=sidecar.base_url, api_key="sk-x"), kind, **extra)
        usage = await settled_usage(sidecar, 1)
    assert normalise(got) == normalise(expected)
    return got, usage


async def test_chat_stream_arrives_unchanged_and_is_metered(tmp_path, fake_openai):
    got, usage = await _compare(tmp_path, fake_openai, "chat")
    assert b'"usage"' not in got  # the usage we asked for upstream is not shown to the caller
    # ...but the sidecar asked for it, and metered the stream with it.
    assert fake_openai.requests[-1].json["stream_options"] == {"include_usage": True}
    last_usage = fake_openai.usage_log[-1]
    assert usage["tokens_input"] == last_usage["prompt_tokens"]
    assert usage["tokens_output"] == last_usage["completion_tokens"] > 0
    assert usage["cost_micros"] > 0


async def test_chat_stream_with_caller_requested_usage_is_unchanged(tmp_path, fake_openai):
    got, usage = await _compare(tmp_path, fake_openai, "chat", stream_options={"include_usage": True})
    assert b'"usage":{' in got
    assert usage["tokens_output"] > 0


async def test_responses_stream_arrives_unchanged_and_is_metered(tmp_path, fake_openai):
    got, usage = await _compare(tmp_path, fake_openai, "responses")
    assert b"response.completed" in got
    assert usage["tokens_output"] == fake_openai.usage_log[-1]["output_tokens"] > 0


async def test_stream_is_forwarded_incrementally(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("stall_stream", after_events=2, seconds=2.0)
        client = async_client(base_url=sidecar.base_url)
        stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        arrivals = []
        async for chunk in stream:
            arrivals.append((time.monotonic(), chunk))
        # The upstream stalls 2 s after its second event: a relay that buffered the stream would
        # deliver everything together; ours delivers the first events before the stall.
        gap = arrivals[-1][0] - arrivals[0][0]
        assert gap >= 1.5, f"first and last chunk {gap:.2f}s apart: the stream was buffered"
        assert "".join(c.choices[0].delta.content or "" for _, c in arrivals if c.choices)


async def test_a_cut_stream_is_charged_the_worst_case(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, budget={"limits": [{"window": "day", "usd": 5}]}, requests={"maxOutputTokens": 100}
        ),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("cut_stream", after_events=3)
        client = async_client(base_url=sidecar.base_url, api_key="sk-x", max_retries=0)
        received = 0
        try:
            async for _ in await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
                received += 1
        except openai.APIError:
            pass
        assert received >= 2
        snapshot = sidecar.source.snapshot
        for _ in range(100):  # the handler settles just after the client saw the cut
            [day] = [w for w in await snapshot.ledger.usage() if w.window == "day"]
            if day.spent_micros:
                break
            await asyncio.sleep(0.02)
        # No usage came back, so the reservation (worst case) became the spend: never unmetered.
        assert day.reserved_micros == 0 and day.spent_micros > 0
        input_tokens = count_input_tokens("chat.completions", fake_openai.requests[-1].json, "gpt-4o")
        assert day.spent_micros == snapshot.prices.worst_case_micros(
            "gpt-4o", input_tokens, 100, tier=None
        )  # no service_tier asked: reserved (and, without usage, charged) at the dearest tier


async def test_a_refused_stream_raises_before_any_event(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, models={"allow": ["gpt-4o-mini"]})
    )
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, api_key="sk-x", max_retries=3)
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        assert raised.value.code == "model_not_allowed" and fake_openai.requests == []


async def test_a_client_leaving_mid_stream_is_charged_and_the_sidecar_carries_on(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, budget={"limits": [{"window": "day", "usd": 5}]})
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("stall_stream", after_events=2, seconds=0.5)
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
        async with aiohttp.ClientSession() as session:
            response = await session.post(sidecar.base_url + "/chat/completions", json=body)
            assert (await response.content.readline()).startswith(b"data: ")
            response.close()  # the caller goes away while the upstream is still generating
        await quiesce(sidecar, timeout=10)
        [day] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day"]
        assert day.reserved_micros == 0 and day.spent_micros > 0  # charged (worst case), not leaked
        reply = await async_client(base_url=sidecar.base_url, api_key="sk-x").chat.completions.create(
            model="gpt-4o", messages=HELLO
        )
        assert reply.choices
