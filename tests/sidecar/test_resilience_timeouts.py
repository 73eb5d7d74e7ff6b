"""Total deadline and stream idle timeout (real loop time, tens of milliseconds)."""

from __future__ import annotations

import asyncio

import pytest

from openai_policy_api.spec import RequestsSpec
from openai_policy_sidecar.resilience.timeouts import (
    Deadline,
    DeadlineExceeded,
    StreamIdleTimeout,
    idle_timeout,
    run_with_deadline,
)


async def ticker(gaps: list[float], closed: list[bool] | None = None):
    try:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


def test_deadline_arithmetic_with_injected_clock():
    now = [100.0]
    deadline = Deadline.for_request(RequestsSpec(timeout_seconds=30), clock=lambda: now[0])
    assert deadline.at == 130 and deadline.remaining() == 30 and not deadline.expired()
    now[0] = 131
    assert deadline.remaining() == 0 and deadline.expired()


async def test_run_with_deadline_passes_results_and_cuts_hangs():
    assert await run_with_deadline(asyncio.sleep(0, result=7), Deadline.after(1)) == 7
    assert await run_with_deadline(asyncio.sleep(0, result=8), None) == 8
    with pytest.raises(DeadlineExceeded) as info:
        await run_with_deadline(asyncio.sleep(5), Deadline.after(0.03))
    assert info.value.seconds == 0.03 and info.value.code == "upstream_timeout" and info.value.status == 504
    assert isinstance(info.value, TimeoutError)


async def test_run_with_expired_deadline_does_not_start():
    started = []

    async def work() -> None:
        started.append(True)

    now = [0.0]
    deadline = Deadline.after(1, clock=lambda: now[0])
    now[0] = 2
    with pytest.raises(DeadlineExceeded):
        await run_with_deadline(work(), deadline)
    assert started == []


async def test_idle_timeout_lets_a_steady_stream_through():
    # total 0.12 s > idle limit 0.06 s, but no single gap reaches it
    items = [i async for i in idle_timeout(ticker([0.02] * 6), 0.06)]
    assert items == list(range(6))


async def test_idle_timeout_cuts_a_stalled_stream_and_closes_it():
    closed: list[bool] = []
    got = []
    with pytest.raises(StreamIdleTimeout) as info:
        async for item in idle_timeout(ticker([0.0, 0.0, 5.0], closed), 0.05):
            got.append(item)
    assert got == [0, 1] and info.value.items == 2 and info.value.idle_seconds == 0.05
    assert closed == [True]


async def test_idle_timeout_disabled_and_deadline_bound():
    assert [i async for i in idle_timeout(ticker([0.01, 0.01]), None)] == [0, 1]
    with pytest.raises(DeadlineExceeded):
        async for _ in idle_timeout(ticker([0.02] * 50), 1.0, deadline=Deadline.after(0.1)):
            pass


async def test_consumer_breaking_out_closes_the_source():
    closed: list[bool] = []
    stream = idle_timeout(ticker([0.0] * 10, closed), 1.0)
    async for item in stream:
        if item == 2:
            break
    await stream.aclose()
    assert closed == [True]


async def test_timeout_errors_from_inside_are_not_mistaken_for_ours():
    async def inner_timeout() -> None:
        raise TimeoutError("aiohttp read timeout")

    with pytest.raises(TimeoutError) as info:
        await run_with_deadline(inner_timeout(), Deadline.after(5))
    assert not isinstance(info.value, DeadlineExceeded)

    async def source():
        yield 1
        raise TimeoutError("inner")

    with pytest.raises(TimeoutError) as info:
        async for _ in idle_timeout(source(), 5):
            pass
    assert not isinstance(info.value, (DeadlineExceeded, StreamIdleTimeout))
