"""Retries of upstream calls: exponential backoff with full jitter, bounded every way.

Only what a retry can fix is retried: 429, 5xx and connection errors. A 4xx is the caller's
mistake and a timeout at the request's deadline leaves no time, so neither is retried; a
policy refusal never reaches this module at all. Bounds, all from ``spec.retries``:

- ``max_attempts`` attempts in total (the first included);
- each delay is ``uniform(0, min(max_delay, base * 2**(n-1)))`` for the n-th retry ("full
  jitter": spreads a thundering herd better than the seeds' ``2**n + rand``);
- a server's ``retry-after-ms`` / ``Retry-After`` is obeyed exactly; when it asks for more than
  ``max_delay_seconds`` we stop and pass its answer on rather than retry early into another 429;
- the whole retry sequence stays within ``max_retry_duration_seconds`` of the first attempt, and
  no retry is started that could not begin before the request's deadline.

Together these make the seeds' "40 hours of 429 retries" impossible: at the defaults a request
retries at most 5 times within its 30 s timeout. The proxy marks a retried answer with
``x-should-retry: false`` so the app's SDK does not multiply the retries (``RetryOutcome.retried``).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from .circuit_breaker import CircuitBreaker, CircuitOpen, CircuitPermit
from .timeouts import Deadline, DeadlineExceeded, run_with_deadline

T = TypeVar("T")

# Do not begin an attempt with less time than this before the deadline: it could only time out.
MIN_ATTEMPT_SECONDS = 0.1


class RetriesSpecLike(Protocol):
    """The attributes of ``spec.retries`` this module reads."""

    max_attempts: int
    base_delay_seconds: float
    max_delay_seconds: float
    max_retry_duration_seconds: float


class ResponseLike(Protocol):
    """What an attempt returns: ``aiohttp.ClientResponse`` fits."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def is_retryable_status(status: int) -> bool:
    """429 (rate limited, overloaded) and every 5xx; never another 4xx."""
    return status == 429 or 500 <= status <= 599


def is_connection_error(error: BaseException) -> bool:
    """Errors where the request never got a complete answer: refused, reset, DNS, disconnected.

    Timeouts are excluded (``aiohttp.ServerTimeoutError`` is both a connection error and a
    timeout): an attempt that ran into the request's deadline leaves nothing to retry with.
    """
    if isinstance(error, (TimeoutError, DeadlineExceeded)):
        return False
    return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError))


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms`` first (exact), then ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date (RFC 9110 §10.2.3); ``now`` is the
    wall-clock epoch used for the date form. Unparseable or negative values are ignored (None).
    Header lookup is case-insensitive whatever mapping is given.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        return max(0.0, when.timestamp() - current)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def backoff_delay(
    retry_number: int, spec: RetriesSpecLike, rng: Callable[[], float] = random.random
) -> float:
    """Full-jitter delay before the ``retry_number``-th retry (1-based)."""
    ceiling = min(
        float(spec.max_delay_seconds), float(spec.base_delay_seconds) * 2 ** max(0, retry_number - 1)
    )
    return rng() * ceiling


@dataclass(frozen=True)
class RetryDecision:
    """Whether to retry after a failed attempt, after how long, and why (for logs/metrics)."""

    retry: bool
    delay: float
    reason: str  # retry | not_retryable | attempts_exhausted | retry_after_too_long | retry_duration_exhausted | deadline


def decide_retry(
    *,
    attempts: int,
    spec: RetriesSpecLike,
    status: int | None = None,
    error: BaseException | None = None,
    retry_after: float | None = None,
    elapsed: float = 0.0,
    time_left: float | None = None,
    rng: Callable[[], float] = random.random,
) -> RetryDecision:
    """Pure decision after ``attempts`` attempts; the last one ended with ``status`` or ``error``.

    ``elapsed``: seconds since the first attempt began. ``time_left``: seconds until the
    request's deadline (None: no deadline).
    """
    if error is not None:
        retryable = is_connection_error(error)
    else:
        retryable = status is not None and is_retryable_status(status)
    if not retryable:
        return RetryDecision(False, 0.0, "not_retryable")
    if attempts >= int(spec.max_attempts):
        return RetryDecision(False, 0.0, "attempts_exhausted")
    if retry_after is not None:
        if retry_after > float(spec.max_delay_seconds):
            return RetryDecision(False, retry_after, "retry_after_too_long")
        delay = retry_after
    else:
        delay = backoff_delay(attempts, spec, rng)
    if elapsed + delay > float(spec.max_retry_duration_seconds):
        return RetryDecision(False, delay, "retry_duration_exhausted")
    if time_left is not None and delay + MIN_ATTEMPT_SECONDS > time_left:
        return RetryDecision(False, delay, "deadline")
    return RetryDecision(True, delay, "retry")


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before sleeping: the attempt that failed and the wait that follows."""

    attempt: int  # 1-based number of the attempt that just failed
    delay: float
    status: int | None
    error: BaseException | None
    retry_after: float | None
    result: Any = None  # the discarded response, if any; released after on_retry returns


@dataclass
class RetryOutcome(Generic[T]):
    """The last attempt's result (or error) and what it took to get there."""

    result: T | None
    error: Exception | None
    attempts: int  # upstream calls made (a call refused by the open circuit is not one)
    stop_reason: str  # success | not_retryable | circuit_open | a RetryDecision reason
    delays: list[float] = field(default_factory=list)
    # The circuit-breaker permit of the last call: a stream that stalls after its 200 headers
    # can still be reported with ``breaker.on_failure(outcome.permit)``.
    permit: CircuitPermit | None = None

    @property
    def retried(self) -> bool:
        """More than one attempt was made: the proxy answers with ``x-should-retry: false``."""
        return self.attempts > 1

    @property
    def status(self) -> int | None:
        return getattr(self.result, "status", None) if self.result is not None else None


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


