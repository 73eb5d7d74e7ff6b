"""Admission queue: concurrency cap, bounded FIFO, wait limit, cancellation, observability."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from openai_policy_sidecar.resilience.queue import QueueFull, UpstreamQueue


@dataclass
class Spec:
    max_concurrent: int = 2
    max_depth: int = 2
    max_wait_seconds: float = 5.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_admits_up_to_max_concurrent_then_queues_fifo():
    queue = UpstreamQueue(Spec())
    await queue.acquire()
    await queue.acquire()
    assert queue.in_flight == 2 and queue.depth == 0
    order: list[str] = []

    async def wait(name: str) -> None:
        await queue.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await settle()
    second = asyncio.create_task(wait("second"))
    await settle()
    assert queue.depth == 2 and order == []
    queue.release()
    await settle()
    assert order == ["first"] and queue.in_flight == 2 and queue.depth == 1
    queue.release()
    await settle()
    assert order == ["first", "second"]
    await asyncio.gather(first, second)


async def test_refuses_beyond_max_depth_at_once():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=1))
    await queue.acquire()
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    with pytest.raises(QueueFull) as info:
        await queue.acquire()
    assert info.value.reason == "depth" and info.value.depth == 1 and info.value.in_flight == 1
    assert info.value.code == "queue_full" and info.value.status == 503 and info.value.retry_after >= 1
    assert queue.refused_depth == 1
    queue.release()
    await waiter


async def test_max_depth_zero_never_waits():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=0))
    async with queue.slot():
        with pytest.raises(QueueFull):
            await queue.acquire()
    await queue.acquire()


async def test_waiter_refused_after_max_wait():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=5, max_wait_seconds=0.05))
    await queue.acquire()
    with pytest.raises(QueueFull) as info:
        await queue.acquire()
    assert info.value.reason == "wait" and queue.depth == 0 and queue.refused_wait == 1
    queue.release()
    assert queue.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue_and_the_slot_goes_to_the_next():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=5))
    await queue.acquire()
    gone = asyncio.create_task(queue.acquire())
    stays = asyncio.create_task(queue.acquire())
    await settle()
    assert queue.depth == 2
    gone.cancel()
    await settle()
    assert queue.depth == 1 and queue.abandoned == 1
    queue.release()
    await asyncio.wait_for(stays, 1)
    assert queue.in_flight == 1 and queue.depth == 0


async def test_slot_granted_as_client_leaves_is_passed_on():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=5))
    await queue.acquire()
    gone = asyncio.create_task(queue.acquire())
    nxt = asyncio.create_task(queue.acquire())
    await settle()
    queue.release()  # hands the slot to `gone`...
    gone.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.wait_for(nxt, 1)
    assert queue.in_flight == 1 and queue.depth == 0


async def test_burst_beyond_capacity_admits_exactly_concurrent_plus_depth():
    queue = UpstreamQueue(Spec(max_concurrent=3, max_depth=4, max_wait_seconds=2))
    peak = 0
    release = asyncio.Event()

    async def call() -> str:
        nonlocal peak
        try:
            async with queue.slot():
                peak = max(peak, queue.in_flight)
                await release.wait()
                return "ok"
        except QueueFull:
            return "full"

    tasks = [asyncio.create_task(call()) for _ in range(12)]
    await settle()
    assert queue.in_flight == 3 and queue.depth == 4
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 7 and results.count("full") == 5
    assert peak == 3 and queue.in_flight == 0 and queue.depth == 0


async def test_slot_released_on_error_and_retry_after_tracks_hold_time():
    now = [0.0]
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=3, max_wait_seconds=30), clock=lambda: now[0])
    assert queue.retry_after() == 30  # no sample yet: the longest wait
    with pytest.raises(RuntimeError):
        async with queue.slot():
            now[0] += 4
            raise RuntimeError("upstream broke")
    assert queue.in_flight == 0
    assert queue.retry_after() == 4  # one slot, nobody waiting: one hold time
    assert queue.snapshot() == {
        "inFlight": 0,
        "depth": 0,
        "refusedDepth": 0,
        "refusedWait": 0,
        "abandoned": 0,
    }


async def test_raising_max_concurrent_admits_waiters_now():
    queue = UpstreamQueue(Spec(max_concurrent=1, max_depth=5))
    await queue.acquire()
    waiters = [asyncio.create_task(queue.acquire()) for _ in range(2)]
    await settle()
    queue.update_spec(Spec(max_concurrent=3, max_depth=5))
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert queue.in_flight == 3
