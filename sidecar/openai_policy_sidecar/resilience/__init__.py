"""Resilience stages of the request path: timeouts, retries, circuit breaker, upstream queue.

Each module is self-contained and takes the policy's sub-spec (``spec.retries``,
``spec.circuit_breaker``, ``spec.queue``, ``spec.requests``) through a small Protocol, so it can
be tested alone with plain objects and wired into the proxy pipeline unchanged.
"""

from .circuit_breaker import CircuitBreaker, CircuitBreakers, CircuitOpen, CircuitPermit, CircuitState
from .queue import QueueFull, UpstreamQueue
from .retry import RetryDecision, RetryEvent, RetryOutcome, call_with_retries, decide_retry, parse_retry_after
from .timeouts import Deadline, DeadlineExceeded, StreamIdleTimeout, idle_timeout, run_with_deadline

__all__ = [
    "UpstreamQueue",
    "CircuitBreaker",
    "CircuitBreakers",
    "CircuitOpen",
    "CircuitPermit",
    "CircuitState",
    "Deadline",
    "DeadlineExceeded",
    "QueueFull",
    "RetryDecision",
    "RetryEvent",
    "RetryOutcome",
    "StreamIdleTimeout",
    "call_with_retries",
    "decide_retry",
    "idle_timeout",
    "parse_retry_after",
    "run_with_deadline",
]
