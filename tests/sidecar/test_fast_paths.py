"""The sidecar's fast paths (issue 15): uvloop and aiohttp's C parser really in use in the process
users run, orjson's body encoding equal to json's, the stream relay's shortcut for the chunks
OpenAI sends by the thousand, and the idle timeout's single timer per stream. Each shortcut is
held to the slow path it replaces; none of these tests measures time."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import openai
import pytest

from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, write_policy
from openai_policy_sidecar.fast_json import dumps_body, dumps_line
from openai_policy_sidecar.pipeline.parse import decode_json, encode_body
from openai_policy_sidecar.refusals import Refusal
from openai_policy_sidecar.resilience import StreamIdleTimeout, idle_timeout
from openai_policy_sidecar.streaming import StreamEventTooLarge, StreamMeter, split_events

KEY = "sk-test-fast-paths-0123456789abcdef"


def test_the_process_runs_on_uvloop_and_the_c_http_parser(tmp_path: Path, fake_openai) -> None:
    key = tmp_path / "api-key"
    key.write_text(KEY + "\n")
    policy = write_policy(tmp_path / "policy.yaml", {**upstream_spec(fake_openai)})
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        client.close()
        status, text = sidecar.get_admin("/metrics")
    assert status == 200
    info = [line for line in text.splitlines() if line.startswith("openai_policy_sidecar_runtime_info{")]
    assert info == ['openai_policy_sidecar_runtime_info{event_loop="uvloop",http_parser="c"} 1.0'], info


def _bodies() -> list[object]:
    rng = random.Random(15)
    texts = ["plain", "é ü ß 中文 🙂", 'quote " backslash \\ slash /', "\u2028\u2029 \x00\x1f\t\n", ""]
    numbers: list[object] = [0, -1, 2**63 - 1, -(2**63), 0.1, 1e-7, 1e16, -0.0, 123.456, 5e-324]
    bodies: list[object] = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}], "n": n}
        for t in texts
        for n in numbers
    ]
    for _ in range(50):
        bodies.append(
            {
                f"k{i}": rng.choice(
                    [rng.random() * 10 ** rng.randint(-30, 30), rng.randint(-(2**62), 2**62), None, True, []]
                )
                for i in range(5)
            }
        )
    return bodies


@pytest.mark.parametrize("body", _bodies())
def test_orjson_body_is_the_json_the_standard_library_would_send(body) -> None:
    encoded = encode_body(body)  # type: ignore[arg-type]
    assert json.loads(encoded) == body
    # Byte for byte what json.dumps(separators, ensure_ascii=False) wrote before, but for floats,
    # which both write as the shortest text that reads back the same number.
    if not any(isinstance(v, float) for v in json.loads(encoded).values() if not isinstance(v, list)):
        assert encoded == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def test_integers_beyond_64_bits_fall_back_to_json() -> None:
    body = {"seed": 123456789012345678901234567890, "n": -(2**64)}
    assert dumps_body(body) == b'{"seed":123456789012345678901234567890,"n":-18446744073709551616}'
    line = json.loads(dumps_line({"big": 2**70, "where": Path("/tmp/x")}))
    assert line == {"big": 2**70, "where": "/tmp/x"}


@pytest.mark.parametrize("number", [b"1e400", b"-1E999", b"[1e309]"])
def test_a_number_no_double_holds_is_refused_not_sent_as_infinity(number: bytes) -> None:
    raw = b'{"model":"gpt-4o-mini","temperature":' + number + b"}"
    with pytest.raises(Refusal) as refused:
        decode_json(raw)
    assert refused.value.status == 400 and "not finite" in refused.value.message
    assert refused.value.param in ("temperature", "temperature[0]")  # named, as NaN is
    assert math.isfinite(decode_json(b'{"t":1e308}')["t"])  # type: ignore[index]


def _chunk(content: str, *, model: bool = True, usage: str = "null", extra: str = "") -> bytes:
    head = '{"id":"c","object":"chat.completion.chunk"' + (
        ',"model":"gpt-4o-mini-2024-07-18"' if model else ""
    )
    choices = json.dumps([{"index": 0, "delta": {"content": content}, "finish_reason": None}])
    return ("data: " + head + extra + ',"choices":' + choices + ',"usage":' + usage + "}").encode()


CHUNKS = [
    _chunk("Hello"),
    _chunk('the text "usage":null} inside a string'),
    _chunk("x", extra=',"meta":{"usage":null}'),  # a nested usage: not the shortcut's to cut
    _chunk("x", usage='{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'),
    _chunk("no model", model=False),
    b'data: {"id":"c","choices":[],"usage":null}',
    b'data: {"a":1,\n' + b'data: "usage":null}',  # one event over two data lines
    b": keep-alive",
]


@pytest.mark.parametrize("strip", [True, False])
def test_the_relay_shortcut_forwards_what_parsing_each_chunk_would(strip: bool) -> None:
    fast = StreamMeter("chat.completions", strip_usage=strip)
    first = _chunk("first")
    fast.transform(first)  # the model is known from here on: the shortcut may apply
    for chunk in CHUNKS:
        slow = StreamMeter("chat.completions", strip_usage=strip)  # no model yet: always parses
        slow.transform(first)
        slow.model = None
        assert fast.transform(chunk) == slow.transform(chunk), chunk
        assert fast.usage == slow.usage or slow.usage is None
    assert fast.model == "gpt-4o-mini-2024-07-18"


async def _ticks(delays: list[float]):
    for index, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield index


async def test_a_busy_consumer_is_not_an_idle_upstream() -> None:
    # The clock runs while waiting for the upstream only: a caller slow to take each event (here
    # longer than the idle limit) does not make a steady stream look stalled.
    got = []
    async for item in idle_timeout(_ticks([0.01] * 4), 0.05):
        got.append(item)
        await asyncio.sleep(0.08)
    assert got == [0, 1, 2, 3]


async def test_a_stream_that_goes_quiet_is_cut_after_the_idle_limit() -> None:
    got = []
    with pytest.raises(StreamIdleTimeout) as info:
        async for item in idle_timeout(_ticks([0.01, 0.03, 0.03, 0.3]), 0.1):
            got.append(item)
    assert got == [0, 1, 2] and info.value.items == 3


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def consume() -> None:
        async for _ in idle_timeout(_ticks([0.01, 5.0]), 1.0):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


EVENTS = [b'data: {"a":1}', b"", b": keep-alive", b"event: x\ndata: y", b"data: [DONE]", b"d" * 40]


async def _split(chunks: list[bytes], cap: int | None = None) -> list[tuple[bytes, bytes]]:
    async def source():
        for chunk in chunks:
            yield chunk

    return [item async for item in split_events(source(), cap)]


@pytest.mark.parametrize("seed", range(40))
async def test_events_come_out_whole_however_the_stream_is_cut(seed: int) -> None:
    # One event per read (the relay's shortcut), several per read, and events cut anywhere,
    # down to one byte per read: the same events, in order, with their separators.
    rng = random.Random(seed)
    separators = [rng.choice([b"\n\n", b"\r\n\r\n"]) if seed % 2 else b"\n\n" for _ in EVENTS]
    stream = b"".join(event + sep for event, sep in zip(EVENTS, separators, strict=True))
    if seed < 10:
        chunks = [event + sep for event, sep in zip(EVENTS, separators, strict=True)]
    else:
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, len(stream) - 1)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert await _split(chunks) == list(zip(EVENTS, separators, strict=True))


async def test_a_whole_event_over_the_cap_is_refused_on_the_shortcut_too() -> None:
    with pytest.raises(StreamEventTooLarge):
        await _split([b"data: " + b"x" * 100 + b"\n\n"], cap=50)
    assert await _split([b"data: " + b"x" * 44 + b"\n\n"], cap=50) == [(b"data: " + b"x" * 44, b"\n\n")]
