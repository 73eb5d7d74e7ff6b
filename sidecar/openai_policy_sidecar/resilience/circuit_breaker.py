"""Circuit breaker per upstream: stop calling an API that keeps failing, so callers fail fast.

CLOSED → OPEN after ``failure_threshold`` consecutive failures (5xx, timeouts, connection
errors; a 4xx is the caller's fault and says nothing about the upstream's health, and a 429 is
the retry module's business) → HALF_OPEN once ``recovery_seconds`` have passed, where exactly one
probe call is let through: its success closes the circuit, its failure opens it again for
another ``recovery_seconds``. While open, the proxy serves from the cache when it can, else
refuses with ``circuit_open`` (503, ``Retry-After`` = time until the probe).

Usage, one permit per upstream attempt::

    permit = breaker.before_call()          # raises CircuitOpen
    try:
        response = await send()
    except Exception:
        breaker.on_failure(permit); raise
    breaker.record_status(permit, response.status)

An outcome that says nothing about the upstream (a 4xx, the client went away) goes to
``on_neutral`` so that a half-open probe slot is freed for the next caller. Outcomes of calls
admitted before the last state change are ignored: ten calls that were already in flight when
the circuit opened must not keep re-opening it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

Clock = Callable[[], float]


class CircuitBreakerSpecLike(Protocol):
    """The attributes of ``spec.circuit_breaker`` this module reads."""

    enabled: bool
    failure_threshold: int
    recovery_seconds: float


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def code(self) -> int:
        """A numeric form: 0 closed, 1 open, 2 half-open. Not the exported gauge's numbering:
        ``openai_policy_circuit_state`` orders by severity (0 closed, 1 half-open, 2 open; the
        chart alerts at >= 2), see ``durable.CIRCUIT_GAUGE``."""
        return {"closed": 0, "open": 1, "half_open": 2}[self.value]


# The worst first: what one word in a heartbeat should say about several upstreams.
_SEVERITY = {CircuitState.OPEN: 2, CircuitState.HALF_OPEN: 1, CircuitState.CLOSED: 0}


class CircuitOpen(Exception):
    """Refusal while open (maps to ``circuit_open``, 503 with ``Retry-After``)."""

    code = "circuit_open"
    status = 503
    error_type = "server_error"
    retryable = True

    def __init__(self, upstream: str, retry_after: float) -> None:
        super().__init__(
            f"The upstream API ({upstream}) is failing; calls are paused by the circuit breaker. "
            f"Retry in {max(1, round(retry_after))}s."
        )
        self.upstream = upstream
        self.retry_after = retry_after


def is_failure_status(status: int) -> bool:
    """Only server errors count against the upstream's health."""
    return status >= 500


@dataclass(frozen=True)
class CircuitPermit:
    """One admitted call; hand it back with its outcome."""

    generation: int
    probe: bool


