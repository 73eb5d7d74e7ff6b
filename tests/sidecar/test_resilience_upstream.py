"""The resilience pieces composed over real aiohttp responses from openai_policy_devkit.fake_openai.

This is how the proxy is meant to combine them for one upstream call: queue slot → circuit
breaker permit per attempt → call_with_retries bounded by the request deadline → idle timeout
over a stream's body.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from openai_policy_api.spec import CircuitBreakerSpec, QueueSpec, RetriesSpec
from openai_policy_sidecar.resilience import (
    CircuitBreaker,
    CircuitOpen,
    Deadline,
    DeadlineExceeded,
    StreamIdleTimeout,
    UpstreamQueue,
    call_with_retries,
    idle_timeout,
)

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
FAST_RETRIES = RetriesSpec(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


async def _chunks(response: aiohttp.ClientResponse):
    async for chunk in response.content.iter_any():
        yield chunk


def attempt_factory(session: aiohttp.ClientSession, url: str, body: dict = BODY):
    async def attempt(n: int) -> aiohttp.ClientResponse:
        return await session.post(
            f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}
        )

    return attempt


async def test_429_with_retry_after_ms_is_retried_and_succeeds(fake_openai):
    fake_openai.add_fault("status", status=429, retry_after_ms=80, times=1)
    breaker = CircuitBreaker(CircuitBreakerSpec())
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        outcome = await call_with_retries(
            attempt_factory(session, fake_openai.base_url), RetriesSpec(), Deadline.after(5), breaker=breaker
        )
        elapsed = time.monotonic() - started
        assert outcome.status == 200 and outcome.attempts == 2 and outcome.retried
        assert outcome.delays == [0.08] and elapsed >= 0.08
        payload = await outcome.result.json()
        outcome.result.release()
    assert payload["object"] == "chat.completion" and len(fake_openai.requests) == 2


async def test_run_of_500s_opens_the_circuit_which_fails_fast(fake_openai):
    fake_openai.add_fault("status", status=500, times=None)
    breaker = CircuitBreaker(CircuitBreakerSpec(failure_threshold=3, recovery_seconds=60))
    async with aiohttp.ClientSession() as session:
        outcome = await call_with_retries(
            attempt_factory(session, fake_openai.base_url), FAST_RETRIES, Deadline.after(5), breaker=breaker
        )
        # calls 1-3 fail (500) and open the circuit; the 4th is refused without a call
        assert isinstance(outcome.error, CircuitOpen) and outcome.attempts == 3
        assert outcome.stop_reason == "circuit_open"
        assert len(fake_openai.requests) == 3 and breaker.state.value == "open"
        with pytest.raises(CircuitOpen):
            breaker.before_call()


async def test_hung_upstream_is_cut_at_the_deadline(fake_openai):
    fake_openai.add_fault("hang", times=None)
    breaker = CircuitBreaker(CircuitBreakerSpec())
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        outcome = await call_with_retries(
            attempt_factory(session, fake_openai.base_url),
            RetriesSpec(),
            Deadline.after(0.3),
            breaker=breaker,
        )
    assert isinstance(outcome.error, DeadlineExceeded) and outcome.attempts == 1
    assert 0.25 <= time.monotonic() - started < 2
    assert breaker.consecutive_failures == 1  # a timeout counts against the upstream


async def test_stalled_stream_is_cut_by_the_idle_timeout(fake_openai):
    fake_openai.add_fault("stall_stream", after_events=2, seconds=5)
    body = dict(BODY, stream=True)
    breaker = CircuitBreaker(CircuitBreakerSpec())
    queue = UpstreamQueue(QueueSpec(max_concurrent=1))
    received: list[bytes] = []
    async with aiohttp.ClientSession() as session, queue.slot():
        outcome = await call_with_retries(
            attempt_factory(session, fake_openai.base_url, body),
            RetriesSpec(),
            Deadline.after(5),
            breaker=breaker,
        )
        assert outcome.status == 200
        with pytest.raises(StreamIdleTimeout):
            async for chunk in idle_timeout(_chunks(outcome.result), 0.2):
                received.append(chunk)
        outcome.result.close()
        breaker.on_failure(outcome.permit)  # the stall counts against the upstream
        assert breaker.consecutive_failures == 1
    text = b"".join(received).decode()
    assert text.count("data: ") >= 2 and "[DONE]" not in text
    assert queue.in_flight == 0


async def test_stream_completes_within_idle_timeout(fake_openai):
    breaker = CircuitBreaker(CircuitBreakerSpec())
    async with aiohttp.ClientSession() as session:
        outcome = await call_with_retries(
            attempt_factory(session, fake_openai.base_url, dict(BODY, stream=True)),
            RetriesSpec(),
            Deadline.after(5),
            breaker=breaker,
        )
        chunks = [chunk async for chunk in idle_timeout(_chunks(outcome.result), 2.0)]
        outcome.result.release()
    text = b"".join(chunks).decode()
    assert text.rstrip().endswith("data: [DONE]")
    first = json.loads(text.split("data: ", 2)[1].split("\n")[0])
    assert first["object"] == "chat.completion.chunk"
