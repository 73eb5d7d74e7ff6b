"""A broken or hostile upstream: oversized bodies and events, malformed usage, a key echoed back.

Each case goes through a real sidecar, the fake upstream (scripted faults) and the OpenAI SDK. The
sidecar must cut what it cannot hold with an OpenAI-shaped error, charge the worst case when it
cannot trust what it was told, never hang the caller, and never let the key reach the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from openai_policy_devkit.sidecar import (
    TEST_KEY,
    SidecarProcess,
    async_client,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.server import Sidecar
from openai_policy_sidecar.tokens import count_input_tokens

HELLO = [{"role": "user", "content": "hello there"}]
MODEL = "gpt-4o-mini"
MAX_OUT = 100
RATE_NAMES = tuple(
    f"x-ratelimit-{f}-{u}" for u in ("requests", "tokens") for f in ("limit", "remaining", "reset")
)


def policy(tmp_path: Path, fake, **spec) -> Path:  # noqa: ANN001
    requests = {"maxOutputTokens": MAX_OUT, **spec.pop("requests", {})}
    return write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(fake, requests=requests, budget={"limits": [{"window": "day", "usd": 5}]}, **spec),
    )


async def day_spend(sidecar: Sidecar) -> tuple[int, int]:
    """(spent, reserved) of the day window, once no request is in flight."""
    await quiesce(sidecar)
    [day] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day"]
    return day.spent_micros, day.reserved_micros


def worst_case(sidecar: Sidecar, fake) -> int:  # noqa: ANN001
    sent = fake.requests[-1].json
    return sidecar.source.snapshot.prices.worst_case_micros(
        MODEL, count_input_tokens("chat.completions", sent, MODEL), MAX_OUT, tier=None
    )  # no service_tier asked: reserved (and, without usage, charged) at the dearest tier


def masked(key: str) -> re.Pattern[str]:
    """Any masked form of ``key``: a prefix of it, a run of '*', its last four."""
    return re.compile(r"\*+" + re.escape(key[-4:]))


# --- size caps ----------------------------------------------------------------------------------


async def test_an_oversized_plain_reply_is_cut_with_a_502_and_charged_the_worst_case(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai, requests={"maxResponseBytes": 64 * 1024})
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("huge_body", bytes=8 * 1024 * 1024)
        client = async_client(sidecar.base_url, max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model=MODEL, messages=HELLO)
        assert raised.value.status_code == 502 and raised.value.code == "upstream_response_too_large"
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert raised.value.response.headers["x-request-id"]
        assert await day_spend(sidecar) == (worst_case(sidecar, fake_openai), 0)


async def test_a_declared_oversized_reply_is_refused_before_it_is_read(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai, requests={"maxResponseBytes": 64 * 1024})
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("huge_body", bytes=8 * 1024 * 1024, declare_length=True)
        client = async_client(sidecar.base_url, max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model=MODEL, messages=HELLO)
        assert raised.value.code == "upstream_response_too_large"
        # the next call is served normally: the cut connection was not reused
        reply = await client.chat.completions.create(model=MODEL, messages=HELLO)
        assert reply.choices[0].message.content


async def _stream_error(sidecar: Sidecar) -> tuple[int, openai.APIError]:
    client = async_client(sidecar.base_url, max_retries=0)
    received = 0
    with pytest.raises(openai.APIError) as raised:
        async for _ in await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            received += 1
    return received, raised.value


@pytest.mark.parametrize(
    ("fault", "received_before"),
    [("stream_no_separators", 0), ("huge_event", 1)],
    ids=["no-separators", "huge-event"],
)
async def test_an_oversized_stream_event_ends_the_stream_with_an_error_event(
    tmp_path, fake_openai, fault, received_before
):
    path = policy(tmp_path, fake_openai, requests={"maxStreamEventBytes": 64 * 1024})
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault(fault, bytes=16 * 1024 * 1024)
        received, error = await _stream_error(sidecar)
        assert received == received_before
        assert "upstream_response_too_large" in str(error.body) or "larger than" in error.message
        assert await day_spend(sidecar) == (worst_case(sidecar, fake_openai), 0)
        # the circuit did not count a size refusal as an upstream failure, and the sidecar serves on
        reply = await async_client(sidecar.base_url).chat.completions.create(model=MODEL, messages=HELLO)
        assert reply.choices[0].message.content


@contextlib.contextmanager
def healthz_probe(sidecar: SidecarProcess) -> Iterator[list[float]]:
    """Probe /healthz every 10 ms while the block runs; yields the latencies (seconds)."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            status, _ = sidecar.get_admin("/healthz")
            assert status == 200
            latencies.append(time.perf_counter() - started)
            done.wait(0.01)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        done.set()
        thread.join(10)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("fault", "stream"), [("huge_body", False), ("stream_no_separators", True)], ids=["body", "stream"]
)
def test_the_default_caps_keep_a_sidecar_process_far_below_its_memory_limit(
    tmp_path, fake_openai, fault, stream
):
    """A 300 MB answer (the pod's limit is 256 Mi) never enters the sidecar whole: with the default
    caps its peak RSS grows by a bounded amount, not by the answer's size."""
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    with SidecarProcess(path, tmp_path / "sidecar.log", api_key_file=key_file) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-x", max_retries=0, timeout=120)
        client.chat.completions.create(model=MODEL, messages=HELLO)  # warm: imports, pools, tokenizer
        before = _peak_rss_kib(sidecar.process.pid)
        fake_openai.add_fault(fault, bytes=300 * 1024 * 1024)
        with healthz_probe(sidecar) as latencies, pytest.raises(openai.APIError):
            if stream:
                for _ in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
                    pass
            else:
                client.chat.completions.create(model=MODEL, messages=HELLO)
        grown_mib = (_peak_rss_kib(sidecar.process.pid) - before) / 1024
        assert grown_mib < 100, f"peak RSS grew by {grown_mib:.0f} MiB for a 300 MB answer"
        # /healthz kept answering throughout (about 10 ms here; generous for a shared machine)
        assert latencies and max(latencies) < 0.5


