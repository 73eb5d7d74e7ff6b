"""Stage forward: the upstream call, through the circuit breaker, with the request's deadline and
the policy's retries.

The deadline (``spec.requests.timeoutSeconds``) bounds every attempt, the backoff between them
and a plain body's read (``reply``); a stream's body is bounded by the idle timeout instead
(``stream_relay``). A circuit that refuses the call raises ``CircuitOpen`` as it is: the proxy
may still answer from the cache before it turns that into a refusal (``circuit_refusal``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from openai_policy_api import PolicySpec

from .. import refusals
from ..context import RequestContext
from ..metrics import Metrics
from ..policy_source import KeySource
from ..redaction import redactor_for
from ..resilience import (
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpen,
    CircuitPermit,
    Deadline,
    RetryEvent,
    RetryOutcome,
    call_with_retries,
)
from ..upstream import Upstream, join_url, upstream_headers
from .parse import ParsedRequest

log = logging.getLogger("openai_policy_sidecar.pipeline.forward")


@dataclass
class UpstreamCall:
    """The reply of the attempt that answered (its body not read yet), and what bounds its read."""

    response: aiohttp.ClientResponse
    breaker: CircuitBreaker
    permit: CircuitPermit | None  # the breaker's permit of that attempt
    deadline: Deadline
    started: float  # perf_counter before the first attempt
    timeout_seconds: float  # spec.requests.timeoutSeconds, for the refusal's message

    def failed(self) -> None:
        """A reply that breaks after its headers counts against the circuit too."""
        if self.permit is not None:
            self.breaker.on_failure(self.permit)


def require_key(keys: KeySource) -> str:
    """The upstream key; without one no request can be forwarded."""
    key = keys.key
    if not key:
        raise refusals.api_key_missing()
    return key


async def call_upstream(
    ctx: RequestContext,
    spec: PolicySpec,
    parsed: ParsedRequest,
    incoming_headers: Iterable[tuple[str, str]],
    body: bytes,
    key: str,
    upstream: Upstream,
    breakers: CircuitBreakers,
    metrics: Metrics,
) -> UpstreamCall:
    """Call upstream until an attempt answers; raises ``CircuitOpen`` or a timeout/unreachable refusal."""
    limits = spec.requests
    headers = upstream_headers(incoming_headers, key, spec.upstream.organization, spec.upstream.project)
    url = join_url(spec.upstream.base_url, parsed.path, parsed.query)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.timeout_seconds)
    deadline = Deadline.for_request(limits)
    breaker = breakers.get(spec.upstream.base_url)
    started = time.perf_counter()

    async def attempt(_number: int) -> aiohttp.ClientResponse:
        # Open while the body may be on its way: a handler cancelled meanwhile (shutdown) may
        # leave a call OpenAI bills, so settlement charges it its worst case (settle.final_cost).
        ctx.budget.attempt_open = True
        try:
            response = await upstream.request(parsed.method, url, headers, body, timeout)
        except Exception:
            ctx.budget.attempt_open = False  # a failure: on_retry / the refusal account for it
            raise
        ctx.budget.attempt_open = False
        return response

    outcome: RetryOutcome[aiohttp.ClientResponse] = await call_with_retries(
        attempt, spec.retries, deadline, lambda event: on_retry(ctx, metrics, event), breaker=breaker
    )
    ctx.upstream.attempts = outcome.attempts
    if outcome.error is not None or outcome.result is None:
        ctx.upstream.seconds = time.perf_counter() - started
        if isinstance(outcome.error, CircuitOpen):
            raise outcome.error
        if outcome.error is not None and may_have_reached_upstream(outcome.error):
            ctx.budget.maybe_billed += 1
        raise upstream_failure(
            ctx, started, outcome.error or RuntimeError("no reply"), limits.timeout_seconds
        )
    response = outcome.result
    request_id = response.headers.get("x-request-id")
    # It goes into the access log and back to the app: an upstream that echoes the key must not.
    ctx.upstream.request_id = redactor_for((key,)).text(request_id) if request_id else None
    upstream.rate_view.note(response.headers)
    ctx.outcome.status = response.status
    ctx.budget.answered = 200 <= response.status < 300  # done upstream: billed whatever follows
    return UpstreamCall(response, breaker, outcome.permit, deadline, started, limits.timeout_seconds)


def on_retry(ctx: RequestContext, metrics: Metrics, event: RetryEvent) -> None:
    reason = str(event.status) if event.status is not None else type(event.error).__name__
    if event.error is not None and may_have_reached_upstream(event.error):
        ctx.budget.maybe_billed += 1  # OpenAI may have done (and billed) the work of that attempt
    ctx.upstream.retry_reasons.append(reason)
    metrics.child(metrics.retries, reason).inc()
    log.info("retrying upstream call (attempt %d failed: %s) in %.3fs", event.attempt, reason, event.delay)


def may_have_reached_upstream(error: BaseException) -> bool:
    """Whether an attempt that failed this way may have delivered its body (and been billed).

    Only a connection that was never made is certain to have cost nothing: a timeout or a
    connection dropped after connecting may come after OpenAI received the request and did the
    work, so settlement charges such an attempt its worst case rather than zero."""
    if isinstance(error, CircuitOpen | aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return False
    return isinstance(error, TimeoutError | aiohttp.ClientError | ConnectionError)


def circuit_refusal(ctx: RequestContext, error: CircuitOpen) -> refusals.Refusal:
    ctx.upstream.error = "circuit_open"
    return refusals.circuit_open(error.retry_after, str(error))


def upstream_failure(
    ctx: RequestContext, started: float, error: BaseException, timeout: float
) -> refusals.Refusal:
    """The refusal for an upstream that timed out or could not be reached (before any reply byte)."""
    ctx.upstream.seconds = time.perf_counter() - started
    if isinstance(error, TimeoutError):
        ctx.upstream.error = "upstream_timeout"
        return refusals.upstream_timeout(timeout)
    ctx.upstream.error = "upstream_unreachable"
    return refusals.upstream_unreachable(error.__class__.__name__)
