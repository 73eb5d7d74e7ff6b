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
from collections.abc import AsyncIterator, Awaitable, Callable
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


async def idle_timeout(
    source: AsyncIterator[T], idle_seconds: float | None, *, deadline: Deadline | None = None
) -> AsyncIterator[T]:
    """Yield from ``source``; raise :class:`StreamIdleTimeout` if an item takes longer than ``idle_seconds``.

    The clock restarts at each item, so a slow but steady stream is never cut. With ``deadline``
    the wait for an item is also bounded by the time left (:class:`DeadlineExceeded`).
    ``idle_seconds`` None or <= 0 disables the idle check. On exit the source is closed so that
    the upstream connection is released.
    """
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