@pytest.mark.parametrize("size_mib", [30, 7.5], ids=["over-the-cap", "just-under-the-cap"])
def test_ten_concurrent_oversized_replies_keep_a_sidecar_process_under_its_memory_limit(
    tmp_path, fake_openai, size_mib
):
    """A cap per call does not bound the sum: the replies held at once share one budget, and a
    call past it is cut (502) like one past its own cap, so the pod is not OOM-killed."""
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    with SidecarProcess(path, tmp_path / "sidecar.log", api_key_file=key_file) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-x", max_retries=0, timeout=120)
        client.chat.completions.create(model=MODEL, messages=HELLO)  # warm
        before = _peak_rss_kib(sidecar.process.pid)
        fake_openai.add_fault("huge_body", bytes=int(size_mib * 1024 * 1024), times=10)

        def call(_: int) -> str:
            try:
                client.chat.completions.create(model=MODEL, messages=HELLO)
            except openai.InternalServerError as error:
                assert error.status_code == 502 and error.code == "upstream_response_too_large"
                return "cut"
            return "ok"

        with healthz_probe(sidecar) as latencies, ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(call, range(10)))
        grown_mib = (_peak_rss_kib(sidecar.process.pid) - before) / 1024
        # ~135 MiB at rest + this stays under the 256 Mi limit (measured: +50 to +100 MiB)
        assert grown_mib < 120, f"peak RSS grew by {grown_mib:.0f} MiB ({outcomes})"
        assert "cut" in outcomes and latencies and max(latencies) < 0.5


