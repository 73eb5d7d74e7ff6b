"""Timeouts: one total deadline per request, and an idle timeout between the events of a stream.

The seeds' rule is a hard 30 s per request (``requests.timeoutSeconds``): nothing may hold a
connection forever. The deadline covers everything up to the upstream's response headers,
retries and their backoff included (``call_with_retries`` never sleeps past it). A stream's body
may legitimately run longer than that (a long answer from a reasoning model), so streams are
guarded by the idle timeout instead (``requests.streamIdleTimeoutSeconds``): a stream that stops
talking for that long is cut, and the proxy settles and reports what it delivered so far
(``upstream_timeout``, 504). Pass a deadline to ``idle_timeout`` as well to bound a stream's total
time too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]


class RequestsSpecLike(Protocol):
    """The attributes of ``spec.requests`` this module reads."""

    timeout_seconds: float
    stream_idle_timeout_seconds: float


class DeadlineExceeded(TimeoutError):
    """The request's total deadline passed (maps to ``upstream_timeout``, 504)."""

    code = "upstream_timeout"
    status = 504
    error_type = "server_error"
    retryable = True

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The upstream API did not answer within {seconds:g}s.")
        self.seconds = seconds


class StreamIdleTimeout(TimeoutError):
    """A stream sent nothing for ``idle_seconds`` (maps to ``upstream_timeout``, 504)."""

    code = "upstream_timeout"
    status = 504
    error_type = "server_error"
    retryable = True

    def __init__(self, idle_seconds: float, items: int) -> None:
        super().__init__(f"The upstream stream sent nothing for {idle_seconds:g}s (after {items} events).")
        self.idle_seconds = idle_seconds
        self.items = items


@dataclass(frozen=True)
class Deadline:
    """An absolute point on ``clock`` (monotonic seconds) by which a request must be answered."""

    at: float
    seconds: float
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(at=clock() + seconds, seconds=seconds, clock=clock)

    @classmethod
    def for_request(cls, requests: RequestsSpecLike, clock: Clock = time.monotonic) -> Deadline:
        """The total deadline ``spec.requests.timeoutSeconds`` from now."""
        return cls.after(float(requests.timeout_seconds), clock)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at


async def run_with_deadline(awaitable: Awaitable[T], deadline: Deadline | None) -> T:
    """Await ``awaitable`` but give up at ``deadline`` with :class:`DeadlineExceeded`.

    ``asyncio.timeout`` (not ``wait_for``) so that no extra task is created per call: this runs
    on every request.
    """
    if deadline is None:
        return await awaitable
    remaining = deadline.remaining()
    if remaining <= 0:
        # Do not even start: close the coroutine so it is not reported as never awaited.
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()
        raise DeadlineExceeded(deadline.seconds)
    scope = asyncio.timeout(remaining)
    try:
        async with scope:
            return await awaitable
    except TimeoutError as exc:
        # Only our own timer is the deadline; a TimeoutError raised inside (an aiohttp read
        # timeout, say) stays what it is.
        if scope.expired():
            raise DeadlineExceeded(deadline.seconds) from exc
        raise


def idle_timeout(
    source: AsyncIterator[T], idle_seconds: float | None, *, deadline: Deadline | None = None
) -> AsyncGenerator[T, None]:
    """Yield from ``source``; raise :class:`StreamIdleTimeout` if an item takes longer than ``idle_seconds``.

    The clock restarts at each item, so a slow but steady stream is never cut. With ``deadline``
    the wait for an item is also bounded by the time left (:class:`DeadlineExceeded`).
    ``idle_seconds`` None or <= 0 disables the idle check. On exit the source is closed so that
    the upstream connection is released.
    """
    if deadline is None and idle_seconds and idle_seconds > 0:
        return _idle_watched(source, idle_seconds)
    return _idle_or_deadline(source, idle_seconds, deadline)


async def _idle_or_deadline(
    source: AsyncIterator[T], idle_seconds: float | None, deadline: Deadline | None
) -> AsyncGenerator[T, None]:
    """``idle_timeout`` with a deadline (or no idle limit): an ``asyncio.timeout`` per item."""
    iterator = source.__aiter__()
    items = 0
    try:
        while True:
            limit = idle_seconds if idle_seconds and idle_seconds > 0 else None
            by_deadline = False
            if deadline is not None:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise DeadlineExceeded(deadline.seconds)
                if limit is None or remaining < limit:
                    limit, by_deadline = remaining, True
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                if not scope.expired():
                    raise  # raised by the source itself
                if by_deadline:
                    raise DeadlineExceeded(deadline.seconds if deadline else 0.0) from exc
                raise StreamIdleTimeout(float(idle_seconds or 0.0), items) from exc
            items += 1
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if callable(aclose):
            try:
                await aclose()
            except (RuntimeError, StopAsyncIteration):
                # An async generator interrupted mid-``__anext__`` by the timeout may refuse a
                # second close; it is finished either way.
                pass


async def _idle_watched(source: AsyncIterator[T], idle_seconds: float) -> AsyncGenerator[T, None]:
    """``idle_timeout`` without a deadline: the same contract, at a float store per item.

    A stream relays tens of events a second for many seconds; an ``asyncio.timeout`` per event
    (a timer armed and cancelled each time) was a tenth of the relay's CPU. Here one timer per
    stream fires at the earliest moment the wait could have gone on too long, and re-arms from the
    start of the current wait when an item came meanwhile, so a steady stream costs a timer every
    ``idle_seconds``. On expiry it cancels the waiting task, as ``asyncio.timeout`` does, and the
    cancellation it caused (never one from elsewhere) becomes ``StreamIdleTimeout``.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    iterator = source.__aiter__()
    items = 0
    waiting_since: float | None = None  # loop time the current wait began; None between waits
    fired = False
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle, fired
        now = loop.time()
        if waiting_since is not None and now - waiting_since >= idle_seconds:
            fired = True
            task.cancel()
            return
        # Not waiting (the caller is busy with the last item), or a later wait: look again when
        # the wait under way, or the next one at the earliest, could have run out.
        due = (waiting_since if waiting_since is not None else now) + idle_seconds
        handle = loop.call_at(due, check)

    handle = loop.call_at(loop.time() + idle_seconds, check)
    try:
        while True:
            waiting_since = loop.time()
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if fired and task.uncancel() == 0:
                    raise StreamIdleTimeout(float(idle_seconds), items) from None
                raise
            finally:
                waiting_since = None
            items += 1
            yield item
    finally:
        if handle is not None:
            handle.cancel()
        aclose = getattr(iterator, "aclose", None)
        if callable(aclose):
            try:
                await aclose()
            except (RuntimeError, StopAsyncIteration):
                pass  # a source interrupted mid-``__anext__`` may refuse a second close
