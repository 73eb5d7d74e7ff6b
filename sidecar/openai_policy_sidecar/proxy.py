"""The request path: parse → suspend → model → clamp → input tokens → safety (PII, injection,
moderation) → rate limit → budget → cache → queue → circuit breaker → upstream with timeout and
retries → stream (idle timeout) or return, capturing usage → settle → record.

Each stage is a plain function or class in ``stages/``, ``guardrails/``, ``resilience/`` or
``response_cache``; this class only sequences them and keeps the bookkeeping (reservation
settled or released exactly once, one record per request) in one place.

Retries and the budget: the worst-case reservation taken before the first attempt is held
through every retry and settled once, with the real usage of the attempt that answered.
Attempts are strictly sequential, so at most one attempt's worst case is ever in flight and the
one reservation covers it; an attempt that failed (429, 5xx, connection error) is billed nothing
by OpenAI, so its real usage is zero and settling it is a no-op. This is exactly "each attempt
reserved and settled at its real usage", without a store round trip per retry, and it keeps the
hard budget: a retry can never spend money that was not reserved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from openai_policy_store import BudgetLedger, Reservation, StoreUnavailable, admit, new_reservation_id
from openai_policy_store.windows import current_buckets

from . import refusals
from .context import RequestContext
from .durable import DurableState
from .guardrails import check_injection, check_input_moderation, check_output_moderation, check_pii
from .metrics import Metrics
from .pipeline import budget as budget_stage
from .pipeline.clamp import choices, clamp_output
from .pipeline.input_limit import check_input_tokens
from .pipeline.model_choice import ModelChoice, choose_model, is_drift, should_downgrade
from .pipeline.parse import ParsedRequest, parse, read_body
from .pipeline.rate_and_budget import check_rate, refusal_for_decision
from .pipeline.record import record
from .pipeline.suspend import check_suspend
from .policy_source import PolicySource
from .pricing import UnknownModelPrice
from .reported_usage import from_response
from .resilience import (
    CircuitBreaker,
    CircuitOpen,
    Deadline,
    QueueFull,
    RetryEvent,
    RetryOutcome,
    StreamIdleTimeout,
    UpstreamQueue,
    call_with_retries,
    idle_timeout,
    run_with_deadline,
)
from .response_cache import (
    CachedResponse,
    StreamRecorder,
    cache_key,
    is_cacheable,
    replay_stream,
    response_entry,
)
from .snapshot import PolicySnapshot
from .streaming import StreamMeter, add_include_usage, split_events
from .tokens import TokenCountError, count_input_tokens
from .upstream import Upstream, downstream_headers, join_url, upstream_headers

log = logging.getLogger("openai_policy_sidecar.proxy")

REQUEST_ID_HEADER = "x-openai-policy-request-id"
CACHE_HEADER = "x-openai-policy-cache"
# How often a request waiting in the queue checks whether its caller is still there.
CLIENT_GONE_POLL_SECONDS = 0.1


class Proxy:
    def __init__(
        self,
        source: PolicySource,
        upstream: Upstream,
        metrics: Metrics,
        *,
        durable: DurableState | None = None,
        attribution: dict[str, str | None] | None = None,
    ) -> None:
        self.source = source
        self.upstream = upstream
        self.metrics = metrics
        self.durable = durable or DurableState(
            source.store, metrics, upstream, source.keys, shared_cache=False
        )
        self.attribution = attribution or {}  # workload and namespace, for the access line

    # -- entry point ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.source.snapshot
        assert snapshot is not None
        self.durable.sync(snapshot)
        ctx = RequestContext(dry_run=snapshot.dry_run, method=request.method, path=request.path)
        ctx.ledger = snapshot.ledger
        self.metrics.in_flight.inc()
        try:
            try:
                response = await self._handle(request, snapshot, ctx)
            except refusals.Refusal as refusal:
                response = self._refuse(ctx, refusal)
            except asyncio.CancelledError:
                # The handler was cancelled (client gone, shutdown): never leak the reservation.
                await asyncio.shield(self._finish_budget(ctx))
                raise
            except Exception:
                log.exception("internal error handling %s %s", request.method, request.path)
                response = self._refuse(
                    ctx,
                    refusals.Refusal(
                        500,
                        "internal_error",
                        "The sidecar failed to handle this request.",
                        type=refusals.SERVER,
                    ),
                )
            # Send the reply before settling and recording: the caller does not wait for the
            # bookkeeping (with Redis, settling is a round trip). A stream is complete already.
            if not response.prepared:
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    ctx.decision = "client_disconnected"
            ctx.responded = time.perf_counter()
            await self._finish_budget(ctx)
            await self._store_in_cache(ctx)
            record(ctx, snapshot, self.metrics, self.attribution)
        finally:
            self.metrics.in_flight.dec()  # after the bookkeeping: in flight = not yet settled
        return response

    def _refuse(self, ctx: RequestContext, refusal: refusals.Refusal) -> web.Response:
        ctx.refusal = refusal
        ctx.status = refusal.status
        ctx.decision = f"refused:{refusal.code}"
        extra = {REQUEST_ID_HEADER: ctx.request_id}
        if ctx.retries:
            extra["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it
        return refusal.to_response(extra)

    async def _handle(
        self, request: web.Request, snapshot: PolicySnapshot, ctx: RequestContext
    ) -> web.StreamResponse:
        spec = snapshot.spec
        if not (request.path == "/v1" or request.path.startswith("/v1/")):
            raise refusals.not_found(request.path)
        raw = await read_body(request, spec.requests.max_body_bytes)
        parsed = parse(request.method, request.path, request.query_string, request.headers, raw)
        ctx.endpoint, ctx.stream = parsed.endpoint, parsed.stream
        ctx.user, ctx.feature, ctx.model_requested = parsed.user, parsed.feature, parsed.model
        # The kill switch holds in dry-run mode too: it is an explicit order, not a verdict.
        suspended = check_suspend(spec.suspend)
        if suspended is not None:
            raise suspended
        key = self.source.keys.key
        if not key:
            raise refusals.api_key_missing()
        if parsed.metered:
            body = await self._enforce_metered(ctx, snapshot, parsed)
        else:
            body = self._enforce_passthrough(ctx, snapshot, parsed)
        return await self._forward(request, ctx, snapshot, parsed, body, key)

    # -- enforcement ------------------------------------------------------------------------------

    async def _enforce_metered(
        self, ctx: RequestContext, snapshot: PolicySnapshot, parsed: ParsedRequest
    ) -> bytes:
        spec = snapshot.spec
        body = parsed.body
        endpoint = parsed.endpoint
        assert body is not None and endpoint is not None and parsed.model is not None
        choice = self._choose_model(ctx, snapshot, parsed.model)
        body["model"] = choice.sent

        max_out = clamp_output(endpoint, body, spec.requests.max_output_tokens)
        ctx.max_output_tokens = max_out
        output_budget = max_out * choices(endpoint, body)

        priced = True
        try:
            snapshot.prices.price(choice.sent)
        except UnknownModelPrice:
            priced = False
            ctx.enforce(
                refusals.model_not_allowed(
                    choice.sent,
                    "It has no known price, so its spend could not be metered: add it to spec.pricing.models.",
                )
            )

        try:
            input_tokens = count_input_tokens(endpoint, body, choice.sent)
        except TokenCountError as error:  # a shape no OpenAI endpoint accepts: say which field
            raise refusals.invalid_request(
                f"Invalid request body: {error}", param=error.param, code="invalid_type"
            ) from None
        except Exception as error:  # an exotic input shape: never under-count, never crash
            log.warning("token count failed (%s); estimating from the body size", error.__class__.__name__)
            input_tokens = len(parsed.raw)
        ctx.input_tokens = input_tokens
        ctx.enforce(check_input_tokens(input_tokens, spec.requests.max_input_tokens))

        await self._safety(ctx, spec.safety, endpoint, body)

        if priced:
            ctx.worst_micros = snapshot.prices.worst_case_micros(choice.sent, input_tokens, output_budget)
        await self._rate_and_budget(ctx, snapshot, input_tokens + output_budget, ctx.worst_micros)

        # The key covers the request as sent (pinned, clamped, redacted) but not the
        # include_usage we add for metering: the cached events are the ones the caller saw.
        if is_cacheable(body, spec.cache, endpoint=endpoint):
            ctx.cache_key = cache_key(endpoint, body)
        if parsed.stream:
            ctx.strip_usage = add_include_usage(endpoint, body)
        if spec.logging.prompts:
            ctx.prompt = body.get("messages", body.get("input", body.get("prompt")))
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    async def _safety(self, ctx: RequestContext, safety: Any, endpoint: str, body: dict[str, Any]) -> None:
        """PII (flag / redact in place / block), prompt injection, input moderation; in that order,
        so that moderation judges the redacted text and a blocked prompt costs no moderation call."""
        pii = check_pii(endpoint, body, safety.pii, dry_run=ctx.dry_run)
        for kind, count in sorted(pii.counts.items()):
            ctx.finding("pii", kind, pii.action, count)
        if pii.blocked:
            ctx.enforce(refusals.from_stage_error(pii.exception()))
        injection = check_injection(endpoint, body, safety.prompt_injection)
        if injection.found:
            ctx.finding("prompt_injection", "prompt_injection", injection.action, len(injection.matches))
        if injection.blocked:
            ctx.enforce(refusals.from_stage_error(injection.exception()))
        moderation = await check_input_moderation(self.durable.moderation, endpoint, body, safety.moderation)
        self._moderation_findings(ctx, moderation)
        if moderation.blocked:
            ctx.enforce(refusals.from_stage_error(moderation.exception()))

    @staticmethod
    def _moderation_findings(ctx: RequestContext, moderation: Any) -> None:
        if moderation.error is not None:
            ctx.finding("moderation", "unavailable", "block" if moderation.fail_closed else "allow")
        if moderation.flagged:
            for category in moderation.categories or ["unspecified"]:
                ctx.finding("moderation", f"{moderation.direction}:{category}", moderation.action)

    def _enforce_passthrough(
        self, ctx: RequestContext, snapshot: PolicySnapshot, parsed: ParsedRequest
    ) -> bytes:
        """Other /v1 paths: model allow + pin when the JSON body names a model; counted, not metered."""
        if parsed.body is None or parsed.model is None:
            return parsed.raw
        try:
            choice = choose_model(snapshot.spec.models, parsed.model, downgrade=False)
        except refusals.Refusal as refusal:
            ctx.enforce(refusal)
            ctx.model_sent = parsed.model
            return parsed.raw
        ctx.model_sent, ctx.pinned = choice.sent, choice.pinned
        if choice.sent == parsed.model:
            return parsed.raw
        parsed.body["model"] = choice.sent
        return json.dumps(parsed.body, separators=(",", ":"), ensure_ascii=False).encode()

    def _choose_model(self, ctx: RequestContext, snapshot: PolicySnapshot, requested: str) -> ModelChoice:
        spec = snapshot.spec
        # The fraction used is the one the reporter read (every ~1 s) or a refusal set: no store
        # round trip on the request path for a threshold that moves slowly.
        fraction = snapshot.ledger.last_fraction_used
        downgrade = should_downgrade(fraction, spec.budget.downgrade_at_percent, spec.models.fallback)
        try:
            choice = choose_model(spec.models, requested, downgrade)
        except refusals.Refusal as refusal:
            ctx.enforce(refusal)  # dry-run: carry on with the model asked for
            choice = ModelChoice(requested=requested, sent=requested, pinned=False, downgraded=False)
        ctx.model_sent, ctx.pinned, ctx.downgraded = choice.sent, choice.pinned, choice.downgraded
        return choice

    async def _rate_and_budget(
        self, ctx: RequestContext, snapshot: PolicySnapshot, tokens: int, worst: int | None
    ) -> None:
        """Count the request against the rate limits, then hold its worst-case cost.

        With a remote store both are asked at once (one round trip of latency instead of two);
        the price is that a request the budget refuses still counts towards the rate limit, as
        OpenAI counts its own refused requests. A reservation taken for a request the rate limit
        then refuses is released by ``_finish_budget``.
        """
        ledger: BudgetLedger = snapshot.ledger
        ctx.ledger = ledger
        held: tuple[Reservation | None, refusals.Refusal | None] = (None, None)
        if worst is None:
            rate = await self._check_rate(snapshot, ctx.user, tokens)
        else:
            admission = await admit(
                snapshot.limiter, ledger, ctx.user, tokens, worst, reserve_when_rate_refused=ctx.dry_run
            )
            if admission.rate_error is not None:
                self.metrics.child(self.metrics.store_errors, "rate_limit").inc()
                rate = (refusals.store_unavailable(), {})
            else:
                rate = refusal_for_decision(admission.rate)
            if admission.budget_error is not None:
                self.metrics.child(self.metrics.store_errors, "budget_reserve").inc()
                held = (None, refusals.store_unavailable())
            elif admission.budget_exceeded is not None:
                held = (None, budget_stage.refusal_for(admission.budget_exceeded))
            else:
                held = (admission.reservation, None)
        rate_refusal, ctx.rate_headers = rate
        reservation, budget_refusal = held
        if reservation is not None:
            ctx.reservation, ctx.reserved_micros = reservation, worst or 0
        ctx.enforce(rate_refusal)
        if budget_refusal is not None:
            ctx.enforce(budget_refusal)
            # Dry run: no money held, but the real cost is still settled into spent afterwards.
            ctx.reservation = _unheld(ledger)

    async def _check_rate(
        self, snapshot: PolicySnapshot, user: str | None, tokens: int
    ) -> tuple[refusals.Refusal | None, dict[str, str]]:
        try:
            return await check_rate(snapshot.limiter, user, tokens)
        except StoreUnavailable:  # the limiter falls back to local counters unless it fails closed
            self.metrics.child(self.metrics.store_errors, "rate_limit").inc()
            return refusals.store_unavailable(), {}

    async def _finish_budget(self, ctx: RequestContext) -> None:
        """Settle to the real cost, or release when upstream billed nothing; exactly once."""
        reservation = ctx.reservation
        if reservation is None or ctx.settled:
            return
        ctx.settled = True
        ledger: BudgetLedger = ctx.ledger
        try:
            if ctx.cost_micros is not None:
                await ledger.settle(reservation, ctx.cost_micros)
            else:
                await ledger.release(reservation)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="budget_settle").inc()
            log.error("could not settle reservation %s: the shared store is unavailable", reservation.id)

    # -- cache --------------------------------------------------------------------------------------

    async def _cached(self, ctx: RequestContext) -> CachedResponse | None:
        """The cached answer for this request, if any (a broken cache is a miss, never an error)."""
        cache = self.durable.cache
        if ctx.cache_key is None or cache is None:
            return None
        entry = await cache.lookup(ctx.cache_key, stream=ctx.stream)
        ctx.cache = "hit" if entry is not None else "miss"
        return entry

    async def _serve_cached(
        self, request: web.Request, ctx: RequestContext, snapshot: PolicySnapshot, entry: CachedResponse
    ) -> web.StreamResponse:
        """Answer from the cache: nothing is billed (the reservation is released), the cost the
        original call had is counted as saved."""
        ctx.cache, ctx.status, ctx.decision = "hit", entry.status, "cache_hit"
        ctx.model_reported = entry.model
        ctx.saved_micros = _saved_micros(snapshot, ctx.model_sent or entry.model or "", entry.usage)
        headers = {"Content-Type": entry.content_type, CACHE_HEADER: "hit", REQUEST_ID_HEADER: ctx.request_id}
        if not entry.streamed:
            return web.Response(status=entry.status, body=entry.body or b"", headers=headers)
        out = web.StreamResponse(status=entry.status, headers=headers)
        try:
            await out.prepare(request)
            async for chunk in replay_stream(entry):
                await out.write(chunk)
            await out.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            ctx.decision = "client_disconnected"
        return out

    async def _store_in_cache(self, ctx: RequestContext) -> None:
        """After the reply went out (the caller does not wait for a Redis write)."""
        pending, ctx.cache_entry = ctx.cache_entry, None
        cache = self.durable.cache
        if pending is None or cache is None or ctx.cache_key is None:
            return
        snapshot = self.source.snapshot
        ttl = snapshot.spec.cache.ttl_seconds if snapshot is not None else 0
        await cache.store(ctx.cache_key, pending, ttl)

    # -- queue --------------------------------------------------------------------------------------

    async def _admit(self, request: web.Request, queue: UpstreamQueue) -> bool:
        """Wait for an upstream slot; False when the caller went away while waiting (it left the
        queue). aiohttp does not cancel a handler whose client disconnected, so watch the socket."""
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
                transport = request.transport
                if transport is None or transport.is_closing():
                    await _abandon(task, queue)
                    return False
        except asyncio.CancelledError:
            await _abandon(task, queue)
            raise
        finally:
            self.metrics.queue_wait.observe(time.perf_counter() - started)

    # -- upstream ---------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        snapshot: PolicySnapshot,
        parsed: ParsedRequest,
        body: bytes,
        key: str,
    ) -> web.StreamResponse:
        entry = await self._cached(ctx)
        if entry is not None:
            return await self._serve_cached(request, ctx, snapshot, entry)
        queue = self.durable.queue
        assert queue is not None
        if not await self._admit(request, queue):
            ctx.decision, ctx.status = "client_disconnected", 499
            return web.Response(status=499)
        held = time.monotonic()
        try:
            return await self._call_upstream(request, ctx, snapshot, parsed, body, key)
        finally:
            queue.release(time.monotonic() - held)

    async def _call_upstream(
        self,
        request: web.Request,
        ctx: RequestContext,
        snapshot: PolicySnapshot,
        parsed: ParsedRequest,
        body: bytes,
        key: str,
    ) -> web.StreamResponse:
        spec = snapshot.spec
        limits = spec.requests
        headers = upstream_headers(
            request.headers.items(), key, spec.upstream.organization, spec.upstream.project
        )
        url = join_url(spec.upstream.base_url, parsed.path, parsed.query)
        # The deadline (spec.requests.timeoutSeconds) bounds every attempt, the backoff between
        # them, and a plain body's read; a stream's body is bounded by the idle timeout instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.timeout_seconds)
        deadline = Deadline.for_request(limits)
        assert self.durable.breakers is not None
        breaker = self.durable.breakers.get(spec.upstream.base_url)
        started = time.perf_counter()

        def attempt(_number: int) -> Any:
            return self.upstream.request(parsed.method, url, headers, body, timeout)

        outcome: RetryOutcome[aiohttp.ClientResponse] = await call_with_retries(
            attempt, spec.retries, deadline, lambda event: self._on_retry(ctx, event), breaker=breaker
        )
        ctx.attempts = outcome.attempts
        if outcome.error is not None or outcome.result is None:
            ctx.upstream_seconds = time.perf_counter() - started
            if isinstance(outcome.error, CircuitOpen):
                # While open: serve from the cache when there is an entry (it may have been
                # stored while this request queued), else fail fast.
                entry = await self._cached(ctx)
                if entry is not None:
                    return await self._serve_cached(request, ctx, snapshot, entry)
                ctx.upstream_error = "circuit_open"
                raise refusals.circuit_open(outcome.error.retry_after, str(outcome.error))
            raise _upstream_failure(
                ctx, started, outcome.error or RuntimeError("no reply"), limits.timeout_seconds
            )
        response = outcome.result
        try:
            ctx.upstream_request_id = response.headers.get("x-request-id")
            ctx.status = response.status
            content_type = response.headers.get("Content-Type", "")
            if response.status < 300 and content_type.startswith("text/event-stream"):
                return await self._relay_stream(request, ctx, snapshot, response, started, breaker, outcome)
            try:
                payload = await run_with_deadline(response.read(), deadline)
            except (TimeoutError, aiohttp.ClientError) as error:
                if outcome.permit is not None:
                    breaker.on_failure(outcome.permit)
                raise _upstream_failure(ctx, started, error, limits.timeout_seconds) from None
            ctx.upstream_seconds = time.perf_counter() - started
            if parsed.metered and 200 <= response.status < 300:
                self._meter_body(ctx, snapshot, payload)
                await self._moderate_output(ctx, snapshot, payload)
                if ctx.cache_key is not None:
                    ctx.cache_entry = response_entry(
                        response.status,
                        payload,
                        content_type=content_type or "application/json",
                        model=ctx.model_reported,
                        usage=_usage_dict(ctx.usage),
                    )
            if response.status >= 400:
                payload = self._redact(payload)
            out = web.Response(
                status=response.status, body=payload, headers=downstream_headers(response.headers)
            )
            self._mark(ctx, out)
            return out
        finally:
            response.release()

    def _mark(self, ctx: RequestContext, out: web.StreamResponse) -> None:
        out.headers[REQUEST_ID_HEADER] = ctx.request_id
        if ctx.cache == "miss":
            out.headers[CACHE_HEADER] = "miss"
        if ctx.retries:
            out.headers["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it

    def _on_retry(self, ctx: RequestContext, event: RetryEvent) -> None:
        reason = str(event.status) if event.status is not None else type(event.error).__name__
        ctx.retry_reasons.append(reason)
        self.metrics.child(self.metrics.retries, reason).inc()
        log.info(
            "retrying upstream call (attempt %d failed: %s) in %.3fs", event.attempt, reason, event.delay
        )

    async def _moderate_output(self, ctx: RequestContext, snapshot: PolicySnapshot, payload: bytes) -> None:
        """Output moderation of a plain answer (streams are not held back to be judged)."""
        spec = snapshot.spec.safety.moderation
        if spec.action == "off" or not spec.output or not ctx.endpoint:
            return
        try:
            answer = json.loads(payload)
        except ValueError:
            return
        if not isinstance(answer, dict):
            return
        moderation = await check_output_moderation(self.durable.moderation, ctx.endpoint, answer, spec)
        self._moderation_findings(ctx, moderation)
        if moderation.blocked:
            ctx.cache_key = None  # a refused answer is never cached
            ctx.enforce(refusals.from_stage_error(moderation.exception()))

    def _meter_body(self, ctx: RequestContext, snapshot: PolicySnapshot, payload: bytes) -> None:
        try:
            usage, model = from_response(json.loads(payload))
        except ValueError:
            usage, model = None, None
        self._settle_usage(ctx, snapshot, usage, model)

    def _settle_usage(
        self, ctx: RequestContext, snapshot: PolicySnapshot, usage: Any, model: str | None
    ) -> None:
        """Turn the reported usage into the real cost; without usage, charge the worst case."""
        ctx.model_reported = model
        ctx.drift = bool(ctx.model_sent) and is_drift(ctx.model_sent or "", model)
        worst = ctx.worst_micros
        if usage is None:
            ctx.cost_micros = worst  # spend is never unmetered: no usage, assume the worst case
            ctx.decision = "forwarded:usage_missing"
            return
        ctx.usage = usage
        if worst is None:
            return  # unpriced model forwarded in dry-run mode
        ctx.cost_micros = snapshot.prices.cost_micros(
            ctx.model_sent or "", usage.input_tokens, usage.cached_tokens, usage.output_tokens
        )

    async def _relay_stream(
        self,
        request: web.Request,
        ctx: RequestContext,
        snapshot: PolicySnapshot,
        response: aiohttp.ClientResponse,
        started: float,
        breaker: CircuitBreaker,
        outcome: RetryOutcome[aiohttp.ClientResponse],
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=response.status, headers=downstream_headers(response.headers))
        self._mark(ctx, out)
        await out.prepare(request)
        meter = StreamMeter(ctx.endpoint or "", ctx.strip_usage)
        recorder = StreamRecorder() if ctx.cache_key is not None else None
        idle = snapshot.spec.requests.stream_idle_timeout_seconds
        client_gone = False
        failed = False
        try:
            async for event, separator in split_events(idle_timeout(response.content.iter_any(), idle)):
                forwarded = meter.transform(event) if ctx.endpoint else event
                if forwarded is None:
                    continue
                if recorder is not None:
                    recorder.add(forwarded)
                try:
                    await out.write(forwarded + separator)
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    client_gone = True
                    break
        except StreamIdleTimeout as stalled:
            failed = True
            ctx.upstream_error = "upstream_timeout"
            log.warning("%s", stalled)
            # Headers (200) are gone already: tell the SDK in the stream itself; it raises APIError.
            client_gone = not await _write_stream_error(out, "upstream_timeout", str(stalled))
        except TimeoutError:
            failed = True
            ctx.upstream_error = "upstream_timeout"
        except aiohttp.ClientError:
            failed = True
            ctx.upstream_error = "upstream_stream_error"
        if failed and outcome.permit is not None:
            breaker.on_failure(outcome.permit)  # a stream that stops talking is a failing upstream
        ctx.upstream_seconds = time.perf_counter() - started
        if ctx.endpoint:
            self._settle_usage(ctx, snapshot, meter.usage, meter.model)
        if recorder is not None and not failed and not client_gone:
            ctx.cache_entry = recorder.finish(
                completed=meter.completed,
                model=meter.model,
                usage=_usage_dict(meter.usage),
                status=response.status,
            )
        if client_gone:
            ctx.decision = "client_disconnected"
        else:
            try:
                await out.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                ctx.decision = "client_disconnected"
        return out

    def _redact(self, payload: bytes) -> bytes:
        """Upstream error bodies may quote the key (e.g. "Incorrect API key provided: ..."): never pass it on."""
        for secret in self.source.keys.secrets:
            if secret:
                payload = payload.replace(secret.encode(), b"[REDACTED]")
        return payload


def _upstream_failure(
    ctx: RequestContext, started: float, error: BaseException, timeout: float
) -> refusals.Refusal:
    """The refusal for an upstream that timed out or could not be reached (before any reply byte)."""
    ctx.upstream_seconds = time.perf_counter() - started
    if isinstance(error, TimeoutError):
        ctx.upstream_error = "upstream_timeout"
        return refusals.upstream_timeout(timeout)
    ctx.upstream_error = "upstream_unreachable"
    return refusals.upstream_unreachable(error.__class__.__name__)


async def _abandon(task: asyncio.Future[None], queue: UpstreamQueue) -> None:
    """Leave the queue: cancel the wait; a slot granted at that very moment is handed on."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, QueueFull):
        return
    queue.release()  # the wait had finished with a slot just before the cancel: give it back


async def _write_stream_error(out: web.StreamResponse, code: str, message: str) -> bool:
    """An OpenAI-shaped error event at the end of a cut stream; False when the caller is gone."""
    event = {"error": {"message": message, "type": refusals.SERVER, "param": None, "code": code}}
    try:
        await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        return False
    return True


def _usage_dict(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def _saved_micros(snapshot: PolicySnapshot, model: str, usage: dict[str, Any] | None) -> int:
    """What a cached answer would have cost if it had been asked upstream again."""
    if not usage or not model:
        return 0
    try:
        return snapshot.prices.cost_micros(
            model,
            int(usage.get("input_tokens") or 0),
            int(usage.get("cached_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )
    except (UnknownModelPrice, TypeError, ValueError):
        return 0


def _unheld(ledger: BudgetLedger) -> Reservation:
    """A dry-run stand-in for a refused reservation: holds nothing, but settling it still adds the
    real cost to spent (the store settles an id it does not hold as pure spend)."""
    return Reservation("dryrun-" + new_reservation_id(), 0, tuple(current_buckets(ledger.limits)))