def test_an_unmetered_download_of_any_size_streams_through_in_bounded_memory(tmp_path, fake_openai):
    """A file's content has no usage to read: it is relayed as it arrives, whole, however large,
    without the sidecar holding it (the metered cap does not apply)."""
    endpoints = {"allow": ["models", "files"], "readStoredObjects": True}  # a download reads a stored file
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, endpoints=endpoints))
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    size = 200 * 1024 * 1024
    with SidecarProcess(path, tmp_path / "sidecar.log", api_key_file=key_file) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-x", max_retries=0, timeout=120)
        client.models.list()  # warm
        before = _peak_rss_kib(sidecar.process.pid)
        fake_openai.add_fault("huge_body", bytes=size, match="/files/")
        received = 0
        with (
            healthz_probe(sidecar) as latencies,
            client.files.with_streaming_response.content("file-abc") as response,
        ):
            for chunk in response.iter_bytes():
                received += len(chunk)
        assert received == size
        assert latencies and max(latencies) < 0.5
        grown_mib = (_peak_rss_kib(sidecar.process.pid) - before) / 1024
        assert grown_mib < 50, f"peak RSS grew by {grown_mib:.0f} MiB relaying a 200 MB download"


# --- malformed usage -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
        {"prompt_tokens": 9, "completion_tokens": -1_000_000, "total_tokens": 8},
        {"prompt_tokens": "9", "completion_tokens": "3", "total_tokens": "12"},
        {"prompt_tokens": 9, "completion_tokens": 3.5, "total_tokens": 12.5},
        {},
        "lots",
    ],
    ids=["negative-input", "negative-output", "strings", "float", "empty", "not-an-object"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_malformed_usage_is_charged_the_worst_case_and_never_hangs_the_caller(
    tmp_path, fake_openai, caplog, usage, stream
):
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("usage", usage=usage)
        client = async_client(sidecar.base_url, max_retries=0, timeout=10)
        with caplog.at_level(logging.WARNING):
            async with asyncio.timeout(8):  # the old code left the caller waiting 30 s
                if stream:
                    chunks = [
                        c
                        async for c in await client.chat.completions.create(
                            model=MODEL, messages=HELLO, stream=True
                        )
                    ]
                    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    assert all(c.usage is None for c in chunks)  # we asked for usage: the app did not
                else:
                    reply = await client.chat.completions.create(model=MODEL, messages=HELLO)
                    assert reply.choices[0].message.content
            assert await day_spend(sidecar) == (worst_case(sidecar, fake_openai), 0)
        assert "charging the worst case" in caplog.text


# --- key hygiene ---------------------------------------------------------------------------------


async def test_a_401_with_the_masked_key_reaches_the_app_without_it(tmp_path, fake_openai, caplog):
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("masked_key_401")
        client = async_client(sidecar.base_url, max_retries=0)
        with caplog.at_level(logging.INFO):
            with pytest.raises(openai.AuthenticationError) as raised:
                await client.chat.completions.create(model=MODEL, messages=HELLO)
            await quiesce(sidecar)  # the request's log line is written
        text = raised.value.response.text
        assert "Incorrect API key provided" in text and "[REDACTED]" in text
        assert not masked(TEST_KEY).search(text) and TEST_KEY[-4:] not in text
        for seen in (caplog.text, sidecar.metrics.render().decode()):
            assert TEST_KEY[-4:] not in seen and TEST_KEY not in seen


async def test_a_header_echoing_the_key_never_reaches_the_app(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("echo_key_header", times=2)
        client = async_client(sidecar.base_url, max_retries=0)
        plain = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=HELLO, stream=True
        ) as streamed:
            await streamed.read()
        for response in (plain, streamed):
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            assert TEST_KEY not in headers and TEST_KEY[-4:] not in headers
            assert "x-upstream-debug-auth" not in response.headers  # not on the allow-list
            assert response.headers["x-request-id"].startswith("req_")  # OpenAI's passes through


async def test_an_allowed_header_echoing_the_key_is_redacted(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("echo_key_header", name="openai-organization")
        client = async_client(sidecar.base_url, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        assert raw.headers["openai-organization"] == "[REDACTED]"


async def test_a_streamed_answer_quoting_the_key_across_chunks_is_redacted(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("key_in_stream", piece_bytes=3)
        client = async_client(sidecar.base_url, max_retries=0)
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=HELLO, stream=True
        ) as response:
            raw = await response.read()
        assert b"the key is [REDACTED]!" in raw
        assert TEST_KEY.encode() not in raw and TEST_KEY[-4:].encode() not in raw


# --- what every answer carries -------------------------------------------------------------------


async def test_rate_headers_are_the_tighter_of_policy_and_upstream_on_success_and_refusal(
    tmp_path, fake_openai
):
    path = policy(tmp_path, fake_openai, rateLimits={"requestsPerMinute": 2})
    async with running_sidecar(path) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        first = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        # requests: the policy's (1 of 2 left, not the upstream's 9,999); tokens: the upstream's
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"] == "30s"
        assert first.headers["x-ratelimit-limit-tokens"] == "30000000"
        await client.chat.completions.create(model=MODEL, messages=HELLO)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model=MODEL, messages=HELLO)
        refused = raised.value.response.headers
        assert all(name in refused for name in RATE_NAMES), dict(refused)
        assert (
            refused["x-ratelimit-remaining-requests"] == "0" and refused["x-ratelimit-limit-requests"] == "2"
        )
        assert refused["x-ratelimit-limit-tokens"] == "30000000"  # what the upstream said last
        assert len(fake_openai.requests) == 2


async def test_upstream_rate_headers_win_when_tighter(tmp_path, fake_openai):
    path = policy(
        tmp_path, fake_openai, rateLimits={"requestsPerMinute": 1000, "tokensPerMinute": 10_000_000}
    )
    async with running_sidecar(path) as sidecar:
        tight = {
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "3",
            "x-ratelimit-reset-requests": "1.2s",
        }
        fake_openai.add_fault("status", status=200, body=json.dumps(_answer()), headers=tight)
        raw = await async_client(sidecar.base_url, max_retries=0).chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO
        )
        assert {k: raw.headers[k] for k in tight} == tight
        assert raw.headers["x-ratelimit-limit-tokens"] == "10000000"  # the policy's, tighter than 30M
        assert all(name in raw.headers for name in RATE_NAMES)


def _answer() -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }


