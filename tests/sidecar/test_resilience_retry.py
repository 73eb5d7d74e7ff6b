"""Retry decisions and the retry loop, with an injected clock, sleep and random source."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest

from openai_policy_api.spec import RetriesSpec
from openai_policy_sidecar.resilience.retry import (
    backoff_delay,
    call_with_retries,
    decide_retry,
    is_connection_error,
    is_retryable_status,
    parse_retry_after,
)
from openai_policy_sidecar.resilience.timeouts import Deadline, DeadlineExceeded


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Resp:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    def release(self) -> None:
        self.released = True


def script(*steps):
    """attempt_fn returning/raising the given steps in order; records attempt numbers."""
    calls: list[int] = []

    async def attempt(n: int):
        calls.append(n)
        step = steps[min(n - 1, len(steps) - 1)]
        if isinstance(step, BaseException):
            raise step
        # the last step repeats: a fresh response each time, as a real upstream would give
        return step if n <= len(steps) else replace(step, released=False)

    return attempt, calls


# -- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,expected",
    [
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (200, False),
    ],
)
def test_retryable_statuses(status, expected):
    assert is_retryable_status(status) is expected


def test_connection_errors_but_not_timeouts_are_retryable():
    assert is_connection_error(aiohttp.ClientConnectionError("refused"))
    assert is_connection_error(aiohttp.ServerDisconnectedError())
    assert is_connection_error(ConnectionResetError())
    assert not is_connection_error(aiohttp.ServerTimeoutError())  # also a connection error subclass
    assert not is_connection_error(TimeoutError())
    assert not is_connection_error(DeadlineExceeded(30))
    assert not is_connection_error(ValueError("bad json"))


def test_parse_retry_after_forms():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    # retry-after-ms wins: it is exact.
    assert parse_retry_after({"Retry-After": "2", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"RETRY-AFTER-MS": "1200"}) == 1.2
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) is None
    assert parse_retry_after({"retry-after-ms": "nan", "Retry-After": "3"}) == 3.0
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": later}, now=now.timestamp()) == pytest.approx(7.0)
    earlier = format_datetime(datetime(2026, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": earlier}, now=now.timestamp()) == 0.0


def test_backoff_is_full_jitter_exponential_and_capped():
    spec = RetriesSpec(base_delay_seconds=1, max_delay_seconds=60)
    # rng()=1 gives the ceiling of each step: 1, 2, 4, 8, 16, 32, 60 (capped), 60
    assert [backoff_delay(n, spec, lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, spec, lambda: 0.0) for n in range(1, 5)] == [0, 0, 0, 0]
    assert backoff_delay(3, spec, lambda: 0.5) == 2.0
    # the cap holds however many retries are asked for (no overflow either)
    assert backoff_delay(500, spec, lambda: 0.999) <= 60


def test_decide_retry_bounds():
    spec = RetriesSpec(
        max_attempts=3, base_delay_seconds=1, max_delay_seconds=10, max_retry_duration_seconds=20
    )
    one = lambda: 1.0  # noqa: E731
    assert decide_retry(attempts=1, spec=spec, status=500, rng=one) == decide_retry(
        attempts=1, spec=spec, status=500, rng=one
    )
    d = decide_retry(attempts=1, spec=spec, status=503, rng=one)
    assert (d.retry, d.delay, d.reason) == (True, 1.0, "retry")
    assert decide_retry(attempts=1, spec=spec, status=400).reason == "not_retryable"
    assert decide_retry(attempts=3, spec=spec, status=500).reason == "attempts_exhausted"
    # Retry-After is honoured exactly, even when longer than the computed backoff...
    d = decide_retry(attempts=1, spec=spec, status=429, retry_after=7, rng=one)
    assert (d.retry, d.delay) == (True, 7)
    # ...but beyond the per-delay cap we stop and pass the 429 on instead of retrying early.
    assert decide_retry(attempts=1, spec=spec, status=429, retry_after=11).reason == "retry_after_too_long"
    # total retry time
    assert (
        decide_retry(attempts=2, spec=spec, status=500, elapsed=19.5, rng=one).reason
        == "retry_duration_exhausted"
    )
    # never past the deadline (and not so close to it that the attempt could only time out)
    assert decide_retry(attempts=1, spec=spec, status=500, time_left=0.5, rng=one).reason == "deadline"
    assert decide_retry(attempts=1, spec=spec, status=500, time_left=1.2, rng=one).retry
    # connection errors retried, timeouts not
    assert decide_retry(
        attempts=1, spec=spec, error=aiohttp.ClientConnectorError.__new__(aiohttp.ClientConnectorError)
    ).retry
    assert decide_retry(attempts=1, spec=spec, error=TimeoutError()).reason == "not_retryable"


def test_max_attempts_one_disables_retries():
    spec = RetriesSpec(max_attempts=1)
    assert decide_retry(attempts=1, spec=spec, status=503).reason == "attempts_exhausted"


# -- the loop ------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_that_delay():
    t = FakeTime()
    first, second = Resp(429, {"Retry-After": "2"}), Resp(200)
    attempt, calls = script(first, second)
    events = []
    outcome = await call_with_retries(
        attempt,
        RetriesSpec(),
        Deadline.after(30, t.clock),
        events.append,
        clock=t.clock,
        sleep=t.sleep,
        rng=lambda: 0.0,
    )
    assert outcome.result is second and outcome.error is None
    assert outcome.attempts == 2 and outcome.retried and outcome.stop_reason == "success"
    assert t.sleeps == [2.0] and outcome.delays == [2.0]
    assert calls == [1, 2]
    assert len(events) == 1 and events[0].status == 429 and events[0].retry_after == 2.0
    assert events[0].result is first and first.released  # the discarded response is released


async def test_retry_after_ms_preferred():
    t = FakeTime()
    attempt, _ = script(Resp(503, {"retry-after-ms": "350", "Retry-After": "1"}), Resp(200))
    outcome = await call_with_retries(attempt, RetriesSpec(), None, clock=t.clock, sleep=t.sleep)
    assert t.sleeps == [0.35] and outcome.status == 200


async def test_backoff_delays_follow_full_jitter_until_attempts_run_out():
    t = FakeTime()
    attempt, calls = script(Resp(500))
    spec = RetriesSpec(
        max_attempts=6, base_delay_seconds=1, max_delay_seconds=60, max_retry_duration_seconds=1000
    )
    outcome = await call_with_retries(attempt, spec, None, clock=t.clock, sleep=t.sleep, rng=lambda: 0.5)
    assert t.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert outcome.attempts == 6 and outcome.stop_reason == "attempts_exhausted"
    assert outcome.status == 500 and not outcome.result.released  # the last answer goes to the caller
    assert calls == [1, 2, 3, 4, 5, 6]


async def test_total_retry_duration_caps_the_sequence():
    t = FakeTime()
    attempt, calls = script(Resp(500))
    spec = RetriesSpec(
        max_attempts=20, base_delay_seconds=4, max_delay_seconds=60, max_retry_duration_seconds=30
    )
    outcome = await call_with_retries(attempt, spec, None, clock=t.clock, sleep=t.sleep, rng=lambda: 1.0)
    # 4 + 8 + 16 = 28 s; the next (32 s) would pass 30 s
    assert t.sleeps == [4, 8, 16]
    assert outcome.stop_reason == "retry_duration_exhausted" and outcome.attempts == 4


async def test_never_sleeps_past_the_deadline():
    t = FakeTime()
    attempt, _ = script(Resp(429, {"Retry-After": "20"}), Resp(200))
    outcome = await call_with_retries(
        attempt, RetriesSpec(), Deadline.after(10, t.clock), clock=t.clock, sleep=t.sleep
    )
    assert t.sleeps == [] and outcome.stop_reason == "deadline" and outcome.status == 429


async def test_seeds_forty_hours_of_429_is_impossible():
    """Upstream answers 429 forever: the sidecar gives up within the request timeout."""
    t = FakeTime()
    attempt, calls = script(Resp(429))
    outcome = await call_with_retries(
        attempt, RetriesSpec(), Deadline.after(30, t.clock), clock=t.clock, sleep=t.sleep, rng=lambda: 1.0
    )
    assert len(calls) <= 6 and t.now - 1000.0 <= 30
    assert outcome.retried and outcome.status == 429


async def test_non_retryable_status_returned_at_once():
    t = FakeTime()
    attempt, calls = script(Resp(400), Resp(200))
    outcome = await call_with_retries(attempt, RetriesSpec(), None, clock=t.clock, sleep=t.sleep)
    assert (
        calls == [1]
        and outcome.status == 400
        and not outcome.retried
        and outcome.stop_reason == "not_retryable"
    )


async def test_connection_errors_retried_then_reported():
    t = FakeTime()
    err = aiohttp.ServerDisconnectedError()
    attempt, calls = script(err, Resp(200))
    outcome = await call_with_retries(
        attempt, RetriesSpec(), None, clock=t.clock, sleep=t.sleep, rng=lambda: 0.1
    )
    assert outcome.status == 200 and calls == [1, 2]
    attempt, calls = script(err)
    outcome = await call_with_retries(
        attempt, RetriesSpec(max_attempts=3), None, clock=t.clock, sleep=t.sleep
    )
    assert outcome.result is None and outcome.error is err and outcome.attempts == 3


async def test_other_exceptions_end_the_loop_without_retry():
    t = FakeTime()
    err = ValueError("bug")
    attempt, calls = script(err)
    outcome = await call_with_retries(attempt, RetriesSpec(), None, clock=t.clock, sleep=t.sleep)
    assert outcome.error is err and calls == [1] and outcome.stop_reason == "not_retryable"


async def test_attempt_cut_at_deadline_reports_deadline_exceeded():
    async def hang(n: int):
        await asyncio.sleep(10)

    outcome = await call_with_retries(hang, RetriesSpec(), Deadline.after(0.05))
    assert isinstance(outcome.error, DeadlineExceeded) and outcome.attempts == 1


async def test_expired_deadline_does_not_start_an_attempt():
    t = FakeTime()
    attempt, calls = script(Resp(200))
    deadline = Deadline.after(1, t.clock)
    t.now += 2
    outcome = await call_with_retries(attempt, RetriesSpec(), deadline, clock=t.clock, sleep=t.sleep)
    assert calls == [] and isinstance(outcome.error, DeadlineExceeded)


async def test_async_on_retry_is_awaited_and_cancellation_propagates():
    t = FakeTime()
    seen = []

    async def on_retry(event):
        seen.append(event.attempt)

    attempt, _ = script(Resp(502), Resp(502), Resp(200))
    outcome = await call_with_retries(attempt, RetriesSpec(), None, on_retry, clock=t.clock, sleep=t.sleep)
    assert seen == [1, 2] and outcome.attempts == 3

    async def cancelled(n: int):
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(cancelled, RetriesSpec(), None)


# -- with a circuit breaker ----------------------------------------------------------------------


def _breaker(threshold: int = 2):
    from openai_policy_api.spec import CircuitBreakerSpec
    from openai_policy_sidecar.resilience.circuit_breaker import CircuitBreaker

    now = [0.0]
    return CircuitBreaker(
        CircuitBreakerSpec(failure_threshold=threshold, recovery_seconds=10), clock=lambda: now[0]
    ), now


async def test_breaker_counts_5xx_and_stops_the_loop_when_it_opens():
    from openai_policy_sidecar.resilience.circuit_breaker import CircuitOpen

    t = FakeTime()
    breaker, _ = _breaker(threshold=2)
    attempt, calls = script(Resp(503))
    outcome = await call_with_retries(
        attempt, RetriesSpec(), None, breaker=breaker, clock=t.clock, sleep=t.sleep
    )
    assert calls == [1, 2] and outcome.attempts == 2 and isinstance(outcome.error, CircuitOpen)
    assert outcome.stop_reason == "circuit_open" and outcome.retried
    # refused before any call: zero attempts
    outcome = await call_with_retries(
        attempt, RetriesSpec(), None, breaker=breaker, clock=t.clock, sleep=t.sleep
    )
    assert outcome.attempts == 0 and not outcome.retried and calls == [1, 2]


async def test_breaker_outcomes_per_kind():
    t = FakeTime()
    breaker, now = _breaker(threshold=3)
    attempt, _ = script(aiohttp.ServerDisconnectedError(), Resp(200))
    outcome = await call_with_retries(
        attempt, RetriesSpec(), None, breaker=breaker, clock=t.clock, sleep=t.sleep
    )
    assert outcome.status == 200 and breaker.consecutive_failures == 0  # failure then success resets
    attempt, _ = script(Resp(429), Resp(404))
    await call_with_retries(attempt, RetriesSpec(), None, breaker=breaker, clock=t.clock, sleep=t.sleep)
    assert breaker.consecutive_failures == 0  # 4xx are neutral
    attempt, _ = script(ValueError("bug"))
    await call_with_retries(attempt, RetriesSpec(), None, breaker=breaker, clock=t.clock, sleep=t.sleep)
    assert breaker.consecutive_failures == 0
    # a half-open probe whose client goes away frees the probe slot
    breaker2, now2 = _breaker(threshold=1)
    attempt, _ = script(Resp(500))
    await call_with_retries(attempt, RetriesSpec(max_attempts=1), None, breaker=breaker2)
    now2[0] = 10

    async def cancelled(n: int):
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(cancelled, RetriesSpec(), None, breaker=breaker2)
    assert breaker2.before_call().probe
