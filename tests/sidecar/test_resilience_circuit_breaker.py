"""Circuit breaker state machine with an injected clock."""

from __future__ import annotations

import pytest

from openai_policy_api.spec import CircuitBreakerSpec
from openai_policy_sidecar.resilience.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpen,
    CircuitState,
    is_failure_status,
)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.on_failure(breaker.before_call())


def make(threshold: int = 5, recovery: float = 60, **kw):
    clock = Clock()
    changes: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        CircuitBreakerSpec(failure_threshold=threshold, recovery_seconds=recovery, **kw),
        name="https://api.example/v1",
        clock=clock,
        on_change=lambda name, old, new: changes.append((name, old.value, new.value)),
    )
    return breaker, clock, changes


def test_failure_statuses():
    assert all(is_failure_status(s) for s in (500, 502, 503, 504))
    assert not any(is_failure_status(s) for s in (200, 400, 401, 404, 409, 429))


def test_opens_after_threshold_consecutive_failures_and_fails_fast():
    breaker, clock, changes = make()
    fail(breaker, 4)
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 4
    fail(breaker)
    assert breaker.state is CircuitState.OPEN and breaker.opened_count == 1
    assert changes == [("https://api.example/v1", "closed", "open")]
    clock.now += 20
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(40)
    assert info.value.code == "circuit_open" and info.value.status == 503


def test_success_resets_the_consecutive_count():
    breaker, _, _ = make(threshold=3)
    fail(breaker, 2)
    breaker.on_success(breaker.before_call())
    fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED


def test_4xx_is_neutral_and_5xx_a_failure():
    breaker, _, _ = make(threshold=2)
    for status in (400, 401, 404, 429, 422):
        breaker.record_status(breaker.before_call(), status)
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 0
    breaker.record_status(breaker.before_call(), 500)
    breaker.record_status(breaker.before_call(), 404)  # does not reset the count either
    breaker.record_status(breaker.before_call(), 503)
    assert breaker.state is CircuitState.OPEN


def test_half_open_lets_exactly_one_probe_and_closes_on_success():
    breaker, clock, changes = make()
    fail(breaker, 5)
    clock.now += 60
    assert breaker.state is CircuitState.HALF_OPEN
    probe = breaker.before_call()
    assert probe.probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a single probe at a time
    breaker.on_success(probe)
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 0
    assert not breaker.before_call().probe
    assert [c[2] for c in changes] == ["open", "half_open", "closed"]


def test_failed_probe_reopens_for_a_full_recovery_period():
    breaker, clock, _ = make(recovery=30)
    fail(breaker, 5)
    clock.now += 30
    breaker.on_failure(breaker.before_call())
    assert breaker.state is CircuitState.OPEN
    clock.now += 29
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(1)
    clock.now += 1
    assert breaker.before_call().probe


def test_neutral_probe_outcome_frees_the_probe_slot():
    breaker, clock, _ = make()
    fail(breaker, 5)
    clock.now += 60
    probe = breaker.before_call()
    breaker.on_neutral(probe)  # e.g. the client went away or a 400
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.before_call().probe


def test_outcomes_of_calls_admitted_before_a_state_change_are_ignored():
    breaker, clock, _ = make(threshold=2)
    in_flight = [breaker.before_call() for _ in range(5)]
    breaker.on_failure(in_flight[0])
    breaker.on_failure(in_flight[1])
    assert breaker.state is CircuitState.OPEN
    for permit in in_flight[2:]:
        breaker.on_failure(permit)  # late failures of old calls do not extend the open period
    clock.now += 60
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.on_success(in_flight[2])  # an old success does not close it either: only the probe may
    assert breaker.state is CircuitState.HALF_OPEN


def test_disabled_breaker_never_opens_and_disabling_closes():
    breaker, _, _ = make(threshold=1, enabled=False)
    fail(breaker, 10)
    assert breaker.state is CircuitState.CLOSED
    breaker2, _, _ = make(threshold=1)
    fail(breaker2)
    assert breaker2.state is CircuitState.OPEN
    breaker2.update_spec(CircuitBreakerSpec(enabled=False))
    assert breaker2.state is CircuitState.CLOSED
    breaker2.before_call()


def test_lowering_the_threshold_applies_at_once():
    breaker, _, _ = make(threshold=5)
    fail(breaker, 3)
    breaker.update_spec(CircuitBreakerSpec(failure_threshold=3))
    assert breaker.state is CircuitState.OPEN


def test_snapshot_and_registry_per_upstream():
    clock = Clock()
    breakers = CircuitBreakers(CircuitBreakerSpec(failure_threshold=1, recovery_seconds=10), clock=clock)
    a, b = breakers.get("https://a/v1"), breakers.get("https://b/v1")
    assert breakers.get("https://a/v1") is a
    assert breakers.worst_state() is CircuitState.CLOSED
    fail(a)
    assert breakers.states() == {"https://a/v1": "open", "https://b/v1": "closed"}
    assert breakers.worst_state() is CircuitState.OPEN and b.state is CircuitState.CLOSED
    snap = a.snapshot()
    assert snap["state"] == "open" and snap["retryAfter"] == 10 and snap["consecutiveFailures"] == 1
    assert CircuitState.OPEN.code == 1 and CircuitState.HALF_OPEN.code == 2 and CircuitState.CLOSED.code == 0
    clock.now += 10
    assert breakers.worst_state() is CircuitState.HALF_OPEN
    breakers.update_spec(CircuitBreakerSpec(enabled=False))
    assert breakers.worst_state() is CircuitState.CLOSED