async def _release(result: object) -> None:
    release = getattr(result, "release", None)
    if callable(release):
        await _maybe_await(release())


def _report(
    breaker: CircuitBreaker, permit: CircuitPermit, status: int | None, error: Exception | None
) -> None:
    if error is not None:
        if isinstance(error, TimeoutError) or is_connection_error(error):
            breaker.on_failure(permit)
        else:
            breaker.on_neutral(permit)
    elif status is not None:
        breaker.record_status(permit, int(status))
    else:
        breaker.on_success(permit)


async def call_with_retries(
    attempt_fn: Callable[[int], Awaitable[T]],
    policy: RetriesSpecLike,
    deadline: Deadline | None,
    on_retry: Callable[[RetryEvent], Awaitable[None] | None] | None = None,
    *,
    breaker: CircuitBreaker | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> RetryOutcome[T]:
    """Run ``attempt_fn(attempt_number)`` until it succeeds or a bound says stop.

    ``attempt_fn`` returns a response with ``.status`` and ``.headers`` (an
    ``aiohttp.ClientResponse`` once its headers arrived) or raises. Every attempt is bounded by
    ``deadline``. A retryable response that is discarded is handed to ``on_retry`` (settle its
    reservation, count it, log it) and then released (``.release()``) if it has that method.

    With ``breaker``, each attempt takes a permit first (an open circuit stops the loop with
    ``CircuitOpen`` in ``RetryOutcome.error``, stop reason ``circuit_open``) and reports its
    outcome: 5xx, connection errors and the deadline are failures, 2xx/3xx successes, other 4xx
    and unexpected errors neutral.

    Never raises for an attempt's ``Exception``: it ends up in ``RetryOutcome.error`` (with
    ``DeadlineExceeded`` when the deadline cut an attempt), so that the caller always knows how
    many attempts were made. ``asyncio.CancelledError`` (the client went away) propagates.
    """
    started = clock()
    attempts = 0
    delays: list[float] = []
    while True:
        permit: CircuitPermit | None = None
        if breaker is not None:
            try:
                permit = breaker.before_call()
            except CircuitOpen as exc:
                return RetryOutcome(None, exc, attempts, "circuit_open", delays)
        attempts += 1
        result: T | None = None
        error: Exception | None = None
        try:
            result = await run_with_deadline(attempt_fn(attempts), deadline)
        except Exception as exc:  # noqa: BLE001 - classified below, returned to the caller
            error = exc
        except BaseException:
            if breaker is not None and permit is not None:
                breaker.on_neutral(permit)  # the client went away: says nothing about upstream
            raise
        status = getattr(result, "status", None) if error is None else None
        headers = getattr(result, "headers", None) if error is None else None
        if breaker is not None and permit is not None:
            _report(breaker, permit, status, error)
        if error is None and (status is None or not is_retryable_status(int(status))):
            ok = status is None or int(status) < 400
            return RetryOutcome(result, None, attempts, "success" if ok else "not_retryable", delays, permit)
        retry_after = parse_retry_after(headers, wall_clock()) if headers is not None else None
        decision = decide_retry(
            attempts=attempts,
            spec=policy,
            status=None if status is None else int(status),
            error=error,
            retry_after=retry_after,
            elapsed=clock() - started,
            time_left=deadline.remaining() if deadline is not None else None,
            rng=rng,
        )
        if not decision.retry:
            return RetryOutcome(result, error, attempts, decision.reason, delays, permit)
        if on_retry is not None:
            await _maybe_await(
                on_retry(RetryEvent(attempts, decision.delay, status, error, retry_after, result))
            )
        if result is not None:
            await _release(result)
        delays.append(decision.delay)
        if decision.delay > 0:
            await sleep(decision.delay)