class CircuitBreaker:
    """The breaker of one upstream. Not thread-safe; one event loop, no awaits inside."""

    def __init__(
        self,
        spec: CircuitBreakerSpecLike,
        *,
        name: str = "upstream",
        clock: Clock = time.monotonic,
        on_change: Callable[[str, CircuitState, CircuitState], None] | None = None,
    ) -> None:
        self.name = name
        self._spec = spec
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._generation = 0
        self._probe_in_flight = False
        self.opened_count = 0  # times the circuit opened: a counter for metrics

    # -- observation -------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """Current state; an open circuit whose recovery time has passed reads as half-open."""
        self._advance()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after(self) -> float:
        """Seconds until a probe may be let through (0 when calls are admitted)."""
        self._advance()
        if self._state is CircuitState.OPEN:
            return max(0.0, self._opened_at + float(self._spec.recovery_seconds) - self._clock())
        if self._state is CircuitState.HALF_OPEN and self._probe_in_flight:
            # The probe decides soon; a short pause is the honest answer.
            return 1.0
        return 0.0

    def snapshot(self) -> dict[str, object]:
        """For the heartbeat and /metrics."""
        state = self.state
        return {
            "upstream": self.name,
            "state": state.value,
            "consecutiveFailures": self._failures,
            "retryAfter": round(self.retry_after(), 3),
            "openedCount": self.opened_count,
        }

    def update_spec(self, spec: CircuitBreakerSpecLike) -> None:
        """A policy change applies at once; the current state is kept."""
        self._spec = spec
        if not spec.enabled and self._state is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED)
        elif self._state is CircuitState.CLOSED and self._failures >= int(spec.failure_threshold):
            self._transition(CircuitState.OPEN)

    # -- the call protocol -------------------------------------------------------------------
    def before_call(self) -> CircuitPermit:
        """Admit one call or raise :class:`CircuitOpen`."""
        if not self._spec.enabled:
            return CircuitPermit(self._generation, probe=False)
        self._advance()
        if self._state is CircuitState.CLOSED:
            return CircuitPermit(self._generation, probe=False)
        if self._state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return CircuitPermit(self._generation, probe=True)
        raise CircuitOpen(self.name, self.retry_after())

    def on_success(self, permit: CircuitPermit) -> None:
        if permit.generation != self._generation:
            return
        if self._state is CircuitState.HALF_OPEN and permit.probe:
            self._probe_in_flight = False
            self._transition(CircuitState.CLOSED)
        elif self._state is CircuitState.CLOSED:
            self._failures = 0

    def on_failure(self, permit: CircuitPermit) -> None:
        if permit.generation != self._generation:
            return
        if self._state is CircuitState.HALF_OPEN and permit.probe:
            self._probe_in_flight = False
            self._failures += 1
            self._transition(CircuitState.OPEN)
        elif self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._spec.enabled and self._failures >= int(self._spec.failure_threshold):
                self._transition(CircuitState.OPEN)

    def on_neutral(self, permit: CircuitPermit) -> None:
        """An outcome that says nothing about the upstream: frees a probe slot, changes nothing else."""
        if permit.generation == self._generation and permit.probe:
            self._probe_in_flight = False

    def record_status(self, permit: CircuitPermit, status: int) -> None:
        """Classify an HTTP status: 5xx failure, 2xx/3xx success, other 4xx neutral."""
        if is_failure_status(status):
            self.on_failure(permit)
        elif status < 400:
            self.on_success(permit)
        else:
            self.on_neutral(permit)

    # -- internals ---------------------------------------------------------------------------
    def _advance(self) -> None:
        if self._state is CircuitState.OPEN and self._clock() >= self._opened_at + float(
            self._spec.recovery_seconds
        ):
            self._transition(CircuitState.HALF_OPEN)

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._generation += 1
        self._probe_in_flight = False
        if new is CircuitState.OPEN:
            self._opened_at = self._clock()
            self.opened_count += 1
        elif new is CircuitState.CLOSED:
            self._failures = 0
        if self._on_change is not None:
            self._on_change(self.name, old, new)


class CircuitBreakers:
    """One breaker per upstream (base URL), created on first use, all on the same spec."""

    def __init__(
        self,
        spec: CircuitBreakerSpecLike,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[str, CircuitState, CircuitState], None] | None = None,
    ) -> None:
        self._spec = spec
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, upstream: str) -> CircuitBreaker:
        breaker = self._breakers.get(upstream)
        if breaker is None:
            breaker = CircuitBreaker(self._spec, name=upstream, clock=self._clock, on_change=self._on_change)
            self._breakers[upstream] = breaker
        return breaker

    def update_spec(self, spec: CircuitBreakerSpecLike) -> None:
        self._spec = spec
        for breaker in self._breakers.values():
            breaker.update_spec(spec)

    def states(self) -> dict[str, str]:
        return {name: breaker.state.value for name, breaker in self._breakers.items()}

    def worst_state(self) -> CircuitState:
        """The heartbeat's one-word ``circuit`` field: open beats half-open beats closed."""
        states = [breaker.state for breaker in self._breakers.values()]
        return max(states, key=_SEVERITY.__getitem__, default=CircuitState.CLOSED)
