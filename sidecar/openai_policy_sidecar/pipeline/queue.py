"""Stage queue: wait for one of the ``spec.queue`` slots before calling upstream.

aiohttp does not cancel a handler whose client disconnected, so a waiter watches its caller and
leaves the queue when the caller is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from .. import refusals
from ..metrics import Metrics
from ..resilience import QueueFull, UpstreamQueue

# How often a request waiting in the queue checks whether its caller is still there.
CLIENT_GONE_POLL_SECONDS = 0.1


async def wait_for_slot(queue: UpstreamQueue, client_gone: Callable[[], bool], metrics: Metrics) -> bool:
    """Take an upstream slot (the caller releases it); False when the caller went away while
    waiting. A full queue raises the ``queue_full`` refusal."""
    if queue.try_acquire():
        return True  # no task, no timer: the path of every request while the queue is empty
    started = time.perf_counter()
    task = asyncio.ensure_future(queue.acquire())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_GONE_POLL_SECONDS)
            if done:
                try:
                    task.result()
                except QueueFull as full:
                    raise refusals.from_stage_error(full) from None
                return True
            if client_gone():
                await _abandon(task, queue)
                return False
    except asyncio.CancelledError:
        await _abandon(task, queue)
        raise
    finally:
        metrics.queue_wait.observe(time.perf_counter() - started)


async def _abandon(task: asyncio.Future[None], queue: UpstreamQueue) -> None:
    """Leave the queue: cancel the wait; a slot granted at that very moment is handed on."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, QueueFull):
        return
    queue.release()  # the wait had finished with a slot just before the cancel: give it back


def caller_left(request: web.BaseRequest) -> bool:
    """The caller's connection is gone (the ``client_gone`` of a live request)."""
    transport = request.transport
    return transport is None or transport.is_closing()