async def test_refusals_and_cache_hits_carry_a_request_id(tmp_path, fake_openai):
    path = policy(tmp_path, fake_openai, models={"allow": [MODEL]}, cache={"enabled": True})
    async with running_sidecar(path) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.status_code == 403 and raised.value.code == "model_not_allowed"
        assert raised.value.request_id and raised.value.request_id.startswith("oaip-")
        miss = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, temperature=0
        )
        await quiesce(sidecar)
        hit = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, temperature=0
        )
        assert hit.headers["x-openai-policy-cache"] == "hit"
        assert hit.headers["x-request-id"].startswith("oaip-")
        assert miss.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_reply_naming_the_key_as_its_model_leaks_it_nowhere(tmp_path, fake_openai, caplog, stream):
    """The model a reply reports reaches the access log and the drift metric: it is read only
    after the key was redacted from the reply."""
    path = policy(tmp_path, fake_openai)
    async with running_sidecar(path) as sidecar:
        fake_openai.add_fault("model", model=TEST_KEY)
        client = async_client(sidecar.base_url, max_retries=0)
        with caplog.at_level(logging.INFO):
            if stream:
                async with client.chat.completions.with_streaming_response.create(
                    model=MODEL, messages=HELLO, stream=True
                ) as response:
                    body = await response.read()
            else:
                raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
                body = raw.http_response.content
            await quiesce(sidecar)
        for seen in (body.decode(), caplog.text, sidecar.metrics.render().decode()):
            assert TEST_KEY not in seen and TEST_KEY[-4:] not in seen
