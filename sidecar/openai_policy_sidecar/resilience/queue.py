"""Upstream queue: at most ``max_concurrent`` upstream calls in flight, a bounded FIFO behind them.

The seeds' backpressure rule: past ``max_depth`` waiting requests (default 1000, the seeds'
"user-visible delays" threshold) a request is refused at once, and no request waits longer
than ``max_wait_seconds``; both refusals are ``queue_full`` (503) with a ``Retry-After``
estimated from how long calls have recently held their slot. A waiter whose client went away
(its task is cancelled) leaves the queue at once, and a slot granted to it at that very moment
passes on to the next waiter, so nothing leaks.

Slots are handed over directly from the releasing call to the first waiter (no wake-up race
where a newcomer overtakes the queue).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

Clock = Callable[[], float]

# Weight of the newest sample in the moving average of slot hold times.
_EWMA_WEIGHT = 0.2


class QueueSpecLike(Protocol):
    """The attributes of ``spec.queue`` this module reads."""

    max_concurrent: int
    max_depth: int
    max_wait_seconds: float


class QueueFull(Exception):
    """Refusal (maps to ``queue_full``, 503 with ``Retry-After``)."""

    code = "queue_full"
    status = 503
    error_type = "server_error"
    retryable = True

    def __init__(self, reason: str, retry_after: float, depth: int, in_flight: int) -> None:
        why = "too many requests are waiting" if reason == "depth" else "waited too long for a slot"
        super().__init__(
            f"The sidecar's request queue is full ({why}: {in_flight} in flight, {depth} waiting). "
            f"Retry in {max(1, math.ceil(retry_after))}s."
        )
        self.reason = reason  # "depth" | "wait"
        self.retry_after = retry_after
        self.depth = depth
        self.in_flight = in_flight


class UpstreamQueue:
    """Concurrency limiter with a bounded, time-limited FIFO. One event loop; no locks needed."""

    def __init__(self, spec: QueueSpecLike, *, clock: Clock = time.monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold_ewma: float | None = None
        self.refused_depth = 0  # counters for metrics
        self.refused_wait = 0
        self.abandoned = 0

    # -- observation -------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def depth(self) -> int:
        """Requests waiting for a slot (the queue-depth metric)."""
        # Waiters leave the deque when granted or when they give up, so every entry is waiting.
        return len(self._waiters)

    def snapshot(self) -> dict[str, int]:
        return {
            "inFlight": self._in_flight,
            "depth": self.depth,
            "refusedDepth": self.refused_depth,
            "refusedWait": self.refused_wait,
            "abandoned": self.abandoned,
        }

    def retry_after(self) -> float:
        """A guess at when a slot frees up: the recent hold time per slot times the queue ahead."""
        ceiling = max(1.0, float(self._spec.max_wait_seconds))
        if self._hold_ewma is None:
            return ceiling
        rounds = (self.depth + 1) / max(1, int(self._spec.max_concurrent))
        return min(ceiling, max(1.0, self._hold_ewma * rounds))

    def update_spec(self, spec: QueueSpecLike) -> None:
        """A policy change applies at once; a larger ``max_concurrent`` admits waiters now."""
        self._spec = spec
        self._hand_over()

    # -- admission ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a free slot at once if there is one and nobody is waiting (the common, no-wait path)."""
        if self._in_flight < max(1, int(self._spec.max_concurrent)) and not self._waiters:
            self._in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot (FIFO) or raise :class:`QueueFull`. Pair with :meth:`release`."""
        limit = max(1, int(self._spec.max_concurrent))
        if self._in_flight < limit and not self.depth:
            self._in_flight += 1
            return
        if self.depth >= int(self._spec.max_depth):
            self.refused_depth += 1
            raise QueueFull("depth", self.retry_after(), self.depth, self._in_flight)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, float(self._spec.max_wait_seconds))):
                await waiter
        except TimeoutError:
            if self._discard(waiter):
                # The slot arrived just as the timer fired: keep it rather than waste it.
                return
            self.refused_wait += 1
            raise QueueFull("wait", self.retry_after(), self.depth, self._in_flight) from None
        except asyncio.CancelledError:
            self.abandoned += 1
            if self._discard(waiter):
                # Granted at the moment the client went away: pass the slot on.
                self.release()
            raise

    def release(self, held_seconds: float | None = None) -> None:
        """Give a slot back; ``held_seconds`` feeds the Retry-After estimate."""
        if held_seconds is not None and held_seconds >= 0:
            self._hold_ewma = (
                held_seconds
                if self._hold_ewma is None
                else (1 - _EWMA_WEIGHT) * self._hold_ewma + _EWMA_WEIGHT * held_seconds
            )
        self._in_flight = max(0, self._in_flight - 1)
        self._hand_over()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with queue.slot():`` around one upstream call (release is guaranteed)."""
        await self.acquire()
        started = self._clock()
        try:
            yield
        finally:
            self.release(self._clock() - started)

    # -- internals ---------------------------------------------------------------------------
    def _discard(self, waiter: asyncio.Future[None]) -> bool:
        """Remove a waiter that gives up. True if it had in fact been granted a slot (kept)."""
        granted = waiter.done() and not waiter.cancelled()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        if not granted:
            waiter.cancel()
        return granted

    def _hand_over(self) -> None:
        limit = max(1, int(self._spec.max_concurrent))
        while self._in_flight < limit and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._in_flight += 1
            waiter.set_result(None)
