"""Across the fake's scenarios, no call settles above its reservation, and the sidecar never
records less than the upstream billed.

Each scenario runs through one sidecar with the real SDK: plain and streamed answers of every
text endpoint, n > 1, cached input, every service tier, built-in tools, images and audio, and
the faults that cut, stall, delay or garble an answer (those are charged their worst case). A
settle above its reservation would mean the price table or an estimate is wrong: the sidecar
counts it (status.usage.overReserved), and this test keeps the count at zero.
"""

from __future__ import annotations

import asyncio
import io
import logging

import openai

from openai_policy_devkit.sidecar import (
    async_client,
    running_sidecar,
    settled_usage,
    upstream_spec,
    write_policy,
)
from tests.sidecar.test_metering_tiers_tools import _spent

HI = [{"role": "user", "content": "hello there"}]
AUDIO = b"RIFF" + b"\x00" * 20_000
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def scenarios(client, fake):
    """(name, faults to script, call) for every scenario."""
    chat = client.chat.completions.create
    yield "chat", {}, lambda: chat(model="gpt-4o", messages=HI)
    yield "chat n=3", {}, lambda: chat(model="gpt-4o-mini", messages=HI, n=3)
    yield "chat stream", {}, lambda: _drain_call(chat(model="gpt-4o", messages=HI, stream=True))
    yield (
        "chat stream with usage",
        {},
        lambda: _drain_call(
            chat(model="gpt-4.1", messages=HI, stream=True, stream_options={"include_usage": True})
        ),
    )
    yield "chat cached", {"cached_tokens": {"tokens": 5}}, lambda: chat(model="gpt-4o", messages=HI)
    yield "chat search", {}, lambda: chat(model="gpt-4o-search-preview", messages=HI, web_search_options={})
    for tier in ("default", "flex", "priority", "scale", "auto"):
        yield (
            f"chat tier {tier}",
            {},
            lambda tier=tier: chat(model="gpt-5-mini", messages=HI, service_tier=tier),
        )
    yield "responses", {}, lambda: client.responses.create(model="gpt-5", input="hi")
    yield (
        "responses stream",
        {},
        lambda: _drain_call(client.responses.create(model="gpt-5", input="hi", stream=True)),
    )
    tools = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]
    yield "responses tools", {}, lambda: client.responses.create(model="gpt-5", input="hi", tools=tools)
    yield (
        "responses tools stream",
        {},
        lambda: _drain_call(client.responses.create(model="gpt-5", input="hi", tools=tools, stream=True)),
    )
    yield (
        "web_search_preview",
        {},
        lambda: client.responses.create(model="gpt-4o", input="hi", tools=[{"type": "web_search_preview"}]),
    )
    yield "completions", {}, lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    yield "embeddings", {}, lambda: client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    yield "image", {}, lambda: client.images.generate(model="gpt-image-1", prompt="a cat", quality="high")
    yield (
        "image edit",
        {},
        lambda: client.images.edit(
            model="gpt-image-1", image=("a.png", io.BytesIO(PNG), "image/png"), prompt="hat"
        ),
    )
    yield "dall-e", {}, lambda: client.images.generate(model="dall-e-2", prompt="a cat", n=3)
    yield "speech", {}, lambda: client.audio.speech.create(model="tts-1-hd", voice="alloy", input="hello")
    yield (
        "speech tokens",
        {},
        lambda: client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi"),
    )
    for model in ("whisper-1", "gpt-4o-mini-transcribe"):
        yield (
            f"transcription {model}",
            {},
            lambda model=model: client.audio.transcriptions.create(
                model=model, file=("a.wav", io.BytesIO(AUDIO), "audio/wav")
            ),
        )
    # Faults: whatever the answer, the call is charged no more than was held, and no less than billed.
    yield (
        "cut stream",
        {"cut_stream": {"after_events": 2}},
        lambda: _drain_call(chat(model="gpt-4o", messages=HI, stream=True)),
    )
    yield "a 500 (billed nothing)", {"status": {"status": 500}}, lambda: chat(model="gpt-4o", messages=HI)
    yield "model drift", {"model": {"model": "gpt-4o-2024-11-20"}}, lambda: chat(model="gpt-4o", messages=HI)
    for bad in (
        {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
        {"prompt_tokens": "7"},
        "x",
    ):
        yield f"usage {bad!r}", {"usage": {"usage": bad}}, lambda: chat(model="gpt-4o", messages=HI)
    yield "timeout after send", {"latency": {"seconds": 1.5}}, lambda: chat(model="gpt-4o", messages=HI)


async def _drain_call(pending) -> None:
    await _drain(await pending)


async def test_no_scenario_settles_above_its_reservation(tmp_path, fake_openai, caplog):
    spec = upstream_spec(
        fake_openai,
        budget={"limits": [{"window": "hour", "usd": 100}]},
        endpoints={"allow": ["chatCompletions", "responses", "completions", "embeddings", "images", "audio"]},
        requests={"timeoutSeconds": 1},
    )
    fake_openai.auto_service_tier = "priority"
    ran = 0
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        with caplog.at_level(logging.WARNING):
            for name, faults, call in scenarios(client, fake_openai):
                for kind, params in faults.items():
                    fake_openai.add_fault(kind, **params)
                try:
                    await call()
                except openai.APIError as error:  # cut streams, garbled usage, timeouts
                    assert name in ("cut stream", "timeout after send", "a 500 (billed nothing)"), (
                        f"{name}: {error}"
                    )
                fake_openai.clear_faults()
                ran += 1
        spent = await _spent(sidecar)
        usage = await settled_usage(sidecar, ran)
        await asyncio.sleep(1.6)  # the late answer is billed when the fake finishes it
    billed = fake_openai.billed_micros()
    assert usage.get("over_reserved", 0) == 0, [
        r.getMessage() for r in caplog.records if "reservation" in r.getMessage()
    ]
    assert spent >= billed > 0
    assert "malformed usage" in caplog.text  # garbled usage is charged its worst case, and logged
